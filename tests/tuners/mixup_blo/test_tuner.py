"""MixupBLO tuner: the mixing formula, identity at initialisation, clamping, merging, bad configs."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel, TaskType, get_peft_model
from torch import nn

from hf_lowdata.models import load_for_classification, load_tokenizer
from hf_lowdata.tuners.mixup_blo import Linear, MixupBLOConfig, MixupBLOLayer
from tests.conformance.models import ToyMLP


def _inputs(folder):
    tok = load_tokenizer(folder)
    return dict(tok(["a fine film", "dull and far too long"], padding=True, return_tensors="pt"))


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _mixed_linear(task_weight="full", seed=0, **kw) -> Linear:
    torch.manual_seed(seed)
    base = nn.Linear(5, 4).double()
    layer = Linear(base, "default", MixupBLOConfig(task_weight=task_weight, target_modules=["x"], **kw))
    return layer.double()


def _set_random_adapter(layer: Linear, seed: int = 1, spread: float = 0.6) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in MixupBLOLayer.adapter_layer_names:
            for p in getattr(layer, name).values():
                if name in MixupBLOLayer.mixing_names:
                    p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) * spread + (1 - spread))
                else:
                    p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)


@pytest.mark.parametrize("task_weight", ["full", "lora"])
def test_forward_is_the_authors_mixing_formula(task_weight):
    layer = _mixed_linear(task_weight)
    _set_random_adapter(layer)
    w0, b0 = layer.base_layer.weight, layer.base_layer.bias
    a, b = layer.mixup_blo_mix_out["default"], layer.mixup_blo_mix_in["default"]
    if task_weight == "full":
        w = layer.mixup_blo_weight["default"]
    else:
        w = w0 + layer.mixup_blo_scaling["default"] * layer.mixup_blo_lora_B["default"] @ layer.mixup_blo_lora_A["default"]
    expected_w = (a @ b) * w + ((1 - a) @ (1 - b)) * w0  # W_eff = (a b^T) * W + ((1 - a)(1 - b)^T) * W0
    x = torch.randn(3, 5, dtype=torch.float64)
    expected = x @ expected_w.T + b0 + layer.mixup_blo_bias["default"]
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_mixing_factors_are_clamped_to_unit_interval():
    layer = _mixed_linear()
    _set_random_adapter(layer)
    x = torch.randn(3, 5, dtype=torch.float64)
    inside = layer(x)
    with torch.no_grad():  # push some factors outside [0, 1]: they must act as their clamped values
        a = layer.mixup_blo_mix_out["default"]
        a[0] = 1.7
        a[1] = -0.4
        layer.mixup_blo_mix_in["default"][0, 2] = 3.0
    outside = layer(x)
    with torch.no_grad():
        a[0], a[1] = 1.0, 0.0
        layer.mixup_blo_mix_in["default"][0, 2] = 1.0
    torch.testing.assert_close(outside, layer(x), rtol=0, atol=0)
    assert not torch.allclose(inside, outside)


def test_initial_factors_are_in_range_and_follow_init_options():
    torch.manual_seed(0)
    layer = Linear(nn.Linear(64, 32), "default", MixupBLOConfig(target_modules=["x"], init_std=0.005))
    a, b = layer.mixup_blo_mix_out["default"].detach(), layer.mixup_blo_mix_in["default"].detach()
    assert a.shape == (32, 1) and b.shape == (1, 64)
    both = torch.cat([a.flatten(), b.flatten()])
    assert float(both.min()) >= 0.0 and float(both.max()) <= 1.0
    assert (a < 1).any() and (a == 1).any()  # N(1, 0.005) clamped: about half are exactly 1
    default = Linear(nn.Linear(8, 4), "default", MixupBLOConfig(target_modules=["x"]))
    assert torch.equal(default.mixup_blo_mix_out["default"], torch.ones(4, 1))


@pytest.mark.parametrize("task_weight", ["full", "lora"])
def test_identity_at_initialisation_on_bert(task_weight, tiny_bert_dir):
    inputs = _inputs(tiny_bert_dir)
    base = load_for_classification(tiny_bert_dir, 2, seed=0).eval()
    expected = _logits(base, inputs)
    model = get_peft_model(copy.deepcopy(base), MixupBLOConfig(task_type=TaskType.SEQ_CLS, task_weight=task_weight))
    torch.testing.assert_close(_logits(model.eval(), inputs), expected, rtol=0, atol=1e-6)
    # The authors' N(1, 0.005) initialisation with the code's coefficient (1-a)(1-b)^T is *not* the identity:
    noisy = get_peft_model(copy.deepcopy(base), MixupBLOConfig(task_type=TaskType.SEQ_CLS, task_weight=task_weight,
                                                               init_std=0.005))
    assert not torch.allclose(_logits(noisy.eval(), inputs), expected, atol=1e-6)


def test_default_targets_are_every_encoder_linear_and_the_pooler_never_the_classifier(tiny_bert_dir):
    model = get_peft_model(load_for_classification(tiny_bert_dir, 2, seed=0), MixupBLOConfig(task_type=TaskType.SEQ_CLS))
    mixed = {n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, MixupBLOLayer)}
    suffixes = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense")
    expected = {f"bert.encoder.layer.{i}.{s}" for i in range(2) for s in suffixes} | {"bert.pooler.dense"}
    assert mixed == expected
    assert not any("classifier" in n for n in mixed)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("classifier.modules_to_save" in n for n in trainable)
    assert not any("base_layer" in n or "embeddings" in n for n in trainable)


@pytest.mark.parametrize("task_weight", ["full", "lora"])
def test_merge_gives_a_plain_linear_with_the_same_output_and_unmerge_is_exact(task_weight):
    model = get_peft_model(ToyMLP(), MixupBLOConfig(task_weight=task_weight, target_modules=["lin0", "lin1"]))
    for layer in (model.base_model.model.lin0, model.base_model.model.lin1):
        _set_random_adapter(layer, spread=0.8)
    x = torch.randn(6, 16)
    expected = model(x)
    original = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    model.base_model.merge_adapter()
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
    model.base_model.unmerge_adapter()
    for n, p in model.named_parameters():
        if n in original:
            assert torch.equal(p, original[n]), n  # bit for bit: the pretrained weight is kept while merged
    merged = model.merge_and_unload()
    assert type(merged.lin0) is nn.Linear and type(merged.lin1) is nn.Linear
    torch.testing.assert_close(merged(x), expected, rtol=0, atol=1e-5)


def test_two_merged_adapters_use_the_pretrained_weight_for_both():
    model = get_peft_model(ToyMLP(), MixupBLOConfig(target_modules=["lin0"]))
    model.add_adapter("other", MixupBLOConfig(target_modules=["lin0"]))
    layer = model.base_model.model.lin0
    _set_random_adapter(layer, seed=1)
    w0 = layer.base_layer.weight.detach().clone()
    expected = w0 + layer.get_delta_weight("default") + layer.get_delta_weight("other")
    layer.merge(adapter_names=["default"])
    layer.merge(adapter_names=["other"])  # deltas are taken against W0, not the merged weight
    torch.testing.assert_close(layer.base_layer.weight, expected, rtol=0, atol=1e-6)
    layer.unmerge()
    assert torch.equal(layer.base_layer.weight, w0)


def test_safe_merge_refuses_a_broken_adapter():
    model = get_peft_model(ToyMLP(), MixupBLOConfig(target_modules=["lin0"]))
    layer = model.base_model.model.lin0
    with torch.no_grad():
        layer.mixup_blo_weight["default"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaNs or infinities in the merged weights"):
        model.base_model.merge_adapter(safe_merge=True)
    assert not layer.merged and torch.isfinite(layer.base_layer.weight).all()
    assert layer._pretrained_weight is None  # no stale copy of W0 is left behind to be used later


def test_safe_merge_checks_the_weight_in_the_base_layers_dtype():
    """A weight finite in fp32 that overflows fp16 was merged as inf (LoRA refuses it)."""
    model = get_peft_model(ToyMLP().half(), MixupBLOConfig(target_modules=["lin0"]))
    layer = model.base_model.model.lin0
    with torch.no_grad():
        layer.mixup_blo_weight["default"][0, 0] = 1e6  # beyond fp16's 65504, finite in the fp32 adapter
    with pytest.raises(ValueError, match="NaNs or infinities in the merged weights"):
        model.base_model.merge_adapter(safe_merge=True)
    assert not layer.merged and torch.isfinite(layer.base_layer.weight).all()


def test_a_dtype_change_while_merged_carries_the_kept_pretrained_weight_along():
    """merge, then .to(bf16): unmerge, disable_adapter and merge_and_unload stay in bf16 (the copy of W0 was fp32)."""
    model = get_peft_model(ToyMLP(), MixupBLOConfig(target_modules=["lin0", "lin1"]))
    _set_random_adapter(model.base_model.model.lin0, spread=0.8)
    x = torch.randn(6, 16)
    model.base_model.merge_adapter()
    assert not any("_pretrained" in key for key in model.state_dict())  # the kept copy is never saved
    model.to(torch.bfloat16)
    model.base_model.unmerge_adapter()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with model.disable_adapter():
        assert model(x.bfloat16()).dtype == torch.bfloat16
    model.base_model.merge_adapter()
    merged = model.merge_and_unload()
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    assert merged(x.bfloat16()).dtype == torch.bfloat16


def test_saved_adapter_sizes_full_copy_versus_lora(tiny_bert_dir, tmp_path):
    sizes = {}
    for task_weight in ("full", "lora"):
        model = get_peft_model(load_for_classification(tiny_bert_dir, 2, seed=0),
                               MixupBLOConfig(task_type=TaskType.SEQ_CLS, task_weight=task_weight))
        model.save_pretrained(tmp_path / task_weight)
        sizes[task_weight] = (tmp_path / task_weight / "adapter_model.safetensors").stat().st_size
        loaded = PeftModel.from_pretrained(load_for_classification(tiny_bert_dir, 2, seed=0), tmp_path / task_weight)
        assert isinstance(loaded.base_model.model.bert.pooler.dense, MixupBLOLayer)
    linear_bytes = sum(4 * m.weight.numel() for m in load_for_classification(tiny_bert_dir, 2).bert.modules()
                       if isinstance(m, nn.Linear))
    assert sizes["full"] > linear_bytes  # the paper's task weights: a full copy of every mixed weight
    assert sizes["lora"] < sizes["full"]  # (on MiniLM: 1.6 MB against 43 MB)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_weight": "half"}, "task_weight must be one of 'full', 'lora'"),
        ({"task_weight": "lora", "r": 0}, "r must be a positive integer"),
        ({"hypergradient": "exact"}, "hypergradient must be one of 'darts', 'first_order', 'none'"),
        ({"split_ratio": 1.0}, "split_ratio must be strictly between 0 and 1"),
        ({"folds": 0}, "folds must be a positive integer"),
        ({"init_mean": 1.5}, r"init_mean must lie in \[0, 1\]"),
        ({"init_std": -1.0}, "init_std must be >= 0"),
        ({"mixing_lr": 0.0}, "mixing_lr must be > 0"),
        ({"mixing_scheduler": "step"}, "mixing_scheduler must be one of"),
        ({"mixing_warmup_ratio": 1.0}, r"mixing_warmup_ratio must lie in \[0, 1\)"),
    ],
)
def test_bad_config_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixupBLOConfig(**kwargs)


def test_config_that_targets_nothing_or_a_non_linear_is_refused(tiny_bert_dir):
    with pytest.raises(ValueError, match="not found in the base model"):
        get_peft_model(ToyMLP(), MixupBLOConfig(target_modules=["no_such_layer"]))
    with pytest.raises(TypeError, match="can mix torch.nn.Linear and transformers' Conv1D layers only.*LayerNorm"):
        get_peft_model(load_for_classification(tiny_bert_dir, 2, seed=0),
                       MixupBLOConfig(task_type=TaskType.SEQ_CLS, target_modules=["attention.output.LayerNorm"]))


def test_unknown_architecture_asks_for_target_modules():
    with pytest.raises(ValueError, match=r"MixupBLOConfig has no default target_modules for model type 'custom' "
                                         r"\(defaults exist for .*Pass target_modules=.*nn.Linear / transformers' Conv1D layers are "
                                         r"named \['lin0', 'lin1'\], e.g. MixupBLOConfig\(target_modules=\['lin0', 'lin1'\]\)"):
        get_peft_model(ToyMLP(), MixupBLOConfig())


def test_corrupted_adapter_folder_fails_clearly(tmp_path):
    model = get_peft_model(ToyMLP(), MixupBLOConfig(target_modules=["lin0"]))
    model.save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a kill during the write
    with pytest.raises(Exception, match="(?i)header|deserializ|incomplete"):
        PeftModel.from_pretrained(ToyMLP(), tmp_path)


@pytest.mark.parametrize("task_weight", ["full", "lora"])
def test_merged_model_has_exactly_the_base_architecture(task_weight, tiny_bert_dir):
    """Zero inference overhead: after merge_and_unload the model is the base model's modules and tensors."""
    base = load_for_classification(tiny_bert_dir, 2, seed=0)
    reference = {n: (type(m), ) for n, m in base.named_modules()}
    shapes = {k: v.shape for k, v in base.state_dict().items()}
    model = get_peft_model(copy.deepcopy(base), MixupBLOConfig(task_type=TaskType.SEQ_CLS, task_weight=task_weight,
                                                               modules_to_save=["LayerNorm"]))
    for layer in model.modules():
        if isinstance(layer, MixupBLOLayer):
            _set_random_adapter(layer, spread=0.5)
    merged = model.merge_and_unload()
    assert {n: (type(m), ) for n, m in merged.named_modules()} == reference
    assert {k: v.shape for k, v in merged.state_dict().items()} == shapes
    assert not torch.equal(merged.bert.pooler.dense.weight, base.bert.pooler.dense.weight)
