"""Every tuner on the classification models users bring besides BERT: RoBERTa-style heads
(a module without a weight), DistilBERT (no ``encoder``), decoder classifiers (Llama, GPT-2:
a per-token ``score`` head)."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from transformers import RobertaConfig, RobertaForSequenceClassification

import hf_lowdata

IDS = torch.tensor([[5, 6, 7, 8, 9], [9, 10, 11, 1, 1]])
MASK = (IDS != 1).long()


def _roberta() -> torch.nn.Module:
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=37, num_labels=3, pad_token_id=1)
    return RobertaForSequenceClassification(config).eval()


def _perturb(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn(p.shape, generator=gen))


WEIGHT_TUNERS = {
    "ftp": lambda: hf_lowdata.FTPConfig(task_type="SEQ_CLS"),
    "ftp_lora": lambda: hf_lowdata.FTPConfig(task_type="SEQ_CLS", delta="lora", r=2),
    "mixup_blo": lambda: hf_lowdata.MixupBLOConfig(task_type="SEQ_CLS"),
    "sparse_expert": lambda: hf_lowdata.SparseExpertConfig(task_type="SEQ_CLS", num_experts=2),
}


@pytest.mark.parametrize("name", WEIGHT_TUNERS)
def test_merge_and_unload_on_a_roberta_head_without_weight(name):
    # the head is a modules_to_save copy of RobertaClassificationHead, a module with no .weight:
    # putting it back crashed in PEFT's default _replace_module (AttributeError)
    base = _roberta()
    with torch.no_grad():
        reference = base(input_ids=IDS, attention_mask=MASK).logits
    model = get_peft_model(base, WEIGHT_TUNERS[name]()).eval()
    _perturb(model)
    with torch.no_grad():
        adapted = model(input_ids=IDS, attention_mask=MASK).logits
        assert not torch.allclose(adapted, reference)
        merged = model.merge_and_unload()
        assert type(merged.classifier).__name__ == "RobertaClassificationHead"
        torch.testing.assert_close(merged(input_ids=IDS, attention_mask=MASK).logits, adapted, atol=1e-5, rtol=0)
    unloaded = get_peft_model(_roberta(), WEIGHT_TUNERS[name]()).unload()
    with torch.no_grad():
        torch.testing.assert_close(unloaded(input_ids=IDS, attention_mask=MASK).logits, reference)


def _decoder(kind: str) -> torch.nn.Module:
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    torch.manual_seed(0)
    if kind == "llama":
        return LlamaForSequenceClassification(LlamaConfig(
            vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, num_labels=3, pad_token_id=1)).eval()
    return GPT2ForSequenceClassification(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, num_labels=3,
                                                    pad_token_id=1)).eval()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_twin_turbo_on_decoder_classifiers_with_a_per_token_score_head(kind):
    # these models apply ``score`` to every token and then pick the last real token: TwinTurbo's
    # sequence logits must survive that (they were indexed as if per token: IndexError / wrong shape)
    config = hf_lowdata.TwinTurboConfig(task_type="SEQ_CLS", projector_dim=16, projector_heads=2)
    model = get_peft_model(_decoder(kind), config).eval()
    with torch.no_grad():
        logits = model(input_ids=IDS, attention_mask=MASK).logits
        assert logits.shape == (2, 3)
        # padding invariance: the second sentence alone, unpadded, gives the same logits
        alone = model(input_ids=IDS[1:, :3], attention_mask=MASK[1:, :3]).logits
    torch.testing.assert_close(alone, logits[1:], atol=1e-5, rtol=0)
    loss = model(input_ids=IDS, attention_mask=MASK, labels=torch.tensor([0, 2])).loss
    loss.backward()
    assert torch.isfinite(loss) and all(
        p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "twin_turbo_head" in n)


def _encoder(kind: str) -> torch.nn.Module:
    import transformers

    config_class, model_class = {
        "deberta": ("DebertaConfig", "DebertaForSequenceClassification"),
        "deberta-v2": ("DebertaV2Config", "DebertaV2ForSequenceClassification"),
    }[kind]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                  num_attention_heads=2, intermediate_size=37, num_labels=3,
                                                  max_position_embeddings=64)
    return getattr(transformers, model_class)(config).eval()


BLOCK_WEIGHT_TUNERS = {name: WEIGHT_TUNERS[name] for name in ("ftp", "mixup_blo")}


@pytest.mark.parametrize("kind", ["deberta", "deberta-v2", "llama"])
@pytest.mark.parametrize("name", BLOCK_WEIGHT_TUNERS)
def test_default_targets_cover_every_block_linear_of_deberta_and_llama(name, kind):
    """Every attention and MLP Linear of every block is adapted by default; the head never is."""
    base = _decoder(kind) if kind == "llama" else _encoder(kind)
    blocks = {n for n, m in base.named_modules()
              if isinstance(m, torch.nn.Linear) and ".layer" in n and not n.endswith(("classifier", "score"))}
    model = get_peft_model(base, BLOCK_WEIGHT_TUNERS[name]())
    adapted = {n.removeprefix("base_model.model.") for n, m in model.named_modules()
               if type(m).__module__.startswith("hf_lowdata.tuners") and isinstance(getattr(m, "base_layer", None),
                                                                                   torch.nn.Linear)}
    assert blocks and blocks <= adapted
    assert not any(n.endswith(("classifier", "score")) for n in adapted)


@pytest.mark.parametrize("name", BLOCK_WEIGHT_TUNERS)
def test_a_model_type_without_defaults_names_the_ones_that_have_them(name):
    config = BLOCK_WEIGHT_TUNERS[name]()
    # GPT-2's weight layers are transformers' Conv1D: the message must not suggest names it lacks
    with pytest.raises(ValueError, match=rf"{type(config).__name__} has no default target_modules for model type "
                                         r"'gpt2' \(defaults exist for .*'bert'.*\)\. This model has no nn.Linear.* "
                                         r"layer outside its head .*Conv1D, as in GPT-2.*LoRA or TwinTurbo"):
        get_peft_model(_decoder("gpt2"), config)


ALL_TUNERS = {**WEIGHT_TUNERS, "twin_turbo": lambda: hf_lowdata.TwinTurboConfig(task_type="SEQ_CLS", projector_dim=16,
                                                                              projector_heads=2)}


@pytest.mark.parametrize("name", ALL_TUNERS)
def test_one_config_object_configures_models_of_other_architectures(name):
    """Defaults (target names, sizes) resolve into the adapter's own config, never the caller's object:
    reusing it on a Llama after a RoBERTa (heads 'score' vs 'classifier') must work, and each adapter
    keeps its own resolved config."""
    config = ALL_TUNERS[name]()
    first = get_peft_model(_roberta(), config)
    assert config.target_modules is None
    second = get_peft_model(_decoder("llama"), config)
    assert config.target_modules is None
    resolved = first.peft_config["default"].target_modules, second.peft_config["default"].target_modules
    assert resolved[0] is not None and resolved[1] is not None and resolved[0] != resolved[1]
    with torch.no_grad():
        assert second(input_ids=IDS, attention_mask=MASK).logits.shape == (2, 3)
