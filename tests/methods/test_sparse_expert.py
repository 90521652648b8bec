"""The sparse_expert bench method: meta-training cache, held-out exclusion, meta-test, save/load, bench run."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hf_lowdata.budgets import Budget
from hf_lowdata.data import DataError, load_data, make_few_shot_task
from hf_lowdata.methods import METHODS, RunContext, get_method
from hf_lowdata.methods.sparse_expert import (
    BENCH_DATA_DIR_OPTION,
    DEFAULT_SOURCES,
    META_FILE,
    META_PROGRESS_FILE,
    PrototypeClassifier,
    cache_root,
)
from hf_lowdata.training.trainer import OBJECTIVE_JSON_FILE
from hf_lowdata.workflow import resolve_budget
from tests.test_leftovers import age

FAST = Budget(learning_rate=5e-3, epochs=1, min_steps=2, max_steps=2, batch_size=4,
              options={"sources": "toyb", "meta_steps": 3, "meta_batch": 1, "query_per_class": 2,
                       "finetune": "lora"})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_dir(toy_data_dir):
    return toy_data_dir  # toya and toyb (tests/conftest.py)


def _ctx(tiny_bert_dir, data_dir, tmp_path, seed=0, budget=FAST, **options):
    return RunContext(model=tiny_bert_dir, seed=seed, budget=budget, work_dir=tmp_path, quiet=True,
                      options={"bench_data_dir": str(data_dir), "cache_dir": str(tmp_path / "cache"), **options})


def _task(data_dir, name="toya", seed=0):
    return make_few_shot_task(load_data(data_dir / name), seed=seed, k=4)


def test_fit_predict_save_load_and_meta_training_is_cached(tiny_bert_dir, data_dir, tmp_path, monkeypatch):
    task = _task(data_dir)
    fitted = get_method("sparse_expert").fit(task, _ctx(tiny_bert_dir, data_dir, tmp_path))
    proba = fitted.predict_proba(task.test.texts)
    assert proba.shape == (len(task.test), 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert fitted.info["finetune"] == "lora" and abs(sum(fitted.info["routing"]) - 1) < 1e-3
    assert 0 < fitted.trainable_parameters < 10_000  # LoRA r=8 on query/value of the tiny BERT

    entries = list(cache_root(tmp_path / "cache").iterdir())
    assert len(entries) == 1 and (entries[0] / META_FILE).is_file()  # no .tmp / .work folder left
    meta = json.loads((entries[0] / META_FILE).read_text())
    assert meta["mask_bits_per_entry"] <= 1.0 and len(meta["history"]) == 3
    # the record counts this task's LoRA as trainable; the shared meta-trained adapter is reported beside it
    assert fitted.notes["meta_trained_parameters"] == meta["trainable_parameters"] > 10 * fitted.trainable_parameters
    assert fitted.notes["meta_trained_adapter_bytes"] == meta["adapter_bytes"] > 0
    assert meta["plan"]["sources"] == ["toyb"]

    saved = fitted.save(tmp_path / "saved")
    files = {p.name for p in saved.rglob("*") if p.is_file()}
    assert {"classifier.json", "head.safetensors", "model.safetensors"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    reloaded = PrototypeClassifier.load(saved)
    np.testing.assert_allclose(reloaded.predict_proba(task.test.texts), proba, atol=1e-5)

    from hf_lowdata.training import LowDataTrainer

    def no_training(*args, **kwargs):
        raise AssertionError("meta-training ran again instead of using the cache")

    monkeypatch.setattr(LowDataTrainer, "train", no_training)
    # what killed meta-trainings of this plan leave: a staged copy of a dead process, a cut-short cleanup
    key = entries[0].name
    dead = _dead_pid()
    for leftover in (f"{key}.tmp-{dead}", f"{key}.work"):
        (entries[0].parent / leftover / "sub").mkdir(parents=True)
        age(entries[0].parent / leftover)
    alive = entries[0].parent / f"{key}.tmp-{os.getpid()}"  # a running process's: never touched
    alive.mkdir()
    again = get_method("sparse_expert").fit(_task(data_dir, seed=1), _ctx(tiny_bert_dir, data_dir, tmp_path, seed=1))
    assert again.info["meta_trained_adapter"] == fitted.info["meta_trained_adapter"]
    assert sorted(p.name for p in entries[0].parent.iterdir()) == sorted([key, alive.name])


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_plan_holds_out_test_texts_and_the_evaluated_dataset(tiny_bert_dir, data_dir, tmp_path):
    method = get_method("sparse_expert")
    ctx = _ctx(tiny_bert_dir, data_dir, tmp_path)
    plan = method.plan(_task(data_dir, "toyb"), _ctx(tiny_bert_dir, data_dir, tmp_path, sources="toya,toyb"))
    assert plan.sources == ("toya",)  # the evaluated dataset is never a source
    every_test = {t for name in ("toya", "toyb") for t in load_data(data_dir / name).test.texts}
    assert every_test <= set(plan.exclude_texts)
    key = method.plan(_task(data_dir), ctx).key()
    assert key == method.plan(_task(data_dir), ctx).key() != method.plan(_task(data_dir), _ctx(
        tiny_bert_dir, data_dir, tmp_path, num_experts=4)).key()
    dense = get_method("sparse_expert_dense").plan(_task(data_dir), ctx)
    assert dense.adapter["num_experts"] == 1 and dense.objective == {"learn_masks": False}
    assert get_method("sparse_expert_tau95").plan(_task(data_dir), ctx).adapter["target_sparsity"] == 0.95
    late = method.plan(_task(data_dir), _ctx(tiny_bert_dir, data_dir, tmp_path, binary_masks_from="0.8"))
    assert late.objective == {"binary_masks_from": 0.8} and late.key() != key and plan.objective == {}


def test_the_cache_key_tells_models_of_the_same_folder_name_apart(tiny_bert_dir, data_dir, tmp_path):
    import shutil

    import torch
    from transformers import AutoModel

    other = tmp_path / "other" / tiny_bert_dir.name  # same name, other weights
    shutil.copytree(tiny_bert_dir, other)
    model = AutoModel.from_pretrained(other)
    torch.nn.init.normal_(model.encoder.layer[0].attention.self.query.weight)
    model.save_pretrained(other)
    method = get_method("sparse_expert")
    key = method.plan(_task(data_dir), _ctx(tiny_bert_dir, data_dir, tmp_path)).key()
    ctx_other = RunContext(model=other, budget=FAST, work_dir=tmp_path, quiet=True,
                           options={"bench_data_dir": str(data_dir)})
    assert method.plan(_task(data_dir), ctx_other).key() != key


def test_missing_source_dir_says_how_to_set_it(tiny_bert_dir, data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_LOWDATA_DATA_DIR", raising=False)
    ctx = RunContext(model=tiny_bert_dir, budget=FAST, work_dir=tmp_path, quiet=True)
    with pytest.raises(DataError, match=r"hf-lowdata train and bench also take --config source_dir=DIR"):
        get_method("sparse_expert").fit(_task(data_dir), ctx)
    with pytest.raises(DataError, match="not found"):
        get_method("sparse_expert").fit(_task(data_dir), _ctx(tiny_bert_dir, data_dir, tmp_path, sources="nope"))
    with pytest.raises(DataError, match=r"source_dir=\S*no-such-folder is not a folder"):  # was FileNotFoundError
        get_method("sparse_expert").fit(_task(data_dir), _ctx(tiny_bert_dir, data_dir, tmp_path,
                                                               source_dir=str(tmp_path / "no-such-folder")))


META_TUNED = ("sparse_expert", "sparse_expert_dense", "sparse_expert_m4", "sparse_expert_tau80",
              "sparse_expert_tau95")


def test_missing_requirements_asks_for_a_source_folder(tiny_bert_dir, data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_LOWDATA_DATA_DIR", raising=False)
    for name in META_TUNED:
        reason = METHODS[name].missing_requirements({})
        assert reason is not None and "\n" not in reason, name
        assert "HF_LOWDATA_DATA_DIR" in reason and ", ".join(DEFAULT_SOURCES) in reason and "source_dir=" in reason
        assert METHODS[name].missing_requirements() == reason
    assert METHODS["sparse_expert_pretrained"].missing_requirements({}) is None  # reads no source dataset
    with pytest.raises(DataError) as err:  # the run-time error says the same
        get_method("sparse_expert").plan(None, RunContext(model=tiny_bert_dir, budget=FAST, work_dir=tmp_path))
    assert METHODS["sparse_expert"].missing_requirements({}) in str(err.value)
    # what ``--config source_dir=DIR`` (train / workflow.train_method) and ``hf-lowdata bench`` pass
    _, options = resolve_budget("sparse_expert", "standard", {"source_dir": str(data_dir), "max_steps": 3})
    assert METHODS["sparse_expert"].missing_requirements(options) is None
    assert METHODS["sparse_expert_m4"].missing_requirements({BENCH_DATA_DIR_OPTION: str(data_dir)}) is None
    assert METHODS["sparse_expert"].missing_requirements({"source_dir": ""}) is not None  # empty is not a folder


def test_data_dir_env_satisfies_the_requirement_and_is_used(tiny_bert_dir, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_LOWDATA_DATA_DIR", str(data_dir))
    assert all(METHODS[name].missing_requirements({}) is None for name in META_TUNED)
    ctx = RunContext(model=tiny_bert_dir, budget=FAST, work_dir=tmp_path, quiet=True)
    plan = get_method("sparse_expert").plan(_task(data_dir), ctx)
    assert plan.source_dir == str(data_dir) and plan.sources == ("toyb",)


def test_a_benchmark_of_other_datasets_finds_the_sources_in_the_data_dir_env(tiny_bert_dir, data_dir, tmp_path,
                                                                            monkeypatch):
    import shutil

    own = tmp_path / "own"
    shutil.copytree(data_dir / "toya", own / "mine")  # the user's --data-dir holds only their dataset
    monkeypatch.delenv("HF_LOWDATA_DATA_DIR", raising=False)
    ctx = _ctx(tiny_bert_dir, own, tmp_path, sources="toyb")
    with pytest.raises(DataError, match=rf"toyb not found in {own}.*Set HF_LOWDATA_DATA_DIR"):
        get_method("sparse_expert").plan(_task(own, "mine"), ctx)
    monkeypatch.setenv("HF_LOWDATA_DATA_DIR", str(data_dir))
    plan = get_method("sparse_expert").plan(_task(own, "mine"), ctx)
    assert plan.source_dir == str(data_dir) and plan.sources == ("toyb",)
    broken = tmp_path / "sources"
    shutil.copytree(data_dir, broken)
    (broken / "toya" / "test.jsonl").write_text('{"sentence": "no text column", "label": 0}\n')
    with pytest.raises(DataError, match=r"never meta-trains on a text of (any test split|the evaluated dataset).* toya cannot be read"):
        get_method("sparse_expert").plan(_task(data_dir, "toya"), _ctx(tiny_bert_dir, broken, tmp_path, sources="toyb"))


def test_no_meta_tuning_variant_without_finetuning(tiny_bert_dir, data_dir, tmp_path):
    task = _task(data_dir)
    fitted = get_method("sparse_expert_pretrained").fit(task, _ctx(tiny_bert_dir, data_dir, tmp_path, finetune="none"))
    assert fitted.trainable_parameters == 0 and "routing" not in fitted.info
    assert not (tmp_path / "cache").exists()  # nothing meta-trained
    assert fitted.predict(task.test.texts).shape == (len(task.test),)
    assert "dev_set" not in fitted.notes
    with_dev = replace(task, dev=task.test)  # nothing trains, so a dev set cannot select anything: said so
    notes = get_method("sparse_expert_pretrained").fit(with_dev, _ctx(tiny_bert_dir, data_dir, tmp_path,
                                                                      finetune="none")).notes
    assert notes["dev_set"].startswith("not used") and "selected_step" not in notes


def test_corrupt_saved_classifier_and_cache_entry_are_refused(tiny_bert_dir, data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved prototype classifier"):
        PrototypeClassifier.load(tmp_path)
    ctx = _ctx(tiny_bert_dir, data_dir, tmp_path)
    method = get_method("sparse_expert")
    entry = cache_root(tmp_path / "cache") / method.plan(_task(data_dir), ctx).key()
    entry.mkdir(parents=True)
    (entry / META_FILE).write_text("{}")  # as if the adapter files had been deleted
    with pytest.raises(DataError, match="is incomplete .* Delete that folder"):
        method.fit(_task(data_dir), ctx)
    (entry / "adapter_config.json").write_text("{}")
    (entry / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")  # cut short
    with pytest.raises(DataError, match="is damaged .* Delete that folder"):
        method.fit(_task(data_dir), ctx)


def test_bench_runs_sparse_expert_with_its_data_dir(tiny_bert_dir, data_dir, tmp_path):
    from hf_lowdata.bench import BenchConfig, run_benchmark

    config = BenchConfig(data_dir=data_dir, datasets=["toya"], methods=["sparse_expert"], out=tmp_path / "out",
                         shots=[4], seeds=[0], model=str(tiny_bert_dir),
                         options={"sources": "toyb", "meta_steps": 2, "meta_batch": 1, "query_per_class": 2,
                                  "finetune": "none", "cache_dir": str(tmp_path / "cache")})
    records = run_benchmark(config, show_progress=False)
    assert [r["status"] for r in records] == ["ok"], records[0].get("error")
    assert 0.0 <= records[0]["accuracy"] <= 1.0 and records[0]["adapter_bytes"] > 0


def _write_dataset(root, name, train, test, label_names):
    from tests.helpers import write_jsonl

    folder = root / name
    folder.mkdir(parents=True)
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "test.jsonl", test)
    (folder / "meta.json").write_text(json.dumps({"name": name, "label_names": label_names}))


def test_the_evaluated_dataset_is_held_out_whole_as_sst2_is_inside_sst5(tiny_bert_dir, tmp_path):
    """SST-2 is SST-5 without its neutral class: only SST-2's test split was held out, so meta-training drew
    the very sentences (with their labels) that the sst2 meta-test tasks then got as support examples."""
    from tests.helpers import toy_sentences

    root = tmp_path / "data"
    polar = toy_sentences(60, 5)
    neutral = [{"text": f"a plain remark number {i}", "label": 1} for i in range(30)]
    _write_dataset(root, "fine", [{**r, "label": 2 * r["label"]} for r in polar] + neutral,
                   [{**r, "label": 2 * r["label"]} for r in toy_sentences(20, 6)], ["negative", "neutral", "positive"])
    _write_dataset(root, "coarse", polar, toy_sentences(20, 9), ["negative", "positive"])
    _write_dataset(root, "other", toy_sentences(80, 3), toy_sentences(20, 4), ["negative", "positive"])
    _write_dataset(root, "apart", [{**r, "text": f"unrelated {r['text']}"} for r in toy_sentences(40, 7)],
                   [{**r, "text": f"unrelated {r['text']}"} for r in toy_sentences(20, 8)], ["negative", "positive"])

    method = get_method("sparse_expert")
    ctx = _ctx(tiny_bert_dir, root, tmp_path, sources="fine,other")
    plan = method.plan(_task(root, "coarse"), ctx)
    assert {r["text"] for r in polar} <= set(plan.exclude_texts)  # the training pool, not only the test split
    # held-out texts no source holds change nothing, so they do not change the cache key either
    assert method.plan(_task(root, "apart"), ctx).key() == method.plan(None, ctx).key() != plan.key()

    with pytest.warns(UserWarning, match="skips fine"):
        fitted = method.fit(_task(root, "coarse"), ctx)
    meta = json.loads((Path(fitted.info["meta_trained_adapter"]) / META_FILE).read_text())
    assert meta["unused_sources"] == ["fine"] and meta["excluded_source_examples"]["fine"] == len(polar)

    with pytest.raises(DataError, match="No source dataset keeps two classes"):
        method.fit(_task(root, "coarse"), _ctx(tiny_bert_dir, root, tmp_path, sources="fine"))


@pytest.mark.parametrize("sources", ["../outside", "/etc", "toyb,sub/dir", ".."])
def test_a_source_name_that_is_a_path_is_refused(tiny_bert_dir, data_dir, tmp_path, sources):
    """sources= entries were joined onto the source folder: a path read any folder of the server (a way around
    the demo's refusal of folder settings)."""
    with pytest.raises(DataError, match="sources names dataset folders inside the source folder"):
        get_method("sparse_expert").plan(_task(data_dir), _ctx(tiny_bert_dir, data_dir, tmp_path, sources=sources))


def test_an_edited_csv_source_gets_a_new_cache_key(tiny_bert_dir, data_dir, tmp_path):
    """A source in CSV (or TSV, JSON) was recorded as "missing" in the key: an edited file reused a stale adapter."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_dir / "toya", root / "toya")
    (root / "csvsrc").mkdir()
    rows = [f"text {i} is {'good' if i % 2 else 'bad'},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    (root / "csvsrc" / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    method, task = get_method("sparse_expert"), _task(root)
    ctx = _ctx(tiny_bert_dir, root, tmp_path, sources="csvsrc")
    before = method.plan(task, ctx).key()
    assert method.plan(task, ctx).key() == before  # stable
    (root / "csvsrc" / "train.csv").write_text("text,label\n" + "\n".join(rows + ["one more text,pos"]) + "\n")
    assert method.plan(task, ctx).key() != before


def test_a_finetune_typo_is_refused_before_meta_training(tiny_bert_dir, data_dir, tmp_path):
    ctx = _ctx(tiny_bert_dir, data_dir, tmp_path, finetune="LoRA")
    with pytest.raises(ValueError, match="finetune must be 'none', 'lora' or 'full', got 'LoRA'"):
        get_method("sparse_expert").fit(_task(data_dir), ctx)
    assert not (tmp_path / "cache").exists() or not any(cache_root(tmp_path / "cache").glob("*"))


def test_a_cache_entry_without_its_summary_or_with_a_cut_config_is_refused(tiny_bert_dir, data_dir, tmp_path):
    """An entry without meta_training.json was meta-trained again on every run (the rename onto it failed
    silently) and then crashed; a truncated adapter_config.json failed inside PEFT with a bare JSONDecodeError."""
    ctx = _ctx(tiny_bert_dir, data_dir, tmp_path)
    method = get_method("sparse_expert")
    entry = cache_root(tmp_path / "cache") / method.plan(_task(data_dir), ctx).key()
    entry.mkdir(parents=True)
    (entry / "adapter_config.json").write_text("{}")
    with pytest.raises(DataError, match=f"is incomplete \\(no {META_FILE}\\).*Delete that folder"):
        method.fit(_task(data_dir), ctx)
    (entry / META_FILE).write_text("{}")
    (entry / "adapter_config.json").write_text('{"peft_type": "SPARSE_')  # cut short
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(entry / "adapter_model.safetensors"))
    with pytest.raises(DataError, match="is damaged \\(adapter_config.json: .*Delete that folder"):
        method.fit(_task(data_dir), ctx)


def test_full_test_time_fine_tuning_keeps_its_own_learning_rate_when_a_budget_field_is_set():
    """ctx.budget_for("full") returned the run's SparseExpert budget whole: finetune=full took LoRA's learning rate
    (40x its own) as soon as any budget field (or a preset) was set."""
    from hf_lowdata.budgets import get_budget
    from hf_lowdata.methods.sparse_expert import full_finetune_budget

    full = get_budget("full")
    assert full_finetune_budget(RunContext()) == full
    budget, _ = resolve_budget("sparse_expert", config={"max_steps": 40})
    derived = full_finetune_budget(RunContext(budget=budget))
    assert derived.learning_rate == full.learning_rate and derived.max_steps == 40
    budget, _ = resolve_budget("sparse_expert", config={"learning_rate": 1e-4})
    assert full_finetune_budget(RunContext(budget=budget)).learning_rate == 1e-4  # a rate the user set is kept


def test_the_encoder_trains_and_predicts_on_the_requested_device(tiny_bert_dir, data_dir, tmp_path, monkeypatch):
    """The meta-test encoder stayed on the CPU whatever --device said (test-time fine-tuning and prototypes ran there
    on a GPU machine), and predict --device left a saved prototype classifier where it was."""
    import hf_lowdata.methods.sparse_expert as sparse_expert
    from hf_lowdata.workflow import load_classifier

    moved_to: list[str] = []
    load = sparse_expert.load_encoder

    def spied_load(path):
        encoder = load(path)
        to = encoder.to

        def record(*args, **kwargs):
            moved_to.append(str(args[0] if args else kwargs.get("device")))
            return to(*args, **kwargs)

        encoder.to = record
        return encoder

    monkeypatch.setattr(sparse_expert, "load_encoder", spied_load)
    task = _task(data_dir)
    fitted = get_method("sparse_expert_pretrained").fit(task, _ctx(tiny_bert_dir, data_dir, tmp_path, finetune="none"))
    assert moved_to == ["cpu"]  # (the device the context asks for; CUDA where it is the default)
    saved = fitted.save(tmp_path / "saved")
    on_meta = load_classifier(saved, device="meta")
    assert {p.device.type for p in on_meta.encoder.parameters()} == {"meta"}
    assert load_classifier(saved, device="cpu").predict(task.test.texts).shape == (len(task.test),)


def test_test_time_batches_keep_the_budgets_size_with_two_examples_per_class():
    """Every class in every step: one example each from 5 classes up (each its own prototype), and 50 texts a step
    at 50 classes against the baselines' 8."""
    from hf_lowdata.methods.sparse_expert import support_batch_shape

    assert support_batch_shape(8, 2) == (4, 2) and support_batch_shape(8, 4) == (2, 4)  # as before: all classes
    for classes in (5, 20, 50):
        per_class, ways = support_batch_shape(8, classes)
        assert per_class >= 2 and per_class * ways == 8 and ways < classes


def test_many_classes_fine_tune_on_batches_of_the_budgets_size(tiny_bert_dir, tmp_path, monkeypatch):
    import hf_lowdata.methods.sparse_expert as sparse_expert
    from hf_lowdata.data import FewShotTask, TextDataset

    names = tuple(f"c{i}" for i in range(12))
    texts = tuple(f"example {j} of class {i}" for i in range(12) for j in range(3))
    labelled = TextDataset(texts, tuple(i for i in range(12) for _ in range(3)), names, "many")
    task = FewShotTask(name="many", label_names=names, labelled=labelled, seed=0)
    sizes = []
    encode = sparse_expert._encode
    monkeypatch.setattr(sparse_expert, "_encode", lambda tok, t, n, d: sizes.append(len(t)) or encode(tok, t, n, d))
    budget = replace(FAST, min_steps=3, max_steps=3, batch_size=8)
    fitted = get_method("sparse_expert_pretrained").fit(task, _ctx(tiny_bert_dir, None, tmp_path, budget=budget))
    assert sizes == [8, 8, 8]  # 4 classes x 2 examples per step (it was 12 x 1)
    assert fitted.predict(list(texts[:5])).shape == (5,)
    # a declared class without an example is a data error before any training (was ValueError from the prototypes)
    missing = FewShotTask(name="many", label_names=(*names, "c12"), labelled=replace(labelled, label_names=(*names,
                                                                                                            "c12")), seed=0)
    with pytest.raises(DataError, match=r"prototypes\), but 'c12' has none"):
        get_method("sparse_expert_pretrained").fit(missing, _ctx(tiny_bert_dir, None, tmp_path, budget=budget))


def test_a_meta_training_resumed_after_a_kill_matches_an_uninterrupted_one_history_included(tiny_bert_dir, data_dir,
                                                                                             tmp_path, monkeypatch):
    """meta_training.json's per-step history held only the steps run after a resume (the objective starts with
    an empty history and the checkpoint did not keep it): the record of an interrupted meta-training was cut."""
    import time

    from safetensors.torch import load_file

    from hf_lowdata.methods.sparse_expert import MetaTrainingPlan, meta_train
    from hf_lowdata.tuners.sparse_expert import SparseExpertObjective

    plan = MetaTrainingPlan(model=str(tiny_bert_dir), source_dir=str(data_dir), sources=("toyb",), steps=4,
                            meta_batch=1, query_per_class=2, max_length=32)  # a checkpoint every step
    whole = meta_train(plan, tmp_path / "whole")
    stepped = SparseExpertObjective.on_optimizer_step

    def killed_in_step_3(self, trainer, model):
        if trainer.state.global_step == 2:  # (the count of steps finished before this one)
            raise KeyboardInterrupt  # a kill after step 2's checkpoint, in step 3
        time.sleep(0.5)  # slow steps: checkpoint-2 is written at least 1 s into the first session
        stepped(self, trainer, model)

    monkeypatch.setattr(SparseExpertObjective, "on_optimizer_step", killed_in_step_3)
    for cache in ("cut", "older", "previous"):
        with pytest.raises(KeyboardInterrupt):
            meta_train(plan, tmp_path / cache)
    monkeypatch.undo()
    # the version before kept the history in META_PROGRESS_FILE: resumed whole
    [work] = (tmp_path / "previous" / "sparse_expert").glob("*.work")
    progress, record = (work / "checkpoint-2" / META_PROGRESS_FILE), (work / "checkpoint-2" / OBJECTIVE_JSON_FILE)
    progress.write_text(json.dumps({**json.loads(progress.read_text()), **json.loads(record.read_text())}))
    record.unlink()
    previous = json.loads((meta_train(plan, tmp_path / "previous") / META_FILE).read_text())
    assert previous["history"] == expected_history(whole) and "history_from_step" not in previous
    # a checkpoint of an older version kept no history: the summary says which steps its history covers
    [work] = (tmp_path / "older" / "sparse_expert").glob("*.work")
    (work / "checkpoint-2" / META_PROGRESS_FILE).unlink()
    (work / "checkpoint-2" / OBJECTIVE_JSON_FILE).unlink()  # (the trainer keeps the history there now)
    older = json.loads((meta_train(plan, tmp_path / "older") / META_FILE).read_text())
    assert older["history"] == expected_history(whole)[2:] and older["history_from_step"] == 2
    assert "cover only the steps after step 2" in older["history_note"]
    resumed = meta_train(plan, tmp_path / "cut")
    meta, expected = (json.loads((f / META_FILE).read_text()) for f in (resumed, whole))
    assert meta["resumed_from"].endswith("checkpoint-2") and expected["resumed_from"] is None
    assert len(expected["history"]) == 4
    assert meta["history"] == expected["history"]
    assert meta["seconds"] >= 1.0 and "history_from_step" not in meta  # the first session's second counts
    weights, reference = (load_file(f / "adapter_model.safetensors") for f in (resumed, whole))
    assert weights.keys() == reference.keys()
    for name in weights:
        assert torch_equal(weights[name], reference[name]), name


def expected_history(folder):
    return json.loads((folder / META_FILE).read_text())["history"]


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


_PUBLISHER = """
import fcntl, shutil, sys
from pathlib import Path
work, reference, final = (Path(a) for a in sys.argv[1:4])
work.mkdir(parents=True)
with open(work / ".lock", "a+") as fh:
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
    print("locked", flush=True)
    sys.stdin.readline()
    shutil.copytree(reference, final)  # publishes, then removes its work folder, as meta_train does
    shutil.rmtree(work)
"""


def test_a_second_process_waits_for_the_meta_training_of_its_plan_and_uses_its_adapter(tiny_bert_dir, data_dir,
                                                                                         tmp_path, monkeypatch, capfd):
    """Two processes meta-training one plan (two benchmarks sharing the cache) shared its work folder: one resumed
    from a checkpoint the other was still writing or rotating away and failed ("no objective_state.safetensors")."""
    import subprocess
    import sys
    import threading

    from hf_lowdata.methods.sparse_expert import MetaTrainingPlan, meta_train
    from hf_lowdata.training import LowDataTrainer

    plan = MetaTrainingPlan(model=str(tiny_bert_dir), source_dir=str(data_dir), sources=("toyb",), steps=1,
                            meta_batch=1, query_per_class=2, max_length=32)
    reference = meta_train(plan, tmp_path / "reference")
    root = cache_root(tmp_path / "shared")
    work, final = root / f"{plan.key()}.work", root / plan.key()
    holder = subprocess.Popen([sys.executable, "-c", _PUBLISHER, str(work), str(reference), str(final)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"

        def no_training(*args, **kwargs):
            raise AssertionError("meta-trained the plan beside the process that meta-trains it")

        monkeypatch.setattr(LowDataTrainer, "train", no_training)
        got = []
        waiter = threading.Thread(target=lambda: got.append(meta_train(plan, tmp_path / "shared")))
        waiter.start()
        waiter.join(timeout=3)
        assert waiter.is_alive()  # waiting for the holder
        holder.stdin.write("publish\n")
        holder.stdin.flush()
        waiter.join(timeout=60)
        assert not waiter.is_alive() and got == [final]
    finally:
        holder.kill()
        holder.wait()
    assert "which meta-trains the same SparseExpert plan" in capfd.readouterr().err
    assert sorted(p.name for p in root.iterdir()) == [final.name]  # no work folder or lock file left behind
    # a meta-training that fails before its first checkpoint leaves no work folder (nor its lock file)
    with pytest.raises(DataError, match="Source dataset 'nope' not found"):
        meta_train(replace(plan, sources=("nope",)), tmp_path / "shared")
    assert sorted(p.name for p in root.iterdir()) == [final.name]


def test_meta_training_reports_progress_and_stops_on_cancel(tiny_bert_dir, data_dir, tmp_path):
    """meta_train had no progress or cancel hook: `train` said nothing for minutes and the demo's Cancel button could
    not stop it. A cancelled meta-training keeps its checkpoint, and the next run finishes it."""
    import threading

    from hf_lowdata.methods import RunCancelled

    cancel, seen = threading.Event(), []

    def progress(message, fraction):
        seen.append((message, fraction))
        if "meta-training" in message:
            cancel.set()  # the user presses Cancel after the first meta-training step

    options = {"meta_steps": 4}
    ctx = replace(_ctx(tiny_bert_dir, data_dir, tmp_path, **options), progress=progress, cancel=cancel)
    with pytest.raises(RunCancelled, match="sparse_expert meta-training: cancelled at step 2"):
        get_method("sparse_expert").fit(_task(data_dir), ctx)
    assert seen[0] == ("sparse_expert meta-training: step 1/4", 0.25)
    [work] = cache_root(tmp_path / "cache").glob("*.work")
    assert any(work.glob("checkpoint-*"))  # the finished step is kept for the next run
    fitted = get_method("sparse_expert").fit(_task(data_dir), _ctx(tiny_bert_dir, data_dir, tmp_path, **options))
    assert fitted.predict_proba(["fine"]).shape == (1, 2)
    [entry] = cache_root(tmp_path / "cache").iterdir()
    assert json.loads((entry / META_FILE).read_text())["resumed_from"] is not None
