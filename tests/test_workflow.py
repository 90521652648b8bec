"""hf_lowdata.workflow: evaluation intervals."""

from __future__ import annotations

import json
import os

import numpy as np

from hf_lowdata.bench.measure import macro_f1
from hf_lowdata.workflow import bootstrap_intervals


def test_bootstrap_macro_f1_matches_macro_f1_per_resample():
    # perfect predictions on 3 classes, one example each of class 2: every resample scores 1.0
    # (before, a resample without class 2 averaged a 0 for it: interval 0.667-1.0)
    labels = [0] * 6 + [1] * 6 + [2]
    acc, f1 = bootstrap_intervals(labels, labels, 3, resamples=200)
    assert acc == (1.0, 1.0) and f1 == (1.0, 1.0)
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
    acc, f1 = bootstrap_intervals(y, p, 3, resamples=400, seed=0)
    point = macro_f1(y, p, 3)
    assert f1[0] < point < f1[1] and acc[0] < float((y == p).mean()) < acc[1]


def test_label_count_is_read_from_the_head_not_from_other_saved_modules(tmp_path):
    """With a pooler (or LayerNorms) in modules_to_save, the first matching key was the pooler's: 16 labels."""
    import torch
    from safetensors.torch import save_file

    from hf_lowdata.workflow import _labels_from_weights

    save_file({"base_model.model.bert.pooler.dense.weight": torch.zeros(16, 16),
               "base_model.model.bert.embeddings.LayerNorm.weight": torch.zeros(16),
               "base_model.model.classifier.out_proj.weight": torch.zeros(3, 16),
               "base_model.model.classifier.dense.weight": torch.zeros(16, 16)},
              str(tmp_path / "adapter_model.safetensors"))
    config = {"modules_to_save": ["bert.pooler.dense", "LayerNorm", "classifier", "score"]}
    assert _labels_from_weights(tmp_path, config) == ["LABEL_0", "LABEL_1", "LABEL_2"]


def test_training_time_carried_across_resumes_counts_each_session_up_to_its_checkpoint(tmp_path):
    """Training time of earlier sessions (resumed from): each session's start and carried seconds are recorded
    beside the checkpoints; a checkpoint's files say how far the session that wrote it got."""
    from hf_lowdata.workflow import TRAIN_TIME_FILE, _earlier_seconds

    checkpoints = tmp_path / "checkpoints"
    point = checkpoints / "checkpoint-4"
    point.mkdir(parents=True)
    for name, written in (("adapter_model.safetensors", 1020.0), ("trainer_state.json", 1030.0)):
        (point / name).write_text("{}")
        os.utime(point / name, (written, written))
    record = checkpoints / TRAIN_TIME_FILE
    assert _earlier_seconds(checkpoints, None) == 0.0  # not resuming
    record.write_text(json.dumps({"carried_seconds": 5.0, "started": 1000.0}))
    assert _earlier_seconds(checkpoints, str(point)) == 35.0  # 5 s carried + 30 s up to the checkpoint's last file
    # the session that resumed from it (35 s carried) was killed before its first checkpoint: it adds nothing
    record.write_text(json.dumps({"carried_seconds": 35.0, "started": 2000.0}))
    assert _earlier_seconds(checkpoints, str(point)) == 35.0
    # not recorded (checkpoints of an older version, or a session after one that was not): unknown, not 0
    record.write_text(json.dumps({"carried_seconds": None, "started": 2000.0}))
    assert _earlier_seconds(checkpoints, str(point)) is None
    record.unlink()
    assert _earlier_seconds(checkpoints, str(point)) is None


def test_the_evaluated_texts_reach_the_method_as_held_out(tiny_bert_dir, toy_data_dir, tmp_path, monkeypatch):
    """train --eval FILE (or a folder without --shots): the evaluation texts never reached the method, so
    SparseExpert meta-trained on them, with their labels, whenever its sources held them."""
    from hf_lowdata.data import FewShotTask, load_data
    from hf_lowdata.methods import METHODS
    from hf_lowdata.methods.sparse_expert import evaluated_texts
    from hf_lowdata.workflow import train_method

    splits = load_data(toy_data_dir / "toya")
    task = FewShotTask(name="mine", label_names=splits.label_names, labelled=splits.train, seed=0)
    seen = []
    original = METHODS["probe"].fit

    def fit(self, fit_task, ctx):
        seen.append(fit_task)
        return original(self, fit_task, ctx)

    monkeypatch.setattr(METHODS["probe"], "fit", fit)
    train_method("probe", task, tmp_path / "out", model=tiny_bert_dir, evaluation_data=splits.test)
    from hf_lowdata.methods import RunContext

    held_out = set(evaluated_texts(seen[0], RunContext()))
    assert set(splits.test.texts) <= held_out and set(splits.train.texts) <= held_out


def test_resume_over_an_unreadable_run_config_is_refused_with_what_to_do(tmp_path):
    """A damaged run_config.json (an OS crash before the write reached the disk, a hand edit) failed with a bare
    JSONDecodeError, and a JSON list with an AttributeError, instead of saying which file and what to do."""
    import pytest

    from hf_lowdata.workflow import CHECKPOINTS_DIR, RUN_CONFIG_FILE, WorkflowError, train_method
    from tests.cli.outputs import tiny_config, toy_task

    checkpoints = tmp_path / "out" / CHECKPOINTS_DIR
    (checkpoints / "checkpoint-2").mkdir(parents=True)
    (checkpoints / "checkpoint-2" / "trainer_state.json").write_text("{}")
    for damaged, why in (('{"method": "lo', "Unterminated string"), ("[]", "it holds a JSON list, not an object")):
        (checkpoints / RUN_CONFIG_FILE).write_text(damaged)
        with pytest.raises(WorkflowError, match=rf"run_config.json cannot be read \({why}.*Delete .*{CHECKPOINTS_DIR} "
                                                r"to train from the start.*nothing was changed"):
            train_method("lora", toy_task(), tmp_path / "out", config=tiny_config("lora"), save_steps=1, resume=True)
        assert (checkpoints / RUN_CONFIG_FILE).read_text() == damaged
        assert (checkpoints / "checkpoint-2" / "trainer_state.json").is_file()


def test_a_checkpoint_folder_with_nothing_to_resume_is_started_over_and_one_with_a_checkpoint_is_kept(tmp_path):
    """A hard kill before the first complete checkpoint leaves run_config.json (and perhaps a checkpoint cut off
    before its trainer_state.json): any method's rerun starts over, since --resume would have trained from step 0
    (a method with checkpoints was refused with "Pass --resume to continue it"); a complete checkpoint is kept."""
    import pytest

    from hf_lowdata.workflow import (
        CHECKPOINTS_DIR,
        RUN_CONFIG_FILE,
        WorkflowError,
        finished_output,
        train_method,
    )
    from tests.cli.outputs import tiny_config, toy_task

    def leftover(name: str, method: str, complete: bool = False) -> tuple:
        checkpoints = tmp_path / name / CHECKPOINTS_DIR
        (checkpoints / "checkpoint-1").mkdir(parents=True)  # cut off before its trainer_state.json, unless complete
        if complete:
            (checkpoints / "checkpoint-1" / "trainer_state.json").write_text("{}")
        (checkpoints / RUN_CONFIG_FILE).write_text(json.dumps({"method": method}))
        return tmp_path / name, checkpoints

    out, checkpoints = leftover("lora_over_a_complete_checkpoint", "lora", complete=True)
    with pytest.raises(WorkflowError, match="Pass --resume to continue it"):
        train_method("lora", toy_task(), out, config=tiny_config("lora"), save_steps=None)
    assert (checkpoints / "checkpoint-1" / "trainer_state.json").is_file() and not (out / ".lock").exists()
    for name, method, recorded in (("lora_over_lora", "lora", "lora"), ("probe_over_lora", "probe", "lora"),
                                   ("lora_over_probe", "lora", "probe")):
        out, checkpoints = leftover(name, recorded)
        result = train_method(method, toy_task(), out, config=tiny_config(method), save_steps=None)
        assert finished_output(out) and not checkpoints.exists(), name
        assert result.resumed_from is None and result.resume_note is None, name
    out, checkpoints = leftover("lora_resumed_over_lora", "lora")
    result = train_method("lora", toy_task(), out, config=tiny_config("lora"), save_steps=None, resume=True)
    assert result.resumed_from is None and "no complete checkpoint" in result.resume_note
    assert finished_output(out) and not checkpoints.exists()


def test_the_output_lock_is_reentrant_in_its_thread_and_refuses_any_other(tmp_path):
    import threading

    import pytest

    from hf_lowdata.workflow import OutputBusyError, output_lock

    out = tmp_path / "out"
    refused = []

    def other_thread() -> None:
        with pytest.raises(OutputBusyError, match=rf"{out} is being written by process {os.getpid()}") as caught, \
                output_lock(out):
            pass
        refused.append(caught.value)

    with output_lock(out), output_lock(out):  # the CLI holds it, and train_method takes it again
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert len(refused) == 1 and not out.exists()  # made by the lock, empty: removed on release
