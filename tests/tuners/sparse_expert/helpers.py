"""Small models and episode data shared by the SparseExpert tests."""

from __future__ import annotations

import torch
from peft import get_peft_model

from hf_lowdata.data import TextDataset
from hf_lowdata.models import load_encoder, load_tokenizer
from hf_lowdata.training.episodes import EpisodeDataset, TextSource
from tests.helpers import toy_sentences


def toy_text(n: int, seed: int) -> TextDataset:
    rows = toy_sentences(n, seed)
    return TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), f"toy{seed}")


def episodes(tiny_bert_dir, num: int, seed: int = 0, **kwargs) -> EpisodeDataset:
    tok = load_tokenizer(tiny_bert_dir)
    sources = [TextSource(toy_text(60, 0), tok, name="a"), TextSource(toy_text(60, 1), tok, name="b")]
    shape = {"shot": (1, 2), "query_per_class": 2, **kwargs}
    return EpisodeDataset(sources, num, seed=seed, **shape)


def smat_encoder(tiny_bert_dir, seed: int = 0, **config):
    """get_peft_model(tiny BERT encoder, SparseExpertConfig(**config)), deterministic."""
    from hf_lowdata import SparseExpertConfig

    torch.manual_seed(seed)
    return get_peft_model(load_encoder(tiny_bert_dir), SparseExpertConfig(**config))
