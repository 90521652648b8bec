"""Rows of the PEFT conformance matrix: one per method (and variant).

The LoRA reference row lives here; each method adds its rows in its own module
``tests/conformance/cases_<method>.py`` that defines ``CASES: list[Case]`` (collected below), so
method work never edits a shared list. Each row says how to build the method's config for each
model kind and which behaviours to expect (mergeable or a clear merge error, identity at
initialisation, several active adapters).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peft import PeftConfig


@dataclass(frozen=True)
class Case:
    """One row: ``make_config(kind)`` builds the config for model kind ``mlp``/``tiny_bert``/``minilm``.

    Args:
        name: row id (method or method-variant name).
        make_config: config factory per model kind.
        mergeable: merge / unmerge / merge_and_unload are expected to work; if False they must raise
            an error matching ``merge_error``.
        merge_error: regex of the clear error of a method that cannot merge.
        identity_at_init: the adapted model equals the base model before training.
        multiple_active: several adapters can be active at once.
        kinds: model kinds the row runs on.
    """

    name: str
    make_config: Callable[[str], PeftConfig]
    mergeable: bool = True
    merge_error: str = ""
    identity_at_init: bool = True
    multiple_active: bool = False
    kinds: tuple[str, ...] = ("mlp", "tiny_bert", "minilm")


def _lora(kind: str) -> PeftConfig:
    from peft import LoraConfig, TaskType

    if kind == "mlp":
        return LoraConfig(target_modules=["lin0", "lin1"], modules_to_save=["classifier"])
    return LoraConfig(task_type=TaskType.SEQ_CLS)


def _collect() -> list[Case]:
    cases = [Case("lora", _lora, multiple_active=True)]
    for path in sorted(Path(__file__).parent.glob("cases_*.py")):
        cases.extend(importlib.import_module(f"tests.conformance.{path.stem}").CASES)
    return cases


CASES: list[Case] = _collect()
