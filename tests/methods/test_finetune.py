"""LoRA's target modules on the architectures users bring (methods/finetune.py), also for SparseExpert's
test-time LoRA."""

from __future__ import annotations

import pytest
import torch
from transformers import AlbertConfig, AlbertModel, DistilBertConfig, DistilBertModel

from hf_lowdata.methods import MethodConfigError, RunContext, get_method
from hf_lowdata.methods.finetune import lora_target_modules


def _distilbert() -> torch.nn.Module:
    return DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32))


def _albert(vocab_size: int = 50) -> torch.nn.Module:
    return AlbertModel(AlbertConfig(vocab_size=vocab_size, embedding_size=8, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32))


def test_lora_targets_come_from_peft_then_our_table_then_a_clear_error():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32))
    assert lora_target_modules(bert) is None  # PEFT's own default (query, value)
    assert lora_target_modules(_distilbert()) == ["q_lin", "v_lin"]  # PEFT has none: it failed unexpectedly
    assert lora_target_modules(_albert()) == ["query", "value"]  # neither table: the model's own query/value
    odd = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(MethodConfigError, match=r"no default target_modules for model type None.*"
                                                r"target_modules=\['0', '1'\].*named \['0', '1'\]"):
        lora_target_modules(odd)
    assert lora_target_modules(_albert(), "q_lin, v_lin") == ["q_lin", "v_lin"]  # was read as one regex
    assert lora_target_modules(_albert(), "query") == ["query"] == lora_target_modules(_albert(), "query,")
    assert lora_target_modules(_albert(), r".*\.(query|value)") == r".*\.(query|value)"  # a regex stays one
    assert lora_target_modules(_albert(), ["query"]) == ["query"]


def test_sparse_expert_checks_its_test_time_lora_before_meta_training(tmp_path, monkeypatch, tiny_bert_dir):
    """It crashed only after meta-training (about 30 minutes on a real model) on a type without targets."""
    class NoAttention(torch.nn.Module):  # a transformers-like model with no query/value layers
        def __init__(self) -> None:
            super().__init__()
            self.config = AlbertConfig()
            self.config.model_type = "custom"
            self.mix = torch.nn.Linear(4, 4)

    from hf_lowdata.data import DatasetSplits, TextDataset, make_few_shot_task
    from hf_lowdata.methods import sparse_expert
    from tests.helpers import toy_sentences

    monkeypatch.setattr(sparse_expert, "load_encoder", lambda *a, **k: NoAttention())
    monkeypatch.setattr(sparse_expert, "meta_train", lambda *a, **k: pytest.fail("meta-training started"))
    rows = toy_sentences(16, 0)
    pool = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")
    task = make_few_shot_task(DatasetSplits("toy", ("neg", "pos"), pool), seed=0, k=4)
    with pytest.raises(MethodConfigError, match="model type 'custom'"):
        get_method("sparse_expert").fit(task, RunContext(model=tiny_bert_dir, seed=0, work_dir=tmp_path, quiet=True))
