"""The shared weight-adapter tuner: a classifier's head that would be neither trained nor saved is warned about, and
layers a parent reads without calling them are refused."""

from __future__ import annotations

import warnings

import pytest
import torch
from peft import PeftModel, TaskType, get_peft_model

from hf_lowdata import FTPConfig, MixupBLOConfig
from hf_lowdata.models import load_for_classification

HEAD_WARNING = "neither trained nor saved"


def _warnings(make) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    found = [w for w in caught if HEAD_WARNING in str(w.message)]
    assert all(w.filename == __file__ for w in found), [w.filename for w in found]  # points at the caller's line
    return [str(w.message) for w in found]


@pytest.mark.parametrize("config_cls", [FTPConfig, MixupBLOConfig])
def test_a_head_left_frozen_and_unsaved_is_warned_about(tiny_bert_dir, tmp_path, config_cls):
    def base():
        return load_for_classification(tiny_bert_dir, 3, seed=0)

    [message] = _warnings(lambda: get_peft_model(base(), config_cls()))
    assert "modules_to_save=['classifier']" in message and "task_type='SEQ_CLS'" in message
    # the documented ways out: PEFT trains and saves the head, or the user keeps it on purpose
    assert not _warnings(lambda: get_peft_model(base(), config_cls(task_type=TaskType.SEQ_CLS)))
    assert not _warnings(lambda: get_peft_model(base(), config_cls(modules_to_save=["classifier"])))
    assert not _warnings(lambda: get_peft_model(base(), config_cls(modules_to_save=[])))
    # still frozen and unsaved: another module saved, or a task type that does not own the head
    assert _warnings(lambda: get_peft_model(base(), config_cls(modules_to_save=["LayerNorm"])))
    assert _warnings(lambda: get_peft_model(base(), config_cls(task_type=TaskType.FEATURE_EXTRACTION)))
    trained = get_peft_model(base(), config_cls(task_type=TaskType.SEQ_CLS))
    trained.save_pretrained(tmp_path)
    assert not _warnings(lambda: PeftModel.from_pretrained(base(), tmp_path))  # loading for inference: no training


def test_sparse_expert_classifies_with_prototypes_and_does_not_warn(tiny_bert_dir):
    from hf_lowdata import SparseExpertConfig

    base = load_for_classification(tiny_bert_dir, 3, seed=0)
    assert not _warnings(lambda: get_peft_model(base, SparseExpertConfig(target_modules=["query", "value"])))


class _OneLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 5)

    def forward(self, x):
        return self.proj(x)


@pytest.mark.parametrize("outer", ["ftp_full", "ftp_lora", "mixup_full", "mixup_lora"])
def test_an_adapter_stacked_on_another_adds_to_it(outer):
    """An adapter injected on a layer another adapter already wraps (transformers' add_adapter of a second
    type, inject_adapter_in_model twice): FTP's fused path and MixupBLO read the innermost weight, so the
    inner LoRA was silently dropped. Both deltas must reach the output, as one merged weight would."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    model = _OneLayer()
    w0, b0 = model.proj.weight.detach().clone(), model.proj.bias.detach().clone()
    inject_adapter_in_model(LoraConfig(target_modules=["proj"], r=2, init_lora_weights=False), model, "inner")
    config = {
        "ftp_full": FTPConfig(target_modules=["proj"]),
        "ftp_lora": FTPConfig(target_modules=["proj"], delta="lora", r=2),
        "mixup_full": MixupBLOConfig(target_modules=["proj"], init_std=0.1),
        "mixup_lora": MixupBLOConfig(target_modules=["proj"], task_weight="lora", r=2, init_std=0.1),
    }[outer]
    inject_adapter_in_model(config, model, "outer")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "outer" in name and "lora_A" not in name:  # move the outer adapter off its identity start
                p.add_(0.1 * torch.randn_like(p))
    outer_layer, inner_layer = model.proj, model.proj.base_layer
    assert type(inner_layer).__name__ == "Linear" and inner_layer.base_layer.weight is not None
    inner_delta = inner_layer.get_delta_weight("inner")
    outer_delta = outer_layer.get_delta_weight("outer")
    assert inner_delta.abs().sum() > 0 and outer_delta.abs().sum() > 0
    bias = b0 + (outer_layer.mixup_blo_bias["outer"] if hasattr(outer_layer, "mixup_blo_bias")
                 and "outer" in outer_layer.mixup_blo_bias else 0)
    x = torch.randn(3, 6)
    expected = torch.nn.functional.linear(x, w0 + inner_delta + outer_delta, bias)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    if outer.startswith("ftp"):  # additive deltas merge in any order
        outer_layer.merge()
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    else:  # MixupBLO mixes with the innermost weight, which a merge below or its own would change: refused
        with pytest.raises(ValueError, match="MixupBLO cannot merge on a layer another adapter"):
            outer_layer.merge()
        inner_layer.merge()
        with pytest.raises(ValueError, match="MixupBLO cannot run on a layer another adapter .* has merged"):
            model(x)


@pytest.mark.parametrize("config", [FTPConfig(target_modules=["out_proj", "linear1"]),
                                    MixupBLOConfig(target_modules=["out_proj", "linear1"])])
def test_the_output_projection_of_torch_multihead_attention_is_refused(config):
    """nn.MultiheadAttention reads out_proj.weight without calling out_proj: the adapter would train, change the
    merged model and do nothing unmerged."""
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    with pytest.raises(ValueError, match="nn.MultiheadAttention cannot take this adapter.*target_modules"):
        get_peft_model(layer, config)
