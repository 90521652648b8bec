"""The shared additive-delta merge of FTP and SparseExpert layers: safe merge refuses NaN and
leaves the base weight untouched; merge + unmerge gives the base weight back."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from torch import nn

from hf_lowdata import FTPConfig, SparseExpertConfig


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, x):
        return self.lin(x)


CONFIGS = {
    "ftp": lambda: FTPConfig(target_modules=["lin"]),
    "sparse_expert": lambda: SparseExpertConfig(target_modules=["lin"], feature_dim=8),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_safe_merge_refuses_nan_and_unmerge_restores(name):
    torch.manual_seed(0)
    model = get_peft_model(Toy(), CONFIGS[name]())
    layer = model.base_model.model.lin
    base = layer.get_base_layer().weight.detach().clone()
    with torch.no_grad():
        for p in (p for n, p in model.named_parameters() if p.requires_grad):
            p.add_(0.1 * torch.randn_like(p))
    delta = layer.get_delta_weight("default").detach().clone()
    assert delta.abs().sum() > 0
    layer.merge()
    torch.testing.assert_close(layer.get_base_layer().weight, base + delta)
    layer.unmerge()
    torch.testing.assert_close(layer.get_base_layer().weight, base, atol=1e-6, rtol=0)
    assert not layer.merged

    broken = next(p for n, p in model.named_parameters() if p.requires_grad and ".default" in n and p.dim() == 2)
    with torch.no_grad():
        broken.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN/inf"):
        layer.merge(safe_merge=True)
    torch.testing.assert_close(layer.get_base_layer().weight, base, atol=1e-6, rtol=0)
    assert not layer.merged
