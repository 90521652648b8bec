"""Frozen BatchNorm layers keep their pretrained statistics while an adapter trains (LowDataTrainer).

Before the fix, Trainer's ``model.train()`` let every BatchNorm of a tiny EfficientNet update its running
statistics; the adapter saves only its own weights, so the reloaded model's logits differed.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from hf_lowdata import FTPConfig
from hf_lowdata.budgets import Budget
from hf_lowdata.training import LowDataTrainer, few_shot_training_args
from hf_lowdata.training.batchnorm import (
    batchnorm_statistics_frozen,
    frozen_batchnorm_in_eval,
    is_frozen_batchnorm,
)

BUDGET = Budget(learning_rate=1e-2, epochs=1, min_steps=3, max_steps=3, batch_size=4, warmup_ratio=0.0)
TOP_BN = "efficientnet.encoder.top_bn"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_efficientnet() -> nn.Module:
    """A tiny random EfficientNet image classifier (3 classes), the same weights on every call.

    transformers initialises BatchNorm scales near 0, which makes every feature map (and so any drift
    of the statistics) vanish; scales, shifts and statistics are drawn like a pretrained model's instead.
    """
    from transformers import EfficientNetConfig, EfficientNetForImageClassification

    torch.manual_seed(0)
    config = EfficientNetConfig(width_coefficient=0.1, depth_coefficient=0.1, image_size=32, hidden_dim=128,
                                num_labels=3)
    model = EfficientNetForImageClassification(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def images(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"pixel_values": 2.0 * torch.randn(3, 32, 32, generator=g) + 0.5, "labels": torch.tensor(i % 3)}
            for i in range(n)]


def batchnorm_buffers(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {n: b.detach().clone() for n, b in model.named_buffers()
            if n.startswith(prefix) and ("running_" in n or "num_batches_tracked" in n)}


def logits(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(pixel_values=pixels).logits


ADAPTERS = {
    "ftp": lambda: FTPConfig(modules_to_save=["classifier"]),
    "lora": lambda: LoraConfig(r=4, lora_alpha=8, target_modules=["expand_conv", "project_conv"],
                               modules_to_save=["classifier"]),
}


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_adapter_training_keeps_frozen_batchnorm_statistics_and_reloads_exactly(adapter, tmp_path):
    model = get_peft_model(tiny_efficientnet(), ADAPTERS[adapter]())
    before = batchnorm_buffers(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert before and weights
    args = few_shot_training_args(str(tmp_path / "run"), BUDGET, 12, seed=0, use_cpu=True)
    LowDataTrainer(model=model, args=args, train_dataset=images(12, 0)).train()

    assert any(not torch.equal(p, weights[n]) for n, p in model.named_parameters() if n in weights)  # it trained
    pixels = torch.stack([x["pixel_values"] for x in images(4, 1)])
    trained = logits(model, pixels)
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(tiny_efficientnet(), tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded, pixels), trained, atol=0, rtol=0)  # differed by ~20 before
    after = batchnorm_buffers(model)
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, atol=0, rtol=0, msg=f"{name} drifted during training")


def test_batchnorm_the_user_trains_keeps_training_and_is_saved(tmp_path):
    """A BatchNorm in modules_to_save has trainable affine parameters: it updates its statistics as usual,
    and they are saved with the adapter."""
    config = LoraConfig(r=4, target_modules=["project_conv"], modules_to_save=["classifier", TOP_BN])
    model = get_peft_model(tiny_efficientnet(), config)
    trained_bn = f"base_model.model.{TOP_BN}.modules_to_save.default."
    before = batchnorm_buffers(model, trained_bn)
    frozen_before = batchnorm_buffers(model, "base_model.model.efficientnet.embeddings.")
    args = few_shot_training_args(str(tmp_path / "run"), BUDGET, 12, seed=0, use_cpu=True)
    LowDataTrainer(model=model, args=args, train_dataset=images(12, 0)).train()

    after = batchnorm_buffers(model, trained_bn)
    assert not torch.equal(after[trained_bn + "running_var"], before[trained_bn + "running_var"])
    assert int(after[trained_bn + "num_batches_tracked"]) == 3
    for name, value in frozen_before.items():
        torch.testing.assert_close(batchnorm_buffers(model)[name], value, atol=0, rtol=0)
    pixels = torch.stack([x["pixel_values"] for x in images(4, 1)])
    trained = logits(model, pixels)
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(tiny_efficientnet(), tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded, pixels), trained, atol=0, rtol=0)


def test_only_batchnorm_with_all_affine_parameters_frozen_runs_in_eval_mode():
    frozen, trainable, no_affine = nn.BatchNorm1d(4), nn.BatchNorm1d(4), nn.BatchNorm1d(4, affine=False)
    frozen.requires_grad_(False)
    model = nn.Sequential(frozen, trainable, no_affine)
    assert [is_frozen_batchnorm(m) for m in model] + [is_frozen_batchnorm(nn.Linear(2, 2))] == [
        True, False, False, False]
    x = torch.randn(8, 4) + 3.0
    with frozen_batchnorm_in_eval(model):
        for _ in range(2):
            model.train()  # what Trainer (and an objective restoring the mode) does: the hook still applies
            model(x)
    assert [int(m.num_batches_tracked) for m in model] == [0, 2, 2]
    torch.testing.assert_close(frozen.running_mean, torch.zeros(4), atol=0, rtol=0)
    model.train()(x)  # outside the context the hooks are gone: plain PyTorch behaviour again
    assert [int(m.num_batches_tracked) for m in model] == [1, 3, 3]


def test_frozen_statistics_keep_every_batchnorm_in_eval_mode_while_its_affine_parameters_train():
    """Full fine-tuning on a few images: trainable layers normalise with their stored statistics too."""
    trainable, frozen = nn.BatchNorm1d(4), nn.BatchNorm1d(4)
    frozen.requires_grad_(False)
    model = nn.Sequential(trainable, frozen)
    x = torch.randn(8, 4) + 3.0
    with batchnorm_statistics_frozen(model):
        model.train()
        model(x).sum().backward()
    assert [int(m.num_batches_tracked) for m in model] == [0, 0]
    torch.testing.assert_close(trainable.running_mean, torch.zeros(4), atol=0, rtol=0)
    assert trainable.weight.grad is not None and trainable.bias.grad.abs().sum() > 0  # the affine part trains
    model.train()(x)  # the hooks are gone on exit
    assert [int(m.num_batches_tracked) for m in model] == [1, 1]

class _ImageSource:
    """An episode source of random images (what SparseExpert meta-trains an image backbone on)."""

    name = "images"
    num_labels = 3

    def __init__(self, n: int) -> None:
        self.rows = images(n, 2)
        self.labels = [int(r["labels"]) for r in self.rows]

    def encode(self, indices) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack([self.rows[i]["pixel_values"] for i in indices])}


def test_sparse_expert_meta_training_keeps_the_image_backbones_statistics(tmp_path):
    """SparseExpert relies on the trainer for this (its objective no longer switches BatchNorm itself)."""
    from hf_lowdata import SparseExpertConfig
    from hf_lowdata.training.episodes import EpisodeDataset

    torch.manual_seed(0)
    model = get_peft_model(tiny_efficientnet(), SparseExpertConfig(num_experts=2))
    before = batchnorm_buffers(model)
    budget = Budget(learning_rate=1e-2, epochs=1, min_steps=2, max_steps=2, batch_size=1, warmup_ratio=0.0)
    args = few_shot_training_args(str(tmp_path / "run"), budget, 1, seed=0, use_cpu=True)
    episodes = EpisodeDataset([_ImageSource(24)], 2, way=(2, 3), shot=(1, 2), query_per_class=2)
    LowDataTrainer(model=model, args=args, train_dataset=episodes).train()
    after = batchnorm_buffers(model)
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, atol=0, rtol=0, msg=f"{name} drifted during meta-training")
