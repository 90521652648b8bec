"""MixupBLO's protocol: folds, fold averaging, phase 2 with frozen mixing, the bench methods."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft import TaskType, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import TrainerCallback

from hf_lowdata.budgets import BUDGETS, Budget
from hf_lowdata.data import DatasetSplits, TextDataset, collator, make_few_shot_task, tokenize
from hf_lowdata.methods import RunContext, available_methods, get_method
from hf_lowdata.methods.mixup_blo import average_states, train_mixup_blo
from hf_lowdata.models import load_for_classification, load_tokenizer
from hf_lowdata.training import few_shot_training_args
from hf_lowdata.tuners.mixup_blo import MixupBLOConfig
from tests.helpers import toy_sentences

FAST = Budget(learning_rate=5e-3, epochs=1, min_steps=2, max_steps=2, batch_size=8, warmup_ratio=0.0)
METHODS = ("mixup_blo", "mixup_blo_lora", "mixup_blo_joint", "mixup_blo_noavg", "mixup_blo_fo", "mixup_blo_fast")


def _rows(n: int, seed: int) -> TextDataset:
    rows = toy_sentences(n, seed)
    return TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")


class Snapshots(TrainerCallback):
    """Trainable parameters at the start and the end of one Trainer run."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.end: dict[str, torch.Tensor] = {}
        self.frozen_mixing: bool | None = None

    @staticmethod
    def _trainable(model):
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad or "_mix_" in n}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start = self._trainable(model)
        self.frozen_mixing = not any(p.requires_grad for n, p in model.named_parameters() if "_mix_" in n)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.end = self._trainable(model)


def _run_protocol(tiny_bert_dir, tmp_path, **config_kwargs):
    tok = load_tokenizer(tiny_bert_dir)
    config = MixupBLOConfig(task_type=TaskType.SEQ_CLS, folds=2, mixing_lr=0.05, **config_kwargs)
    snaps: dict[tuple[str, int], Snapshots] = {}
    datasets: dict[int, int] = {}

    def on_trainer(trainer, phase, fold):
        snaps[phase, fold] = Snapshots()
        trainer.add_callback(snaps[phase, fold])
        datasets[fold] = len(trainer.train_dataset)

    def args(phase, fold, n, seed):
        return few_shot_training_args(str(tmp_path / f"{phase}{fold}"), FAST, n, seed, use_cpu=True)

    def base():
        return load_for_classification(tiny_bert_dir, 2, seed=0)

    model = train_mixup_blo(base, config, tokenize(_rows(20, 0), tok), args, seed=0,
                            trainer_kwargs={"data_collator": collator(tok), "processing_class": tok},
                            on_trainer=on_trainer)
    return model, snaps, datasets, base, config


def test_average_states_is_the_elementwise_mean():
    states = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}]
    torch.testing.assert_close(average_states(states)["w"], torch.tensor([2.0, 4.0]))
    with pytest.raises(ValueError, match="different parameters"):
        average_states([{"w": torch.zeros(1)}, {"v": torch.zeros(1)}])


def test_phase_two_starts_from_the_fold_average_with_the_mixing_frozen(tiny_bert_dir, tmp_path):
    model, snaps, datasets, _, _ = _run_protocol(tiny_bert_dir, tmp_path, hypergradient="first_order")
    folds = [snaps["search", 0].end, snaps["search", 1].end]
    assert datasets[0] == datasets[1] == 16 and datasets[-1] == 20  # 80% per fold, then all examples
    assert any(not torch.equal(folds[0][k], folds[1][k]) for k in folds[0] if "_mix_" in k)  # different splits
    start = snaps["finetune", -1].start
    assert start.keys() == folds[0].keys()
    for name, value in start.items():
        torch.testing.assert_close(value, (folds[0][name] + folds[1][name]) / 2, rtol=0, atol=1e-6, msg=name)
    assert snaps["finetune", -1].frozen_mixing
    end = snaps["finetune", -1].end
    assert all(torch.equal(end[k], start[k]) for k in start if "_mix_" in k)
    assert any(not torch.equal(end[k], start[k]) for k in start if "mixup_blo_weight" in k)


def test_every_fold_starts_from_the_same_adapter(tiny_bert_dir, tmp_path, monkeypatch):
    """Fold averaging assumes a shared start: LoRA's A and the mixing noise must not differ per fold, even
    when base_model() leaves the random state elsewhere (here: not seeded, so its head differs)."""
    seeded = load_for_classification
    monkeypatch.setattr(f"{__name__}.load_for_classification", lambda *a, **k: seeded(*a, **{**k, "seed": None}))
    _, snaps, _, _, _ = _run_protocol(tiny_bert_dir, tmp_path, hypergradient="first_order", task_weight="lora",
                                      init_std=0.005)
    starts = [snaps["search", 0].start, snaps["search", 1].start]
    adapter = [k for k in starts[0] if "mixup_blo" in k and "classifier" not in k]
    assert any("lora" in k.lower() for k in adapter) and any("_mix_" in k for k in adapter)
    for name in adapter:
        assert torch.equal(starts[0][name], starts[1][name]), name


def test_without_fold_averaging_only_the_mixing_carries_over(tiny_bert_dir, tmp_path):
    _, snaps, _, base, config = _run_protocol(tiny_bert_dir, tmp_path, hypergradient="first_order",
                                              average_folds=False)
    fresh = {n: p.detach() for n, p in get_peft_model(base(), config).named_parameters()}
    folds = [snaps["search", 0].end, snaps["search", 1].end]
    start = snaps["finetune", -1].start
    for name, value in start.items():
        expected = (folds[0][name] + folds[1][name]) / 2 if "_mix_" in name else fresh[name]
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6, msg=name)
    assert any(not torch.equal(start[k], folds[0][k]) for k in start if "mixup_blo_weight" in k)


def test_finished_folds_are_saved_and_skipped_on_resume(tiny_bert_dir, tmp_path):
    tok = load_tokenizer(tiny_bert_dir)
    config = MixupBLOConfig(task_type=TaskType.SEQ_CLS, folds=2, hypergradient="first_order")
    ran: list[tuple[str, int]] = []

    def args(phase, fold, n, seed):
        return few_shot_training_args(str(tmp_path / f"{phase}{fold}"), FAST, n, seed, use_cpu=True)

    kwargs = dict(trainer_kwargs={"data_collator": collator(tok), "processing_class": tok},
                  on_trainer=lambda trainer, phase, fold: ran.append((phase, fold)), state_dir=tmp_path / "folds")
    first = train_mixup_blo(lambda: load_for_classification(tiny_bert_dir, 2, seed=0), config,
                            tokenize(_rows(20, 0), tok), args, **kwargs)
    assert sorted(p.name for p in (tmp_path / "folds").iterdir()) == ["fold0.safetensors", "fold1.safetensors"]
    ran.clear()
    second = train_mixup_blo(lambda: load_for_classification(tiny_bert_dir, 2, seed=0), config,
                             tokenize(_rows(20, 0), tok), args, resume=True, **kwargs)
    assert ran == [("finetune", -1)]  # both folds came from disk
    for (name, a), b in zip(first.named_parameters(), second.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_bench_methods_are_registered_with_budgets():
    assert set(METHODS) <= set(available_methods())
    assert all(name in BUDGETS for name in METHODS)
    config = get_method("mixup_blo_joint").peft_config(RunContext(budget=FAST))
    assert config.hypergradient == "none" and config.folds == 5 and config.task_weight == "full"
    assert "LayerNorm" in config.modules_to_save  # the paper trains every non-mixing parameter
    config = get_method("mixup_blo").peft_config(RunContext(budget=FAST, options={"folds": 3, "r": 4}))
    assert config.folds == 3 and config.hypergradient == "darts"
    config = get_method("mixup_blo_fast").peft_config(RunContext(budget=FAST, options={"folds": 3}))
    assert config.folds == 1 and config.hypergradient == "first_order"  # the variant wins over options


@pytest.mark.parametrize(("method", "folds"), [("mixup_blo", 2), ("mixup_blo_lora", 1)])
def test_fit_predicts_with_a_merged_plain_model_and_saves_the_adapter(method, folds, tiny_bert_dir, tmp_path):
    pool, test = _rows(60, 0), _rows(12, 99)
    task = make_few_shot_task(DatasetSplits("toy", ("neg", "pos"), pool, test=test), seed=0, k=8)
    ctx = RunContext(model=tiny_bert_dir, seed=0, budget=FAST, work_dir=tmp_path, quiet=True,
                     options={"folds": folds, "mixing_lr": 0.05})
    fitted = get_method(method).fit(task, ctx)
    assert not any(isinstance(m, BaseTunerLayer) for m in fitted.model.modules())  # zero inference overhead
    proba = fitted.predict_proba(test.texts)
    assert proba.shape == (12, 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    tok = load_tokenizer(tiny_bert_dir)
    inputs = dict(tok(list(test.texts), padding=True, return_tensors="pt"))
    with torch.no_grad():
        torch.testing.assert_close(fitted.model(**inputs).logits, fitted.peft_model(**inputs).logits,
                                   rtol=0, atol=1e-5)
    files = {p.name for p in fitted.save(tmp_path / "saved").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert fitted.trainable_parameters > 0 and fitted.train_step_seconds is not None
    assert set(fitted.peft_model.peft_config["default"].modules_to_save) >= {"LayerNorm"}  # the method default


def test_the_default_trained_norms_are_the_models_own_normalisation_layers(tiny_bert_dir):
    """The method trains the LayerNorms as the paper does: under their own names on every architecture
    (GPT-2's ln_1/ln_2/ln_f and Llama's RMSNorms were silently left frozen by a literal "LayerNorm")."""
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    from hf_lowdata.methods.mixup_blo import normalisation_layers
    from hf_lowdata.models import classification_skeleton

    skeleton = classification_skeleton(tiny_bert_dir, 3)
    assert next(skeleton.parameters()).device.type == "meta" and skeleton.config.num_labels == 3
    assert normalisation_layers(skeleton) == ["LayerNorm"]
    gpt2 = GPT2ForSequenceClassification(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, num_labels=2))
    assert normalisation_layers(gpt2) == ["ln_1", "ln_2", "ln_f"]
    llama = LlamaForSequenceClassification(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                                                       num_hidden_layers=2, num_attention_heads=2,
                                                       num_key_value_heads=2, num_labels=2, pad_token_id=0))
    assert normalisation_layers(llama) == ["input_layernorm", "post_attention_layernorm", "norm"]
    trained = {n for n, p in get_peft_model(gpt2, MixupBLOConfig(task_type=TaskType.SEQ_CLS,
                                                                 modules_to_save=normalisation_layers(gpt2)))
               .named_parameters() if p.requires_grad and ".ln_" in n}
    assert len(trained) == 2 * (2 * 2 + 1)  # weight and bias of 2 norms per block and the final one


def test_fold_files_are_written_by_one_process_under_ddp(tiny_bert_dir, tmp_path):
    """Both processes wrote and renamed the same fold{f}.safetensors.tmp: on slow storage one rename failed."""
    import re

    from tests.helpers import run_torchrun

    stdout = run_torchrun(Path(__file__).with_name("ddp_mixup_worker.py"), str(tiny_bert_dir), str(tmp_path))
    results = dict(re.findall(r"RESULT rank=(\d) (params=\S+ fold_writes=\d+)", stdout))
    assert results.keys() == {"0", "1"}, stdout
    params = {rank: text.split()[0] for rank, text in results.items()}
    assert params["0"] == params["1"]
    assert results["0"].endswith("fold_writes=2") and results["1"].endswith("fold_writes=0")
    assert sorted(p.name for p in (tmp_path / "folds").iterdir()) == ["fold0.safetensors", "fold1.safetensors"]
