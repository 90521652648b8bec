"""SparseExpert layer: bit packing, mask gradients, deferred meta-training gradients, merge equality."""

from __future__ import annotations

import math

import pytest
import torch
from peft import get_peft_model
from torch import nn

from hf_lowdata import SparseExpertConfig
from hf_lowdata.models import load_tokenizer
from hf_lowdata.tuners.sparse_expert import pack_bits, pooled_features, unpack_bits
from hf_lowdata.tuners.sparse_expert.layer import hard_concrete
from tests.conformance.models import ToyMLP
from tests.tuners.sparse_expert.helpers import smat_encoder


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 1000, 3 * 37 * 5])
def test_bit_pack_round_trip_at_one_bit_per_entry(numel):
    gen = torch.Generator().manual_seed(numel)
    mask = torch.rand(numel, generator=gen) < 0.1
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(numel / 8)
    assert torch.equal(unpack_bits(packed, numel), mask)
    assert 8 * packed.numel() <= numel + 7  # <= 1 bit per entry plus the last byte's padding


def test_unpack_refuses_too_few_bytes():
    with pytest.raises(ValueError, match="corrupt"):
        unpack_bits(torch.zeros(2, dtype=torch.uint8), 17)


def _mlp(**config):
    torch.manual_seed(0)
    return get_peft_model(ToyMLP(), SparseExpertConfig(target_modules=["lin0", "lin1"], feature_dim=32, **config))


def _perturb_deltas(model, scale=0.05):
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "sparse_expert_delta" in name:
                p.add_(scale * torch.randn(p.shape, generator=gen))


def _reference_delta(layer, weights, beta):
    """The same quantity with plain autograd and a straight-through clamp."""
    config = layer.sparse_expert_settings["default"]
    gamma, zeta = config.stretch_limits
    logits = layer.sparse_expert_logits["default"]
    stretched = torch.sigmoid(logits / beta) * (zeta - gamma) + gamma
    z = stretched + (stretched.clamp(0, 1) - stretched).detach()
    return layer.sparse_expert_delta["default"] * torch.einsum("m,m...->...", weights, z)


def test_mixed_mask_delta_gradients_match_autograd_reference():
    model = _mlp(num_experts=3)
    _perturb_deltas(model)
    layer = model.base_model.model.lin1
    with torch.no_grad():
        layer.sparse_expert_logits["default"].mul_(4.0)  # some entries saturate at 0 and 1
    weights = torch.tensor([0.2, 0.5, 0.3], requires_grad=True)
    target = torch.randn(32, 32, generator=torch.Generator().manual_seed(1))
    params = [layer.sparse_expert_delta["default"], layer.sparse_expert_logits["default"], weights]

    # the values too (the backward pass recomputes the masks, so gradients alone do not pin the forward)
    torch.testing.assert_close(layer.task_delta("default", weights, beta=2 / 3), _reference_delta(layer, weights, 2 / 3))
    ours = torch.autograd.grad((layer.task_delta("default", weights, beta=2 / 3) * target).sum(), params)
    ref = torch.autograd.grad((_reference_delta(layer, weights, 2 / 3) * target).sum(), params)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ours[1].abs().sum() > 0


def test_deferred_meta_gradients_equal_direct_gradients():
    """meta_task_delta + finalize_mask_grad == the direct gradient, summed over two 'episodes'."""
    model = _mlp(num_experts=4)
    _perturb_deltas(model)
    layer = model.base_model.model.lin0
    logits = layer.sparse_expert_logits["default"]
    beta = layer.sparse_expert_settings["default"].mask_temperature
    gen = torch.Generator().manual_seed(2)
    episodes = [(torch.softmax(torch.randn(4, generator=gen), 0), torch.randn(32, 16, generator=gen)) for _ in range(2)]

    direct = None
    for w, target in episodes:
        g = torch.autograd.grad((layer.task_delta("default", w, beta=beta) * target).sum(), logits)[0]
        direct = g if direct is None else direct + g
    for w, target in episodes:
        (layer.meta_task_delta("default", w) * target).sum().backward()
    assert logits.grad is None  # deferred until the optimizer step
    layer.finalize_mask_grad("default")
    torch.testing.assert_close(logits.grad, direct, rtol=1e-5, atol=1e-7)


def test_hard_concrete_is_exactly_zero_and_one_at_the_logit_bound():
    bound = SparseExpertConfig().mask_logit_bound
    z = hard_concrete(torch.tensor([-bound, bound]), 2 / 3, -0.1, 1.1)
    assert z.tolist() == [0.0, 1.0]
    inside = hard_concrete(torch.tensor([0.5]), 2 / 3, -0.1, 1.1)  # sigmoid(logit / beta) stretched to (gamma, zeta)
    torch.testing.assert_close(inside, torch.sigmoid(torch.tensor([0.75])) * 1.2 - 0.1)


def test_forward_merge_and_functional_weights_agree():
    model = _mlp()
    _perturb_deltas(model)
    tuner = model.base_model
    tuner.set_expert_weights(torch.tensor([1, 0, 2, 0, 0, 1, 0, 0], dtype=torch.float32))
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(4))
    model.eval()
    unmerged = model(X=x)
    weights = tuner.task_weights(tuner.model.lin0.sparse_expert_weights["default"], tuner.model)
    with tuner.bypass():
        functional = torch.func.functional_call(tuner.model, weights, args=(), kwargs={"X": x})
    with model.disable_adapter():
        base = model(X=x)
    merged = model.merge_and_unload()(x)
    torch.testing.assert_close(functional, unmerged, atol=1e-6, rtol=0)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    assert not torch.allclose(base, unmerged, atol=1e-4)


def test_binarize_keeps_the_constrained_support_and_saturated_outputs():
    model = _mlp()
    _perturb_deltas(model)
    tuner = model.base_model
    bound = tuner.peft_config["default"].mask_logit_bound
    with torch.no_grad():  # saturated masks: binarizing must not change the function
        for _, layer in tuner.expert_layers():
            logits = layer.sparse_expert_logits["default"]
            logits.copy_(torch.where(torch.rand(logits.shape) < 0.2, bound, -bound))
    x = torch.randn(4, 16)
    before_out, before_sparsity = model(X=x), tuner.mask_sparsity()
    tuner.binarize_masks()
    assert tuner.peft_config["default"].masks == "binary"
    assert not any("sparse_expert_logits" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(tuner.mask_sparsity(), before_sparsity)
    assert 0.7 < float(before_sparsity.mean()) < 0.9
    torch.testing.assert_close(model(X=x), before_out, atol=1e-6, rtol=0)


def test_default_targets_are_the_encoder_linears(tiny_bert_dir):
    model = smat_encoder(tiny_bert_dir)
    targets = {n for n, _ in model.base_model.expert_layers()}
    assert len(targets) == 12 and all(n.startswith("encoder.layer.") for n in targets)
    assert not any("embeddings" in n or "pooler" in n for n in targets)


def test_default_targets_skip_the_classifier_of_a_sequence_classifier(tiny_bert_dir):
    from hf_lowdata.models import load_for_classification

    model = get_peft_model(load_for_classification(tiny_bert_dir, 2, seed=0), SparseExpertConfig(task_type="SEQ_CLS"))
    targets = {n for n, _ in model.base_model.expert_layers()}
    assert targets and all(".encoder.layer." in n for n in targets)


def test_pooled_features_with_and_without_functional_weights_agree(tiny_bert_dir):
    model = smat_encoder(tiny_bert_dir)
    tuner = model.base_model
    batch = dict(load_tokenizer(tiny_bert_dir)(["a fine film", "dull"], padding=True, return_tensors="pt"))
    encoder = model.get_base_model()
    encoder.eval()
    weights = tuner.task_weights(torch.full((8,), 1 / 8), encoder)
    with torch.no_grad(), tuner.bypass():
        a = pooled_features(encoder, batch)
        b = pooled_features(encoder, batch, weights)
    torch.testing.assert_close(a, b)  # deltas are zero at initialisation


def test_conv2d_layers_are_supported():
    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    torch.manual_seed(0)
    model = get_peft_model(Conv(), SparseExpertConfig(target_modules=["conv"], feature_dim=4, num_experts=2))
    _perturb_deltas(model, 0.5)
    x = torch.randn(2, 3, 5, 5)
    out = model(x)
    torch.testing.assert_close(model.merge_and_unload()(x), out, atol=1e-5, rtol=0)
