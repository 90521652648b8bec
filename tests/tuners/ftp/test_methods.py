"""The bench methods ``ftp``, ``ftp_lora`` and ``tpgm``: fit, predict, save, step timings, options."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hf_lowdata.budgets import BUDGETS, Budget
from hf_lowdata.data import DatasetSplits, TextDataset, make_few_shot_task
from hf_lowdata.methods import RunContext, get_method
from tests.helpers import toy_sentences

FAST = Budget(learning_rate=5e-3, epochs=1, min_steps=6, max_steps=6, batch_size=8, weight_decay=0.0)


def _task(k: int = 8):
    rows = toy_sentences(120, 0)
    pool = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")
    test_rows = toy_sentences(20, 99)
    test = TextDataset(tuple(r["text"] for r in test_rows), tuple(r["label"] for r in test_rows), ("neg", "pos"), "test")
    return make_few_shot_task(DatasetSplits("toy", ("neg", "pos"), pool, test=test), seed=0, k=k)


@pytest.mark.parametrize("method", ["ftp", "ftp_lora", "tpgm"])
def test_methods_fit_predict_save(method, tiny_bert_dir, tmp_path):
    assert method in BUDGETS
    task = _task()
    budget = replace(FAST, options=BUDGETS[method].options)
    ctx = RunContext(model=tiny_bert_dir, seed=0, budget=budget, work_dir=tmp_path, quiet=True)
    fitted = get_method(method).fit(task, ctx)
    proba = fitted.predict_proba(task.test.texts)
    assert proba.shape == (20, 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert fitted.train_step_seconds > 0 and fitted.optimizer_step_seconds > 0
    files = {p.name for p in fitted.save(tmp_path / "saved").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    # Tiny BERT, per layer: 4 matrices 32x32 and 2 of 32x64; the head has 2 x 32 + 2 parameters.
    per_layer = 4 * 32 * 32 + 2 * 32 * 64 if method != "ftp_lora" else 8 * (4 * (32 + 32) + 2 * (32 + 64))
    assert fitted.trainable_parameters == 2 * per_layer + 66


def test_options_reach_the_adapter(tiny_bert_dir, tmp_path):
    task = _task()
    ctx = RunContext(model=tiny_bert_dir, seed=0, budget=FAST, work_dir=tmp_path, quiet=True,
                     options={"r": 2, "lora_alpha": 4, "kappa": 0.5, "norm": "l2"})
    model = get_method("ftp_lora").build_model(task, ctx)
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.kappa, config.norm, config.delta) == (2, 4, 0.5, "l2", "lora")
    with pytest.raises(ValueError, match="kappa must lie in"):
        get_method("ftp").build_model(task, replace(ctx, options={"kappa": 2.0}))
