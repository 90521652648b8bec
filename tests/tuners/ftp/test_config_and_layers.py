"""FTPConfig validation, default targets per architecture, Linear/Conv2d layers and merging."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, TaskType, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from hf_lowdata import FTPConfig
from hf_lowdata.tuners.ftp import FTPConv2d, FTPLinear


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mu": 0.0}, r"mu .* must be > 0"),
        ({"mu": -1e-2}, r"mu .* must be > 0"),
        ({"kappa": 1.5}, r"kappa must lie in \[0, 1\]"),
        ({"kappa": -0.1}, r"kappa must lie in \[0, 1\]"),
        ({"norm": "l1"}, "norm must be one of"),
        ({"delta": "dense"}, "delta must be one of"),
        ({"delta": "lora", "r": 0}, "r must be a positive integer"),
        ({"delta": "lora", "lora_alpha": 0}, "lora_alpha must be positive"),
        ({"base_optimizer": "lion"}, "base_optimizer must be one of"),
    ],
)
def test_bad_configs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FTPConfig(**kwargs)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = nn.BatchNorm2d(8)
        self.lin = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.norm(self.depthwise(torch.relu(self.conv(x)))).mean(dim=(2, 3)))


def test_target_modules_matching_nothing_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Target modules .*not_there.* not found in the base model"):
        get_peft_model(ConvNet(), FTPConfig(target_modules=["not_there"]))


def test_unsupported_module_type_is_a_clear_error():
    with pytest.raises(TypeError, match=r"FTP adapts nn.Linear, transformers' Conv1D and nn.Conv2d modules.*BatchNorm2d"):
        get_peft_model(ConvNet(), FTPConfig(target_modules=["norm"]))


def test_unknown_architecture_without_targets_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no default target_modules for model type .*Pass target_modules="):
        get_peft_model(ConvNet(), FTPConfig())


def _perturb(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ftp_" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("delta", ["full", "lora"])
def test_conv2d_and_grouped_conv2d(delta):
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    base = ConvNet().eval()
    expected = base(x)
    model = get_peft_model(ConvNet().eval(), FTPConfig(target_modules=["conv", "depthwise"], delta=delta, r=2))
    assert isinstance(model.base_model.model.depthwise, FTPConv2d)
    torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=0)  # identity at init
    _perturb(model)
    adapted = model(x)
    assert not torch.allclose(adapted, expected, atol=1e-4)
    # The adapted layer is exactly a convolution with W0 + delta (groups preserved).
    layer = model.base_model.model.depthwise
    inp = torch.randn(2, 8, 5, 5)
    weight = layer.base_layer.weight + layer.get_delta_weight("default")
    torch.testing.assert_close(layer(inp), nn.functional.conv2d(inp, weight, layer.base_layer.bias, padding=1, groups=8))
    merged = model.merge_and_unload()
    assert type(merged.depthwise) is nn.Conv2d and type(merged.conv) is nn.Conv2d
    torch.testing.assert_close(merged(x), adapted, atol=1e-5, rtol=0)


def test_lora_delta_equals_the_same_dense_delta():
    """The low-rank side path of a Linear computes the same function as the dense delta (B A) * scale."""
    torch.manual_seed(2)
    base = nn.Sequential(nn.Linear(6, 5))
    lora = get_peft_model(base, FTPConfig(target_modules=["0"], delta="lora", r=3, lora_alpha=6))
    _perturb(lora)
    layer = lora.base_model.model[0]
    assert isinstance(layer, FTPLinear) and layer.scaling["default"] == 2.0
    x = torch.randn(4, 6)
    expected = nn.functional.linear(x, layer.base_layer.weight + 2.0 * layer.ftp_B["default"] @ layer.ftp_A["default"],
                                    layer.base_layer.bias)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=0)


def test_full_and_lora_adapters_active_together():
    torch.manual_seed(4)
    model = get_peft_model(nn.Sequential(nn.Linear(6, 5)), FTPConfig(target_modules=["0"]))
    model.add_adapter("low", FTPConfig(target_modules=["0"], delta="lora", r=2))
    _perturb(model)
    layer = model.base_model.model[0]
    model.base_model.set_adapter(["default", "low"])
    x = torch.randn(3, 6)
    weight = layer.base_layer.weight + layer.get_delta_weight("default") + layer.get_delta_weight("low")
    torch.testing.assert_close(layer(x), nn.functional.linear(x, weight, layer.base_layer.bias), atol=1e-6, rtol=0)


def _targeted(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def test_default_targets_bert(tiny_bert_dir):
    from hf_lowdata.models import load_for_classification

    model = get_peft_model(load_for_classification(tiny_bert_dir, 2, seed=0), FTPConfig(task_type=TaskType.SEQ_CLS))
    names = {n.split("bert.encoder.layer.0.")[-1] for n in _targeted(model) if ".layer.0." in n}
    assert names == {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                     "intermediate.dense", "output.dense"}
    assert not any("pooler" in n or "classifier" in n for n in _targeted(model))


@pytest.mark.parametrize("arch", ["mpnet", "llama", "roberta", "distilbert", "efficientnet"])
def test_default_targets_other_architectures(arch):
    import transformers as tf

    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    models = {
        "mpnet": lambda: tf.MPNetForSequenceClassification(tf.MPNetConfig(**small)),
        "llama": lambda: tf.LlamaForSequenceClassification(tf.LlamaConfig(vocab_size=100, **small)),
        "roberta": lambda: tf.RobertaForSequenceClassification(tf.RobertaConfig(**small)),
        "distilbert": lambda: tf.DistilBertForSequenceClassification(tf.DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64)),
        "efficientnet": lambda: tf.EfficientNetForImageClassification(
            tf.EfficientNetConfig(width_coefficient=0.1, depth_coefficient=0.1, image_size=32, hidden_dim=64)),
    }
    base = models[arch]()
    linear_or_conv = {n for n, m in base.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    heads = {n for n in linear_or_conv if n.startswith(("classifier", "score", "pre_classifier"))}
    model = get_peft_model(base, FTPConfig(task_type=None if arch == "efficientnet" else TaskType.SEQ_CLS,
                                           modules_to_save=["classifier"] if arch == "efficientnet" else None))
    targeted = _targeted(model)
    assert {n.removeprefix("base_model.model.") for n in targeted} == linear_or_conv - heads


def test_saved_adapter_reloads_and_corrupt_folder_is_reported(tmp_path):
    torch.manual_seed(5)
    model = get_peft_model(nn.Sequential(nn.Linear(6, 5)), FTPConfig(target_modules=["0"]))
    _perturb(model)
    x = torch.randn(2, 6)
    expected = model(x)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(nn.Sequential(nn.Linear(6, 5)), tmp_path)
    # The fresh base has other weights: compare the deltas, which is what the adapter stores.
    torch.testing.assert_close(loaded.base_model.model[0].ftp_delta["default"], model.base_model.model[0].ftp_delta["default"])
    assert expected.shape == loaded(x).shape
    (tmp_path / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match=r"(?i)safetensors|header|deserializ"):
        PeftModel.from_pretrained(nn.Sequential(nn.Linear(6, 5)), tmp_path)
