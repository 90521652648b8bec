"""Saved outputs that several test modules share: trained once per test process on the default model.

Budgets are tiny (two optimizer steps, short texts): these tests check saving, loading, cards and
uploads, not accuracy.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from hf_lowdata.data import FewShotTask, TextDataset
from hf_lowdata.methods import METHODS
from tests.helpers import SHARED_DATA, toy_sentences, write_jsonl

LABELS = ("negative", "positive")
#: ``--config`` values that keep training to a couple of steps (SetFit counts pair iterations instead).
TINY_CONFIG = {"max_steps": 2, "batch_size": 4, "max_length": 32}


def tiny_config(method: str) -> dict:
    config = dict(TINY_CONFIG)
    if method == "setfit":
        config["num_iterations"] = 1
    if method.startswith("mixup_blo"):  # one search fold instead of five
        config["folds"] = 1
    if getattr(METHODS.get(method), "meta_tune", False):  # meta-training: one step on one shared source dataset
        config.update(source_dir=str(SHARED_DATA), sources="mr", meta_steps=1, meta_batch=1,
                      cache_dir=str(_ROOT / "meta_training"))
    return config


def tiny_args(method: str) -> list[str]:
    return [f"{k}={v}" for k, v in tiny_config(method).items()]

_ROOT = Path(tempfile.mkdtemp(prefix="hf_lowdata_test_outputs_"))
atexit.register(shutil.rmtree, _ROOT, True)


def runnable_methods() -> list[str]:
    """Every registered method whose optional packages are installed (new methods are picked up)."""
    return sorted(name for name, cls in METHODS.items() if cls.unavailable_reason() is None)


def _dataset(rows: list[dict], source: str) -> TextDataset:
    return TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), LABELS, source)


def toy_task() -> FewShotTask:
    unlabelled = _dataset(toy_sentences(16, 3), "toy-unlabelled").without_labels()
    return FewShotTask("toy", LABELS, _dataset(toy_sentences(24, 0), "toy-train.jsonl"), seed=0, unlabelled=unlabelled)


def toy_eval() -> TextDataset:
    return _dataset(toy_sentences(16, 7), "toy-eval.jsonl")


def toy_files(folder: Path) -> dict[str, Path]:
    """The toy data as files with label names (train, eval, unlabelled)."""
    folder.mkdir(parents=True, exist_ok=True)
    named = [{"text": r["text"], "label": LABELS[r["label"]]} for r in toy_sentences(24, 0)]
    evaluation = [{"text": r["text"], "label": LABELS[r["label"]]} for r in toy_sentences(16, 7)]
    return {
        "train": write_jsonl(folder / "train.jsonl", named),
        "eval": write_jsonl(folder / "eval.jsonl", evaluation),
        "unlabelled": write_jsonl(folder / "unlabelled.jsonl", [{"text": r["text"]} for r in toy_sentences(16, 3)]),
    }


@functools.cache
def trained(method: str, model: str | None = None):
    """``train_method`` output of ``method`` on the toy task (default model unless ``model``), evaluated."""
    from hf_lowdata.workflow import train_method

    out = _ROOT / f"{method}-{Path(model).name if model else 'default'}"
    return train_method(method, toy_task(), out, model=model, config=tiny_config(method), evaluation_data=toy_eval())
