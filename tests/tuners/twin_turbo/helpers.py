"""Builders shared by the TwinTurbo tests (tiny BERT, small projectors)."""

from __future__ import annotations

from peft import TaskType, get_peft_model

from hf_lowdata import TwinTurboConfig
from hf_lowdata.data import TextDataset
from hf_lowdata.models import load_for_classification, load_tokenizer
from tests.helpers import toy_sentences

SMALL = dict(projector_dim=32, projector_heads=4, projector_layers=2, critic_dim=16, discriminator_hidden=16)


def small_config(**overrides) -> TwinTurboConfig:
    return TwinTurboConfig(**{"task_type": TaskType.SEQ_CLS, **SMALL, **overrides})


def tiny_model(folder, **overrides):
    base = load_for_classification(folder, 2, ["neg", "pos"], seed=0)
    return get_peft_model(base, small_config(**overrides))


def toy_text(n: int, seed: int, labelled: bool = True) -> TextDataset:
    rows = toy_sentences(n, seed)
    labels = tuple(r["label"] for r in rows) if labelled else None
    return TextDataset(tuple(r["text"] for r in rows), labels, ("neg", "pos"), "toy")


def tokenizer(folder):
    return load_tokenizer(folder)
