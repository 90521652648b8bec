"""SparseExpertConfig validation, clear errors, and the router's expert weights."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from torch import nn

from hf_lowdata import SparseExpertConfig
from hf_lowdata.tuners.sparse_expert.router import expert_weights
from tests.conformance.models import ToyMLP


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_experts": 0}, "num_experts must be a positive integer"),
        ({"target_sparsity": 1.0}, r"target_sparsity .* must be in \[0, 1\)"),
        ({"target_sparsity": -0.1}, r"must be in \[0, 1\)"),
        ({"stretch_limits": (0.0, 1.1)}, "gamma < 0 < 1 < zeta"),
        ({"mask_temperature": 0}, "mask_temperature must be positive"),
        ({"masks": "soft"}, "masks must be one of"),
        ({"feature_dim": 30, "router_heads": 4}, "divisible by router_heads"),
        ({"target_modules": []}, "target_modules is empty"),
        ({"mask_logit_bound": -1}, "mask_logit_bound must be positive"),
    ],
)
def test_bad_config_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparseExpertConfig(**kwargs)


def test_config_round_trips_through_json(tmp_path):
    config = SparseExpertConfig(num_experts=4, target_sparsity=0.95, feature_dim=32, target_modules=["lin0"])
    config.save_pretrained(tmp_path)
    loaded = SparseExpertConfig.from_pretrained(tmp_path)
    assert (loaded.num_experts, loaded.target_sparsity, loaded.feature_dim) == (4, 0.95, 32)
    assert loaded.stretch_limits == (-0.1, 1.1) and loaded.target_modules == {"lin0"}


def test_plain_model_without_feature_dim_says_what_to_set():
    with pytest.raises(ValueError, match="Pass feature_dim="):
        get_peft_model(ToyMLP(), SparseExpertConfig(target_modules=["lin0"]))


def test_model_without_linear_layers_says_what_to_set():
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="found no nn.Linear, transformers' Conv1D or nn.Conv2d"):
        get_peft_model(model, SparseExpertConfig(feature_dim=4))


def test_unsupported_target_type_is_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(TypeError, match=r"'1' is a torch\.nn\.modules\.normalization\.LayerNorm; SparseExpert adapts "
                                        r"torch\.nn\.Linear, transformers. Conv1D and torch\.nn\.Conv2d only"):
        get_peft_model(model, SparseExpertConfig(target_modules=["1"], feature_dim=4))


@pytest.mark.parametrize("sample", [False, True])
@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0, 1e4])
def test_expert_weights_are_non_negative_and_sum_to_one(sample, scale):
    gen = torch.Generator().manual_seed(int(scale))
    for _ in range(20):
        logits = scale * torch.randn(8, generator=gen)
        w = expert_weights(logits, temperature=0.5, sample=sample, generator=gen)
        assert (w >= 0).all() and torch.isfinite(w).all()
        torch.testing.assert_close(w.sum(), torch.tensor(1.0), atol=1e-5, rtol=0)


def test_sampled_weights_are_deterministic_per_generator_and_carry_gradients():
    logits = torch.randn(8, requires_grad=True)
    a = expert_weights(logits, 2.0, sample=True, generator=torch.Generator().manual_seed(5))
    b = expert_weights(logits, 2.0, sample=True, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    (a * torch.arange(8.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def _mlp():
    torch.manual_seed(0)
    return get_peft_model(ToyMLP(), SparseExpertConfig(target_modules=["lin0", "lin1"], feature_dim=32))


def test_route_stores_the_weights_in_every_layer():
    tuner = _mlp().base_model
    prototypes = torch.randn(3, 32)
    w = tuner.route(prototypes)
    assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-5
    for _, layer in tuner.expert_layers():
        torch.testing.assert_close(layer.sparse_expert_weights["default"], w)
    torch.testing.assert_close(tuner.route(prototypes), w)  # eval routing is deterministic


def test_router_rejects_wrong_prototype_shape_and_bad_weights():
    tuner = _mlp().base_model
    with pytest.raises(ValueError, match=r"class prototypes of shape \(num_classes, 32\)"):
        tuner.route(torch.randn(2, 16))
    with pytest.raises(ValueError, match="non-negative"):
        tuner.set_expert_weights([-1.0] + [1.0] * 7)
    with pytest.raises(ValueError, match="8 finite"):
        tuner.set_expert_weights([1.0, 2.0])


def test_router_is_not_a_forward_layer_and_unload_removes_it():
    model = _mlp()
    with pytest.raises(TypeError, match="not a layer of the model's forward pass"):
        model.base_model.router()
    plain = model.merge_and_unload()
    assert not hasattr(plain, "smat_router") and type(plain) is ToyMLP


def test_route_support_uses_the_frozen_backbone(tiny_bert_dir):
    from hf_lowdata.models import load_tokenizer
    from tests.tuners.sparse_expert.helpers import smat_encoder

    model = smat_encoder(tiny_bert_dir)
    tuner = model.base_model
    batch = dict(load_tokenizer(tiny_bert_dir)(["good film", "bad film", "great plot"], padding=True,
                                               return_tensors="pt"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "sparse_expert_delta" in name:
                p.add_(1.0)  # a large delta must not change the router's input
    w = tuner.route_support(batch, torch.tensor([1, 0, 1]))
    with tuner.bypass():
        from hf_lowdata.tuners.sparse_expert import class_prototypes, pooled_features

        model.eval()
        frozen = pooled_features(model.get_base_model(), batch)
    torch.testing.assert_close(w, tuner.route(class_prototypes(frozen, torch.tensor([1, 0, 1]))))
    assert model.get_base_model().training is False


@pytest.mark.parametrize("inference_mode", [False, True])
def test_a_model_with_its_spectral_norm_router_pickles_like_lora(inference_mode):
    """torch.save(model) / multiprocessing pickle the model; torch refuses parametrized modules, so
    the router pickles through its state dict, and nothing else about it may change."""
    import io
    import pickle

    torch.manual_seed(0)
    config = SparseExpertConfig(target_modules=["lin0", "lin1"], feature_dim=32, inference_mode=inference_mode)
    model = get_peft_model(ToyMLP(), config)
    prototypes, x = torch.randn(3, 32), torch.randn(4, 16)
    model.base_model.router.train()
    model.base_model.router_logits(prototypes)  # a power iteration: u, v no longer at their initial values
    model.base_model.router.eval()
    weights, out = model.base_model.route(prototypes), model(x)
    rng = torch.get_rng_state()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for clone in (pickle.loads(pickle.dumps(model)), torch.load(buffer, weights_only=False)):
        assert torch.equal(torch.get_rng_state(), rng)  # unpickling draws no random numbers
        assert clone.base_model.router.state_dict().keys() == model.base_model.router.state_dict().keys()
        for (name, a), b in zip(model.base_model.router.state_dict().items(),
                                clone.base_model.router.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
        assert {n: p.requires_grad for n, p in clone.named_parameters()} == {
            n: p.requires_grad for n, p in model.named_parameters()}
        assert not clone.base_model.router.training
        torch.testing.assert_close(clone.base_model.route(prototypes), weights, atol=0, rtol=0)
        torch.testing.assert_close(clone(x), out, atol=0, rtol=0)


def test_deepcopy_of_the_router_is_the_usual_module_copy():
    """Pickling goes through the state dict; a deep copy must stay the ordinary one: a model copied
    with its optimizer keeps them paired, and every submodule keeps its train/eval mode."""
    import copy

    from hf_lowdata.tuners.sparse_expert.router import RouterNet

    net = RouterNet(SparseExpertConfig(num_experts=3), 16)
    net.fc1.eval()
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    net_copy, optimizer_copy = copy.deepcopy((net, optimizer))
    held = {id(p) for group in optimizer_copy.param_groups for p in group["params"]}
    assert all(id(p) in held for p in net_copy.parameters())
    assert not net_copy.fc1.training and net_copy.fc2.training
    assert all(a is b for a, b in zip(copy.copy(net).parameters(), net.parameters()))  # shallow: shared


def test_the_output_projection_of_torch_multihead_attention_is_never_adapted():
    """nn.MultiheadAttention reads out_proj.weight without calling out_proj: a wrapper's delta trained and merged but
    never acted unmerged (merged and unmerged outputs differed by 3.0)."""

    class TorchEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

        def forward(self, x):
            return self.encoder(x)

    torch.manual_seed(0)
    model = get_peft_model(TorchEncoder(), SparseExpertConfig(feature_dim=32))
    targets = set(model.peft_config["default"].target_modules)
    assert targets == {"encoder.layers.0.linear1", "encoder.layers.0.linear2"}
    with pytest.raises(ValueError, match="nn.MultiheadAttention cannot take this adapter"):
        get_peft_model(TorchEncoder(), SparseExpertConfig(feature_dim=32, target_modules=["out_proj"]))
