"""hf_lowdata demo: which few-shot method wins on *your* labelled data? Compare them in the browser.

Run it locally from a checkout (binds 127.0.0.1:7860, works offline with the packaged model)::

    .venv/bin/python spaces_demo/app.py [--port 7860] [--host 127.0.0.1] [--share]

or as a Hugging Face Space (this folder is laid out as one; the Space sets GRADIO_SERVER_NAME).

The page is a thin layer over the library: data files are read and validated by
:mod:`hf_lowdata.data`, every method is trained, evaluated, saved and given its model card by
:func:`hf_lowdata.workflow.train_method`, and uploads go through :func:`hf_lowdata.hub.push_adapter`.
This file adds what only a page needs: column detection, a held-out split when no evaluation file
is given, upload limits, a line where comparisons wait for their turn, a worker thread with live
progress and a cancel switch, tables and plots, and per-session temporary folders that are removed
when the session ends.
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gradio as gr

import hf_lowdata  # noqa: F401  (registers hf_lowdata's PEFT methods)
from hf_lowdata.budgets import PRESETS
from hf_lowdata.cli import hide_upstream_deprecation_noise
from hf_lowdata.data import (
    TEXT_FILE_SUFFIXES,
    TEXT_PAIR_COLUMN,
    DataError,
    FewShotTask,
    TextDataset,
    balance_note,
    check_same_kind,
    duplicate_notes,
    examples_from_rows,
    excluded_pool_indices,
    normalize_text,
    ranked_indices,
    read_rows,
    require_two_classes,
    test_in_train_note,
)
from hf_lowdata.methods import METHODS, MethodConfigError, RunCancelled, SharedCache, available_methods
from hf_lowdata.models import DEFAULT_MODEL, ModelNotFoundError, require_text_model
from hf_lowdata.training import NonFiniteLossError
from hf_lowdata.workflow import (
    TrainResult,
    WorkflowError,
    budget_fields_read,
    check_config,
    ignored_budget_settings,
    require_examples,
    resolve_budget,
    train_method,
    truncation_note,
)

log = logging.getLogger("hf_lowdata.demo")
HERE = Path(__file__).resolve().parent

EXAMPLE_FILE = HERE / "examples" / "support_tickets.csv"
#: Upload limits: a few-shot demo needs a few hundred rows at most; these keep a shared Space usable.
MAX_UPLOAD_BYTES = 2 * 1024 * 1024
#: Every file type hf_lowdata.data reads (a .json file holds a list of objects); Gradio refuses the others.
FILE_TYPES = list(TEXT_FILE_SUFFIXES)
MAX_LABELLED_ROWS = 2000
MAX_UNLABELLED_ROWS = 10000
MAX_EVAL_ROWS = 5000
#: Without an evaluation file, this share of every label (at least one example) is held out.
HELD_OUT_FRACTION = 0.25
MAX_SESSIONS = 20
DEFAULT_METHODS = ("probe", "lora")
TEXT_NAMES = ("text", "sentence", "review", "content", "message", "body", "comment", "tweet", "utterance", "document")
LABEL_NAMES = ("label", "labels", "class", "category", "target", "sentiment", "intent", "topic", "y")
#: Settings whose names end in one of these name a folder or file on the server; the page refuses them.
PATH_SETTING_SUFFIXES = ("dir", "path", "file", "folder")
#: Upper bounds of the settings that set how long or how large a run is: one comparison holds the training slot
#: for everyone, so a visitor may not ask for days of training or more memory than the server has. The budgets
#: of hf_lowdata/budgets.py stay far below them (160 steps, batch 64, 128 tokens); hf-lowdata train takes any value.
SETTING_LIMITS: dict[str, float] = {
    "max_steps": 2000, "min_steps": 2000, "epochs": 200, "batch_size": 256, "max_length": 512,
    "num_iterations": 100, "unlabelled_batch_size": 512, "projector_dim": 1024, "r": 256, "folds": 10,
    "iterations": 10, "projector_layers": 12, "projector_heads": 64, "mlp_ratio": 16,
    "critic_dim": 4096, "discriminator_hidden": 4096, "meta_steps": 2000, "meta_batch": 32, "query_per_class": 64,
    "num_experts": 64,
}
#: How a visitor types a pair into the "Try a sentence" box (a tab cannot be typed there).
PAIR_TYPING_SEPARATOR = "||"
ERROR_BAR_NOTE = ("Error bars: 95% bootstrap interval over the evaluation examples (the examples are resampled "
                  "1000 times), i.e. how much a figure could move with another evaluation set of the same size.")


class DemoError(ValueError):
    """Input the page cannot use; the message is shown to the user as it is."""


#: Errors whose message says what is wrong and what to do: the page shows the message alone, without the type
#: name (a bad setting read "MethodConfigError: ..." in the results table) and without "Something went wrong".
USER_ERRORS = (DemoError, DataError, ModelNotFoundError, WorkflowError, MethodConfigError, NonFiniteLossError)


# --------------------------------------------------------------------------------------------------
# Reading uploads


def _friendly(err: Exception, path: Path) -> str:
    """The library's message with the upload's temporary path replaced by its file name."""
    return str(err).replace(str(path), path.name)


def read_upload(path: str | os.PathLike | None, what: str, max_rows: int) -> list[dict[str, Any]]:
    """The rows of an uploaded CSV/TSV/JSONL/JSON file, within the size and row limits."""
    if path is None:
        raise DemoError(f"No {what} file was uploaded.")
    file = Path(path)
    if not file.is_file():
        raise DemoError(f"The {what} file {file.name} could not be read; upload it again.")
    size = file.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise DemoError(f"The {what} file {file.name} is {size / 2**20:.1f} MiB; the limit is "
                        f"{MAX_UPLOAD_BYTES / 2**20:.0f} MiB. Upload a smaller sample.")
    try:
        return read_rows(file, max_rows=max_rows)
    except DataError as err:
        raise DemoError(_friendly(err, file)) from err


def detect_columns(rows: Sequence[dict[str, Any]]) -> tuple[str | None, str | None]:
    """Guess the text and label columns: usual names first, else the longest-text and fewest-values columns."""
    columns = [str(c) for c in rows[0]] if rows else []
    lower = {c.lower(): c for c in columns}
    text = next((lower[n] for n in TEXT_NAMES if n in lower), None)
    if text is None and columns:
        text = max(columns, key=lambda c: sum(len(str(r.get(c) or "")) for r in rows))
    label = next((lower[n] for n in LABEL_NAMES if n in lower and lower[n] != text), None)
    if label is None:  # (a pair's second text is never the label)
        others = [c for c in columns if c not in (text, TEXT_PAIR_COLUMN)]
        distinct = {c: len({str(r.get(c)) for r in rows}) for c in others}
        usable = [c for c in others if 2 <= distinct[c] <= max(2, len(rows) // 2)]
        label = min(usable, key=lambda c: distinct[c]) if usable else None
    return text, label


def _check_column(rows: Sequence[dict[str, Any]], column: str | None, role: str, file_name: str) -> str:
    columns = list(rows[0]) if rows else []
    if not column:
        raise DemoError(f"{file_name} has no {role} column that could be detected (columns: {', '.join(columns)}). "
                        f"Choose the {role} column above.")
    if column not in columns:
        raise DemoError(f"{file_name} has no column named {column!r} (columns: {', '.join(columns)}). "
                        f"Choose the {role} column above.")
    return column


@dataclass
class PreparedData:
    """The task to train on, the evaluation set, and notes for the page."""

    task: FewShotTask
    evaluation: TextDataset
    notes: list[str] = field(default_factory=list)


def distinct_examples(data: TextDataset) -> TextDataset:
    """``data`` with each (text, label) once, texts compared by :func:`~hf_lowdata.data.normalize_text`."""
    assert data.labels is not None
    first: dict[tuple[str, int], int] = {}
    for i, (text, label) in enumerate(zip(data.texts, data.labels)):
        first.setdefault((normalize_text(text), label), i)
    return data.subset(first.values())


def held_out_split(data: TextDataset, fraction: float = HELD_OUT_FRACTION) -> tuple[TextDataset, TextDataset]:
    """(train, evaluation): ``fraction`` of every label's distinct texts (at least one) held out, deterministically.

    Texts are compared by :func:`~hf_lowdata.data.normalize_text`. Every copy of a held-out text is
    held out, so an upload with repeated rows never scores a text it was trained on, and each held-out
    text is evaluated once, so repeated rows do not count as more evaluation examples than there are.
    A text that carries two labels is never held out (it would leave the other label's training part,
    possibly emptying it, and could only be scored right under one of them), so every label keeps
    training examples.
    """
    assert data.labels is not None
    keys = [normalize_text(t) for t in data.texts]
    labels_of: dict[str, set[int]] = {}
    for key, label in zip(keys, data.labels):
        labels_of.setdefault(key, set()).add(label)
    held_out: set[str] = set()
    for label in range(data.num_labels):
        name = data.label_names[label]
        members = [i for i, y in enumerate(data.labels) if y == label]
        distinct = list(dict.fromkeys(keys[i] for i in ranked_indices(data, f"demo-held-out:{label}", 0, members)))
        if len(distinct) < 2:
            raise DemoError(
                f"Label {name!r} has only one distinct text, so none is left to evaluate on "
                "after training (or to train on after holding one out). Add different examples of it, or upload an "
                "evaluation file."
            )
        single = [key for key in distinct if len(labels_of[key]) == 1]
        if not single:
            raise DemoError(f"Every text of label {name!r} also carries another label, so none can be held out to "
                            "evaluate it. Fix these labels, or upload an evaluation file.")
        held_out.update(single[: max(1, round(fraction * len(distinct)))])
    train = [i for i, key in enumerate(keys) if key not in held_out]
    evaluation = [i for i, key in enumerate(keys) if key in held_out]
    return (data.subset(train, source=f"{data.source} (training part)"),
            distinct_examples(data.subset(evaluation, source=f"{data.source} (held-out part)")))


def prepare_data(
    labelled_path: str | os.PathLike | None,
    text_column: str | None = None,
    label_column: str | None = None,
    unlabelled_path: str | os.PathLike | None = None,
    eval_path: str | os.PathLike | None = None,
) -> PreparedData:
    """Read and validate the uploads; hold out part of the labelled file when there is no evaluation file.

    What looks wrong in the data (repeated rows, a text with two labels, evaluation texts that are also
    training texts) goes into the page's notes, not only the server's log.
    """
    rows = read_upload(labelled_path, "labelled", MAX_LABELLED_ROWS)
    name = Path(labelled_path).name  # type: ignore[arg-type]
    detected_text, detected_label = detect_columns(rows)
    text_column = _check_column(rows, text_column or detected_text, "text", name)
    label_column = _check_column(rows, label_column or detected_label, "label", name)
    if text_column == label_column:
        raise DemoError(f"The text and label columns are both {text_column!r}; choose two different columns.")
    try:
        labelled = examples_from_rows(rows, name, text_column, label_column)
        require_two_classes(labelled)
        require_examples(labelled, 2)
    except DataError as err:
        raise DemoError(_friendly(err, Path(labelled_path))) from err  # type: ignore[arg-type]
    notes: list[str] = []
    if eval_path is not None:
        eval_rows = read_upload(eval_path, "evaluation", MAX_EVAL_ROWS)
        eval_name = Path(eval_path).name
        for column, role in ((text_column, "text"), (label_column, "label")):
            if column not in eval_rows[0]:
                raise DemoError(f"The evaluation file {eval_name} has no {role} column {column!r}; it needs the same "
                                f"columns as the labelled file (columns found: {', '.join(eval_rows[0])}).")
        try:
            evaluation = examples_from_rows(eval_rows, eval_name, text_column, label_column, labelled.label_names,
                                            label_reading="names")
            check_same_kind(labelled, evaluation)
        except DataError as err:
            raise DemoError(_friendly(err, Path(eval_path))) from err
        train, distinct = labelled, distinct_examples(evaluation)
        repeats = len(evaluation) - len(distinct)
        notes.append(f"Evaluating on {eval_name} ({len(distinct)} examples"
                     + (f"; {repeats} repeated row(s) are evaluated once)." if repeats else ")."))
        evaluation = distinct
        # a text under two labels is scored under both, and only one can be predicted (distinct: no repeats left)
        notes.extend(f"Check your data: {note}" for note in duplicate_notes(evaluation))
        overlap = test_in_train_note(train, evaluation)
        notes.extend([f"Check your data: {overlap}"] if overlap else [])
    else:
        train, evaluation = held_out_split(labelled)
        held = len(labelled) - len(train)
        notes.append(f"No evaluation file: {held} of the {len(labelled)} rows ({held / len(labelled):.0%}) are held out "
                     f"and not trained on; their {len(evaluation)} distinct texts (about {HELD_OUT_FRACTION:.0%} of "
                     "each label's, at least one) are evaluated once each.")
    unlabelled = None
    if unlabelled_path is not None:
        unl_rows = read_upload(unlabelled_path, "unlabelled", MAX_UNLABELLED_ROWS)
        unl_name = Path(unlabelled_path).name
        unl_text = text_column if text_column in unl_rows[0] else detect_columns(unl_rows)[0]
        try:
            unlabelled = examples_from_rows(unl_rows, unl_name, unl_text or "text", None, labelled.label_names)
        except DataError as err:
            raise DemoError(_friendly(err, Path(unlabelled_path))) from err
        # a semi-supervised method must not learn from the texts it is scored on (e.g. a whole corpus uploaded)
        left_out = set(excluded_pool_indices(unlabelled, evaluation.texts))
        unlabelled = unlabelled.subset(i for i in range(len(unlabelled)) if i not in left_out)
        # a file without the text column is read from the column that looks most like text: say which one
        guessed = "" if unl_text == text_column else f", column {unl_text!r} (it has no {text_column!r} column)"
        notes.append(f"{len(unlabelled)} unlabelled texts from {unl_name}{guessed} (used by semi-supervised methods)"
                     + (f"; {len(left_out)} more are evaluation texts and were left out, so that no method learns "
                        "from the texts it is scored on." if left_out else "."))
        unlabelled = unlabelled if len(unlabelled) else None
    notes.extend(f"Check your data: {note}" for note in duplicate_notes(train))  # copies held out are not trained on
    notes.extend(f"Check your data: {note}" for note in [balance_note(train)] if note)
    counts = ", ".join(f"{n} ({c})" for n, c in train.class_counts().items())
    notes.insert(0, f"Training on {len(train)} labelled examples: {counts}."
                 + (f" Each example is a pair of texts: {text_column!r} and {TEXT_PAIR_COLUMN!r}, read as the model's "
                    "two segments (SetFit takes single sentences only)." if train.pairs else ""))
    task = FewShotTask(Path(name).stem, labelled.label_names, train, seed=0, unlabelled=unlabelled)
    return PreparedData(task, evaluation, notes)


# --------------------------------------------------------------------------------------------------
# Sessions and runs


@dataclass
class MethodRun:
    """One method's state in a comparison, as the progress table shows it."""

    method: str
    status: str = "waiting"  # waiting, running, done, failed, cancelled
    message: str = ""
    fraction: float = 0.0
    result: TrainResult | None = None
    error: str | None = None


class Session:
    """One browser session: its temporary folder, its runs, and its cancel switch.

    ``running`` holds from :meth:`begin_run` to :meth:`end_run`, i.e. until the comparison's worker has
    stopped writing into the folder; a session closed meanwhile keeps its folder until then.
    """

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="session_", dir=root))
        self.cancel = threading.Event()
        self.runs: dict[str, MethodRun] = {}
        self.last_used = time.monotonic()
        self.running = False
        self.starting = False  # Compare was pressed and its inputs are being checked (before begin_run)
        self.cancelled_early = False  # Cancel was pressed while starting
        self.ahead = 0  # comparisons before this session's in the training queue (0: training, or none)
        self.closed = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Compare was pressed: refuse a second comparison, and let Cancel reach this one while its inputs are checked."""
        with self._lock:
            if self.running or self.starting:
                raise DemoError("A comparison is already running in this session; wait for it or cancel it.")
            self.starting, self.cancelled_early = True, False

    def start_failed(self) -> None:
        with self._lock:
            self.starting = False

    def request_cancel(self) -> str:
        """Cancel what this session runs, or the comparison whose inputs are being checked; says which (one decision
        under the lock: a comparison that starts meanwhile is either cancelled early or cancelled running)."""
        with self._lock:
            if self.starting and not self.running:  # it will start with every method skipped
                self.cancelled_early = True
                return "early"
            if not self.running:
                return "idle"
            self.cancel.set()
            return "waiting" if self.ahead else "running"

    def begin_run(self) -> threading.Event:
        """Start a comparison: forget the previous one and delete its files; returns the new cancel switch (already
        set when Cancel was pressed while the inputs were checked)."""
        with self._lock:
            if self.running:
                raise DemoError("A comparison is already running in this session; wait for it or cancel it.")
            if self.closed:
                raise DemoError("This session has ended; reload the page.")
            self.running, self.starting, self.cancel = True, False, threading.Event()
            if self.cancelled_early:
                self.cancel.set()
        self.runs = {}
        for child in self.dir.iterdir():
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        return self.cancel

    def end_run(self) -> None:
        """The comparison's worker has stopped: remove the folder if the session was closed meanwhile."""
        with self._lock:
            self.running = False
            closed = self.closed
        if closed:
            shutil.rmtree(self.dir, ignore_errors=True)

    def cleanup(self) -> None:
        """Close the session: cancel its comparison; remove the folder now, or in :meth:`end_run` if one runs."""
        with self._lock:
            self.closed = True
            self.cancel.set()
            if self.running:  # its worker may still write there (train_method re-creates missing folders)
                return
        shutil.rmtree(self.dir, ignore_errors=True)

    def finished(self) -> dict[str, TrainResult]:
        return {m: r.result for m, r in self.runs.items() if r.status == "done" and r.result is not None}


class SessionStore:
    """Sessions by Gradio session id; the least recently used ones are dropped beyond ``limit``."""

    def __init__(self, root: Path, limit: int = MAX_SESSIONS) -> None:
        self.root = root
        self.limit = limit
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Session:
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                idle = sorted((s.last_used, k) for k, s in self._sessions.items() if not s.running)
                for _, old in idle[: max(0, len(self._sessions) + 1 - self.limit)]:
                    self._sessions.pop(old).cleanup()
                session = self._sessions[key] = Session(self.root)
            session.last_used = time.monotonic()
            return session

    def drop(self, key: str) -> None:
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is not None:
            session.cleanup()

    def close(self) -> None:
        for key in list(self._sessions):
            self.drop(key)
        shutil.rmtree(self.root, ignore_errors=True)


class TrainingQueue:
    """Comparisons train one at a time, in arrival order; the others wait here, where Cancel reaches them.

    (Waiting in Gradio's queue instead, a comparison would be out of reach of the Cancel button: the
    session does not know about it until it starts.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tickets: list[object] = []

    def join(self) -> object:
        """A ticket at the end of the line."""
        ticket = object()
        with self._lock:
            self._tickets.append(ticket)
        return ticket

    def ahead(self, ticket: object) -> int:
        """How many comparisons train or wait before ``ticket`` (0: its turn)."""
        with self._lock:
            return self._tickets.index(ticket)

    def leave(self, ticket: object) -> None:
        with self._lock:
            self._tickets.remove(ticket)


TRAINING_QUEUE = TrainingQueue()


def compare(
    session: Session,
    prepared: PreparedData,
    methods: Sequence[str],
    model: str | None,
    preset: str,
    config: dict[str, Any] | None = None,
    seed: int = 0,
    poll_seconds: float = 0.5,
) -> Iterator[list[MethodRun]]:
    """Train ``methods`` one after the other in a worker thread; yield their states while they run.

    The comparison first waits for its turn in :data:`TRAINING_QUEUE` (``session.ahead`` says how many
    are before it). Training runs off the request thread, so the page keeps answering other events;
    setting ``session.cancel`` while waiting skips every method, and while training stops the method in
    training at its next step and skips the rest.
    """
    cancel = session.begin_run()
    runs = session.runs = {m: MethodRun(m) for m in methods}
    cache = SharedCache()

    def progress_of(run: MethodRun):
        def report(message: str, fraction: float) -> None:
            run.message, run.fraction = message, fraction
        return report

    def unused(method: str) -> str:
        """What the method did not use of what the visitor gave (the CLI notes the same), '' when it used all."""
        notes = []
        ignored = ignored_budget_settings(method, config)
        if ignored:
            notes.append(f"ignored {', '.join(ignored)} (reads {', '.join(sorted(budget_fields_read(method)))} only)")
        if prepared.task.unlabelled is not None and not METHODS[method].uses_unlabelled:
            notes.append("did not use the unlabelled texts")
        return "".join(f"; {note}" for note in notes)

    def work() -> None:
        task = replace(prepared.task, seed=seed)
        for method in methods:
            run = runs[method]
            if cancel.is_set():
                run.status, run.message = "cancelled", "not started"
                continue
            run.status, run.message = "running", "starting"
            try:
                run.result = train_method(
                    method, task, session.dir / method, model=model, seed=seed, preset=preset, config=config,
                    evaluation_data=prepared.evaluation, progress=progress_of(run), cancel=cancel, cache=cache,
                    save_steps=0, config_methods=methods,
                )
                run.status, run.fraction = "done", 1.0
                run.message = f"{run.result.train_seconds:.1f} s{unused(method)}"
            except RunCancelled:
                run.status, run.message = "cancelled", "stopped by the cancel button"
            except Exception as err:  # noqa: BLE001 - one failing method is a row in the table, not a crash
                log.exception("method %s failed", method)
                run.status, run.error = "failed", str(err) if isinstance(err, USER_ERRORS) else f"{type(err).__name__}: {err}"
                run.message = run.error

    worker = threading.Thread(target=work, name="hf_lowdata-demo-run", daemon=True)
    ticket = TRAINING_QUEUE.join()
    try:
        while (ahead := TRAINING_QUEUE.ahead(ticket)) and not cancel.is_set():
            session.ahead = ahead
            yield list(runs.values())
            cancel.wait(poll_seconds)
        session.ahead = 0
        worker.start()  # when cancelled while waiting, it marks every method cancelled and trains none
        while worker.is_alive():
            worker.join(poll_seconds)
            yield list(runs.values())
    finally:
        if worker.is_alive():  # the page went away mid-run: stop training
            cancel.set()
            worker.join()
        session.ahead = 0
        TRAINING_QUEUE.leave(ticket)
        session.end_run()
    yield list(runs.values())


# --------------------------------------------------------------------------------------------------
# Tables and plots


def progress_rows(runs: Sequence[MethodRun]) -> list[list[Any]]:
    return [[r.method, r.status, f"{r.fraction:.0%}", r.message] for r in runs]


def results_rows(results: dict[str, TrainResult]) -> list[list[Any]]:
    """One row per finished method: accuracy, macro-F1 (with intervals), time, parameters, size."""
    rows = []
    for method, result in results.items():
        ev = result.evaluation
        assert ev is not None
        rows.append([
            method, f"{ev.accuracy:.4f}", f"{ev.accuracy_ci[0]:.3f}-{ev.accuracy_ci[1]:.3f}", f"{ev.macro_f1:.4f}",
            f"{ev.macro_f1_ci[0]:.3f}-{ev.macro_f1_ci[1]:.3f}", round(result.train_seconds, 1),
            int(result.trainable_parameters), round(result.adapter_bytes / 1024, 1),
        ])
    return rows


RESULT_HEADERS = ["method", "accuracy", "accuracy 95% CI", "macro-F1", "macro-F1 95% CI", "training time (s)",
                  "trainable parameters", "saved size (KiB)"]  # the adapter, or the whole model (full, SMAT)
PROGRESS_HEADERS = ["method", "status", "progress", "detail"]


def score_chart(results: dict[str, TrainResult]):
    """Accuracy and macro-F1 per method, with 95% bootstrap intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(results)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(methods) + 2), 3.6))
    x = np.arange(len(methods))
    for offset, (name, value, interval) in zip((-0.2, 0.2), (("accuracy", "accuracy", "accuracy_ci"),
                                                             ("macro-F1", "macro_f1", "macro_f1_ci"))):
        means = [getattr(results[m].evaluation, value) for m in methods]
        spans = [getattr(results[m].evaluation, interval) for m in methods]
        err = [[m - lo for m, (lo, _) in zip(means, spans)], [hi - m for m, (_, hi) in zip(means, spans)]]
        ax.bar(x + offset, means, width=0.4, yerr=err, capsize=4, label=name)
    examples = next(iter(results.values())).evaluation.examples if results else 0
    ax.set_xticks(x, methods)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(f"{examples} evaluation examples\nerror bars: 95% bootstrap interval", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def confusion_chart(results: dict[str, TrainResult]):
    """One confusion matrix per method (rows: true label, columns: predicted label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(results)
    # each panel grows with the label count (a 13-class upload ran its label names and counts into each other in
    # a fixed 3.4-inch panel); predicted-label names stand upright, so that neighbours never overlap
    classes = max((len(results[m].evaluation.label_names) for m in methods), default=2)
    side = max(3.4, 1.8 + 0.3 * classes)
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(max(4.0, side * len(methods)), side), squeeze=False)
    for ax, method in zip(axes[0], methods):
        ev = results[method].evaluation
        ax.imshow(ev.confusion, cmap="Blues")
        ticks = range(len(ev.label_names))
        ax.set_xticks(ticks, ev.label_names, rotation=90, fontsize=8)
        ax.set_yticks(ticks, ev.label_names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(method, fontsize=10)
        top = max(max(row) for row in ev.confusion) or 1
        for i, row in enumerate(ev.confusion):
            for j, count in enumerate(row):
                ax.text(j, i, count, ha="center", va="center", color="white" if count > top / 2 else "black",
                        fontsize=10 if classes <= 8 else 7)
    fig.tight_layout()
    plt.close(fig)
    return fig


# --------------------------------------------------------------------------------------------------
# Using a trained classifier: predict, download, push


def predict_text(session: Session, method: str | None, text: str) -> dict[str, float]:
    results = session.finished()
    if not results:
        raise DemoError("Train at least one method first.")
    if method not in results:
        raise DemoError(f"Choose one of the trained methods: {', '.join(results)}.")
    if not text or not text.strip():
        raise DemoError("Type a sentence to classify.")
    classifier = results[method].classifier
    example: str | tuple[str, ...] = text.strip()
    if classifier.text_pairs:  # a pair model reads two texts, typed with || between them (the first || splits)
        example = tuple(part.strip() for part in text.split(PAIR_TYPING_SEPARATOR, 1))
        if len(example) != 2 or not all(example):
            raise DemoError(f"{method} was trained on pairs of texts: type both, separated by "
                            f"{PAIR_TYPING_SEPARATOR} (a man plays the guitar {PAIR_TYPING_SEPARATOR} someone makes "
                            "music).")
    proba = classifier.predict_proba([example])[0]
    return {name: float(p) for name, p in zip(classifier.label_names, proba)}


def zip_output(session: Session, method: str | None) -> Path:
    """A zip of the method's Hub files (PEFT adapters: config, safetensors weights, model card)."""
    from hf_lowdata.hub import hub_file_contents

    results = session.finished()
    if method not in results:
        raise DemoError(f"Choose one of the trained methods: {', '.join(results) or 'none yet'}.")
    folder = results[method].output_dir
    target = session.dir / "downloads" / f"{method}-{'adapter' if (folder / 'adapter_config.json').is_file() else 'model'}.zip"
    target.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in hub_file_contents(folder):  # as pushed: the adapter names the Hub base model
            if isinstance(content, bytes):
                archive.writestr(f"{method}/{name}", content)
            else:
                archive.write(content, f"{method}/{name}")
    return target


def push_output(session: Session, method: str | None, repo_id: str, token: str, private: bool) -> str:
    """Upload the method's output with hf_lowdata.hub; the token must come from the page."""
    from hf_lowdata.hub import push_adapter

    results = session.finished()
    if method not in results:
        raise DemoError(f"Choose one of the trained methods: {', '.join(results) or 'none yet'}.")
    if not repo_id or not repo_id.strip():
        raise DemoError("Enter a repository id such as your-name/support-tickets-lora.")
    if not token or not token.strip():
        # Never fall back to a token stored on the server: on a shared Space it is not the visitor's.
        raise DemoError("Paste a Hugging Face token with write access (huggingface.co/settings/tokens).")
    result = push_adapter(results[method].output_dir, repo_id.strip(), private=private, token=token.strip())
    deleted = f" Deleted the model files an earlier push left there: {', '.join(result.deleted)}." if result.deleted else ""
    return f"Uploaded {', '.join(result.files)} to {result.url or result.repo_id}.{deleted}"


# --------------------------------------------------------------------------------------------------
# The page


def unavailable_methods() -> dict[str, str]:
    """Registered methods that cannot run here, with why: a missing package, or a setting such as a data folder."""
    reasons = {m: METHODS[m].unavailable_reason() or METHODS[m].missing_requirements({}) for m in available_methods()}
    return {m: reason for m, reason in reasons.items() if reason}


def runnable_methods() -> list[str]:
    """Every registered method that can run here (optional packages installed, required settings given)."""
    unavailable = unavailable_methods()
    return [m for m in available_methods() if m not in unavailable]


def unavailable_note(unavailable: dict[str, str]) -> str:
    """The page's note on the methods it does not offer, one line per reason ('' when every method is offered)."""
    if not unavailable:
        return ""
    by_reason: dict[str, list[str]] = {}
    for method, reason in unavailable.items():
        by_reason.setdefault(reason, []).append(method)
    lines = [f"- {', '.join(f'**{m}**' for m in methods)}: {reason}." for reason, methods in by_reason.items()]
    return "\n".join(["Not offered here (fix, then restart the demo):", *lines])


def _message(err: Exception) -> str:
    """An error as a line for the page (never a traceback)."""
    if isinstance(err, USER_ERRORS):
        # the library's messages name the command line's form, --config "r=8"; the page takes r=8 in Settings
        return "**Error:** " + re.sub(r'--config "([^"]+)"', r"the setting \1", str(err))
    log.exception("unexpected error in the demo")
    return f"**Something went wrong:** {type(err).__name__}: {err}"


def parse_config(text: str) -> dict[str, Any]:
    """The Settings box's key=value pairs, without the settings a visitor may not give.

    Settings naming a folder or file (``feature_cache_dir``, ``source_dir``, ``cache_dir``, ...) would let
    a visitor make the server read or write anywhere; a learning rate of 0 or less trains nothing, and
    the untrained model would be scored as if it were trained.
    """
    from hf_lowdata.cli import parse_options

    try:
        config = parse_options(text.split()) if text and text.strip() else {}
    except argparse.ArgumentTypeError as err:
        raise DemoError(f"Settings: {err} (write key=value pairs separated by spaces, e.g. max_steps=10 r=4).") from err
    for key in config:
        if key.lower().endswith(PATH_SETTING_SUFFIXES):
            raise DemoError(f"Settings: {key} names a folder or file on the server, which this page does not accept "
                            f"(it keeps every file in the session's own temporary folder). Remove {key}=.")
    for key, limit in SETTING_LIMITS.items():
        value = config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
            raise DemoError(f"Settings: {key}={value} is above this page's limit of {limit:g} (one comparison holds the "
                            "training slot for every visitor). Give a smaller value, or train with hf-lowdata train.")
    rate = config.get("learning_rate")
    if isinstance(rate, (int, float)) and not rate > 0:
        raise DemoError(f"Settings: learning_rate={rate} trains nothing, and the untrained model would be scored as "
                        "if it were trained; give a learning rate above 0.")
    return config


def check_step_limit(methods: Sequence[str], preset: str, config: dict[str, Any], num_examples: int) -> None:
    """Refuse a run longer than the page's ``max_steps`` limit. The budgets' step cap never cuts training below
    ``min_epochs`` passes over the labelled set, so a large upload with a small ``batch_size`` could ask for more
    steps than any setting the page accepts."""
    limit = int(SETTING_LIMITS["max_steps"])
    for method in methods:
        budget, _ = resolve_budget(method, preset, config)
        steps = budget.steps(num_examples)
        if steps > limit:
            raise DemoError(f"{method} would train {steps} optimizer steps on {num_examples} labelled examples "
                            f"({budget.min_epochs:g} passes of batch {budget.batch_size}), above this page's limit of "
                            f"{limit} (one comparison holds the training slot for every visitor). Give a larger "
                            f"batch_size, or max_steps={limit} or less, or train with hf-lowdata train.")


def length_note(prepared: PreparedData, methods: Sequence[str], model: str | None, preset: str,
                config: dict[str, Any]) -> str | None:
    """The CLI's note on texts longer than the methods read (:func:`~hf_lowdata.workflow.truncation_note`), for the
    shortest ``max_length`` among ``methods``; ``None`` when nothing is cut."""
    if not methods:
        return None
    length = min(resolve_budget(method, preset, config)[0].max_length for method in methods)
    texts = {"labelled": prepared.task.labelled.texts,
             "evaluation": prepared.evaluation.texts if prepared.evaluation is not None else ()}
    return truncation_note(texts, model, length, setting="the setting max_length=N")


def describe_upload(
    path: str | None, text_column: str | None, label_column: str | None,
    unlabelled: str | None = None, evaluation: str | None = None,
) -> str:
    """What will be trained and evaluated on, or what is wrong with the uploads."""
    if path is None:
        return "Upload a labelled file, or load the example."
    try:
        return "\n\n".join(prepare_data(path, text_column, label_column, unlabelled, evaluation).notes)
    except Exception as err:  # noqa: BLE001 - shown in the page
        return _message(err)


def columns_of(
    path: str | None, unlabelled: str | None = None, evaluation: str | None = None,
) -> tuple[Any, Any, str]:
    """Dropdown updates (columns, detected text and label columns) and the summary for a new upload.

    The summary covers the unlabelled and evaluation files already uploaded, as Compare will use them.
    """
    if path is None:
        return gr.update(choices=[], value=None), gr.update(choices=[], value=None), describe_upload(None, None, None)
    try:
        rows = read_upload(path, "labelled", MAX_LABELLED_ROWS)
    except DemoError as err:
        return gr.update(choices=[], value=None), gr.update(choices=[], value=None), _message(err)
    columns = [str(c) for c in rows[0]]
    text, label = detect_columns(rows)
    return (gr.update(choices=columns, value=text), gr.update(choices=columns, value=label),
            describe_upload(path, text, label, unlabelled, evaluation))


def run_comparison(
    session: Session, labelled: str | None, text_column: str | None, label_column: str | None,
    unlabelled: str | None, evaluation: str | None, model: str | None, chosen: Sequence[str] | None,
    preset: str, config_text: str | None, seed: float | None,
) -> Iterator[tuple[Any, ...]]:
    """The Compare button: check the inputs, then stream (status, progress, results, charts, trained list)."""
    skip = gr.update()
    try:
        session.start()
    except DemoError as err:
        yield _message(err), skip, skip, skip, skip, skip
        return
    try:
        if not chosen:
            raise DemoError("Choose at least one method to compare.")
        if preset not in PRESETS:
            raise DemoError(f"Choose a budget preset: {', '.join(PRESETS)}.")
        config = parse_config(config_text or "")
        check_config([m for m in runnable_methods() if m in chosen], preset, config)  # typos fail here, not per method
        if seed is not None and not (float(seed).is_integer() and 0 <= seed < 2**32):
            raise DemoError(f"Seed must be a whole number from 0 to {2**32 - 1}, got {seed}.")
        model = (model or "").strip() or None
        require_text_model(model)  # an image model, or a folder without a tokenizer, fails here, not once per method
        prepared = prepare_data(labelled, text_column, label_column, unlabelled, evaluation)
        check_step_limit([m for m in runnable_methods() if m in chosen], preset, config, len(prepared.task.labelled))
        cut = length_note(prepared, [m for m in runnable_methods() if m in chosen], model, preset, config)
    except Exception as err:  # noqa: BLE001 - every input problem is a message in the page
        session.start_failed()
        yield _message(err), skip, skip, skip, skip, skip
        return
    ordered = [m for m in runnable_methods() if m in chosen]
    shown: list[str] | None = None  # None: the previous comparison's results are still on the page
    stream = compare(session, prepared, ordered, model, preset, config, int(seed or 0))
    try:
        first = next(stream)
    except Exception as err:  # noqa: BLE001 - e.g. the session was closed meanwhile; shown in the page
        session.start_failed()
        yield _message(err), skip, skip, skip, skip, skip
        return
    for runs in itertools.chain([first], stream):
        if session.ahead:
            status = (f"Waiting for its turn: {session.ahead} comparison(s) ahead, one trains at a time. "
                      "Cancel takes this one out of the line.")
        elif any(r.status in ("waiting", "running") for r in runs):
            status = "Training..."
        else:
            status = "Finished: " + ", ".join(f"{r.method} {r.status}" for r in runs) + "."
        if cut and not session.ahead:
            status += f" Note: {cut}"
        results = session.finished()
        outputs: list[Any] = [status, progress_rows(runs)]
        if shown is None and not results:  # a new comparison replaced the old outputs: clear their results
            shown = []
            outputs += [[], None, None, gr.update(choices=[], value=None)]
        elif results and list(results) != shown:  # redraw only when another method has finished
            shown = list(results)
            outputs += [results_rows(results), score_chart(results), confusion_chart(results),
                        gr.update(choices=shown, value=shown[-1])]
        else:
            outputs += [skip, skip, skip, skip]
        yield tuple(outputs)


CANCEL_MESSAGES = {
    "early": "Cancelled: this comparison will not start.",
    "idle": "Nothing is running.",
    "waiting": "Cancelled: this comparison was waiting for its turn and will not start.",
    "running": "Cancelling: the method in training stops after its current step; the rest are skipped.",
}


def cancel_run(session: Session) -> str:
    return CANCEL_MESSAGES[session.request_cancel()]


def try_sentence(session: Session, method: str | None, text: str) -> tuple[dict[str, float] | None, str]:
    try:
        return predict_text(session, method, text), ""
    except Exception as err:  # noqa: BLE001 - shown in the page
        return None, _message(err)


def download_output(session: Session, method: str | None) -> tuple[str | None, str]:
    try:
        return str(zip_output(session, method)), ""
    except Exception as err:  # noqa: BLE001 - shown in the page
        return None, _message(err)


def push_message(session: Session, method: str | None, repo_id: str, token: str, private: bool) -> str:
    try:
        return push_output(session, method, repo_id, token, private)
    except Exception as err:  # noqa: BLE001 - shown in the page
        return _message(err)


def build_app(store: SessionStore) -> gr.Blocks:
    """The page; every handler looks up the visitor's session and calls one of the functions above."""
    methods = runnable_methods()
    unavailable = unavailable_methods()
    method_lines = "\n".join(f"- **{m}**: {METHODS[m].summary}" + (f" ({METHODS[m].paper})" if METHODS[m].paper else "")
                             for m in methods)

    def session_of(request: gr.Request) -> Session:
        return store.get(request.session_hash or "local")

    def run(labelled, text_column, label_column, unlabelled, evaluation, model, chosen, preset, config_text, seed,
            request: gr.Request):
        yield from run_comparison(session_of(request), labelled, text_column, label_column, unlabelled, evaluation,
                                  model, chosen, preset, config_text, seed)

    def cancel(request: gr.Request) -> str:
        return cancel_run(session_of(request))

    def try_it(method, text, request: gr.Request):
        return try_sentence(session_of(request), method, text)

    def download(method, request: gr.Request):
        return download_output(session_of(request), method)

    def push(method, repo_id, token, private, request: gr.Request) -> str:
        return push_message(session_of(request), method, repo_id, token, private)

    def forget(request: gr.Request) -> None:
        store.drop(request.session_hash or "local")

    with gr.Blocks(title="hf_lowdata: few-shot method comparison", delete_cache=(600, 3600)) as demo:
        gr.Markdown(
            "# Which few-shot method wins on your data?\n"
            "Upload a few labelled sentences per class (CSV, TSV, JSONL or a JSON list), pick methods, and compare them: "
            "accuracy, macro-F1, training time, trainable parameters and the size of what is saved. Pairs of texts "
            "(premise / hypothesis, question / answer): add a `text_pair` column. Everything runs here, offline, with [hf_lowdata](https://github.com/hf-lowdata/hf_lowdata)."
        )
        with gr.Row():
            with gr.Column(scale=3):
                labelled = gr.File(label=f"Labelled file ({', '.join(FILE_TYPES)})", file_types=FILE_TYPES,
                                   elem_id="labelled-file")
                example = gr.Button("Load the example (support tickets: billing / delivery / technical)",
                                    elem_id="load-example", size="sm")
                with gr.Row():
                    text_column = gr.Dropdown(label="Text column", choices=[], elem_id="text-column")
                    label_column = gr.Dropdown(label="Label column", choices=[], elem_id="label-column")
                summary = gr.Markdown("Upload a labelled file, or load the example.", elem_id="upload-summary")
                with gr.Accordion("Optional: unlabelled and evaluation files", open=False):
                    unlabelled = gr.File(label="Unlabelled texts (same text columns)", file_types=FILE_TYPES)
                    evaluation = gr.File(label=f"Evaluation file (without one, {HELD_OUT_FRACTION:.0%} of each label is "
                                               "held out)", file_types=FILE_TYPES)
            with gr.Column(scale=2):
                model = gr.Textbox(label="Base model", value=DEFAULT_MODEL, elem_id="base-model",
                                   info="the packaged default, or the path of a local model folder (never downloaded)")
                chosen = gr.CheckboxGroup(methods, value=[m for m in DEFAULT_METHODS if m in methods],
                                          label="Methods to compare", elem_id="methods")
                gr.Markdown(unavailable_note(unavailable), elem_id="unavailable-methods", visible=bool(unavailable))
                preset = gr.Radio(sorted(PRESETS), value="quick", label="Budget preset", elem_id="preset",
                                  info="quick: half the training steps of standard")
                with gr.Accordion("Advanced", open=False):
                    config = gr.Textbox(label="Settings (key=value, e.g. max_steps=10 r=4)", elem_id="config")
                    seed = gr.Number(label="Seed", value=0, precision=0)
                with gr.Row():
                    run_button = gr.Button("Compare", variant="primary", elem_id="run")
                    cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
        with gr.Accordion("About the methods", open=False):
            gr.Markdown(method_lines)
        status = gr.Markdown(elem_id="status")
        progress = gr.Dataframe(headers=PROGRESS_HEADERS, label="Progress", interactive=False, elem_id="progress")
        results = gr.Dataframe(headers=RESULT_HEADERS, label="Results", interactive=False, elem_id="results")
        gr.Markdown(ERROR_BAR_NOTE)
        with gr.Row():
            chart = gr.Plot(label="Accuracy and macro-F1", elem_id="score-chart")
            confusion = gr.Plot(label="Confusion matrices", elem_id="confusion-chart")
        with gr.Row():
            with gr.Column():
                gr.Markdown("### Try it")
                trained = gr.Dropdown(label="Trained method", choices=[], elem_id="trained-method")
                sentence = gr.Textbox(label="A new sentence (a pair: first text || second text)", elem_id="sentence")
                predict_button = gr.Button("Classify", elem_id="classify")
                prediction = gr.Label(label="Prediction", elem_id="prediction")
                try_message = gr.Markdown(elem_id="try-message")
            with gr.Column():
                gr.Markdown("### Download or share the trained adapter")
                download_button = gr.Button("Download (zip: safetensors + model card)", elem_id="download")
                archive = gr.File(label="Download", interactive=False)
                repo_id = gr.Textbox(label="Hub repository id", placeholder="your-name/support-tickets-lora")
                token = gr.Textbox(label="Hugging Face token (write access)", type="password")
                private = gr.Checkbox(label="Private repository", value=True)
                push_button = gr.Button("Push to the Hub", elem_id="push")
                push_status = gr.Markdown(
                    "Pushing is the only step that needs a network; without one you get a message, nothing else.",
                    elem_id="push-message")

        labelled.change(columns_of, [labelled, unlabelled, evaluation], [text_column, label_column, summary])
        example.click(lambda: str(EXAMPLE_FILE), None, labelled)
        upload_inputs = [labelled, text_column, label_column, unlabelled, evaluation]
        for component in (text_column, label_column):
            component.input(describe_upload, upload_inputs, summary)
        for component in (unlabelled, evaluation):
            component.change(describe_upload, upload_inputs, summary)
        run_button.click(
            run, [labelled, text_column, label_column, unlabelled, evaluation, model, chosen, preset, config, seed],
            # one comparison trains at a time, but the others wait in TRAINING_QUEUE, where Cancel reaches them
            [status, progress, results, chart, confusion, trained], concurrency_limit=MAX_SESSIONS,
            concurrency_id="training",
        )
        cancel_button.click(cancel, None, status)
        predict_button.click(try_it, [trained, sentence], [prediction, try_message])
        sentence.submit(try_it, [trained, sentence], [prediction, try_message])
        download_button.click(download, trained, [archive, try_message])
        push_button.click(push, [trained, repo_id, token, private], push_status)
        demo.unload(forget)
    return demo


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (``kill``, a container stop) end the server through its KeyboardInterrupt path, so the
    atexit clean-up removes the temporary files. A process started in the background by a non-interactive shell
    inherits SIGINT ignored, and SIGTERM ends Python without atexit: either way the uploads stayed on disk."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="hf_lowdata demo: compare few-shot methods on your data.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hide_upstream_deprecation_noise()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    store = SessionStore(Path(tempfile.mkdtemp(prefix="hf_lowdata_demo_")))
    atexit.register(store.close)
    stop_on_signals()
    log.info("temporary files in %s (removed per session when its page closes, and at exit)", store.root)
    demo = build_app(store)
    demo.queue(default_concurrency_limit=4, max_size=32)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                max_file_size=MAX_UPLOAD_BYTES, allowed_paths=[str(EXAMPLE_FILE.parent)])


if __name__ == "__main__":
    main()
