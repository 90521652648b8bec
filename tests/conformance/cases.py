"""Rows of the PEFT conformance matrix: one per method (and variant). Method issues add rows here.

Each row says how to build the method's config for each model kind and which behaviours to expect
(mergeable or a clear merge error, identity at initialisation, several active adapters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from peft import PeftConfig


@dataclass(frozen=True)
class Case:
    name: str
    make_config: Callable[[str], PeftConfig]
    mergeable: bool = True
    merge_error: str = ""  # regex of the clear error a non-mergeable method raises
    identity_at_init: bool = True
    multiple_active: bool = False
    kinds: tuple[str, ...] = ("mlp", "tiny_bert", "minilm")
    hf_only_task_type: bool = True  # SEQ_CLS on transformers models, plain on the MLP


def _lora(kind: str) -> PeftConfig:
    from peft import LoraConfig, TaskType

    if kind == "mlp":
        return LoraConfig(target_modules=["lin0", "lin1"], modules_to_save=["classifier"])
    return LoraConfig(task_type=TaskType.SEQ_CLS)


CASES: list[Case] = [
    Case("lora", _lora, multiple_active=True),
]
