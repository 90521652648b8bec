"""FTP adapter layers: a frozen pretrained ``nn.Linear`` / ``Conv1D`` / ``nn.Conv2d`` plus a trainable delta.

``delta="full"`` stores a dense delta of the weight's shape (initialised at zero), so training it is
full fine-tuning of that weight with the pretrained value kept aside; the forward pass then uses one
matmul / convolution with ``W0 + delta`` instead of two. ``delta="lora"`` stores ``B`` (out x r,
zero) and ``A`` (r x fan_in, Kaiming-uniform) with delta = (lora_alpha / r) B A, applied to Linear
layers as a low-rank side path (LoRA's cost) and to convolutions as a weight delta (grouped and
depthwise convolutions work unchanged). Merging adds the delta to the base weight, so a merged or
unloaded model is the base architecture with zero inference overhead.

transformers' ``Conv1D`` (GPT-2) stores its weight as (in, out); its adapter tensors are kept in
``nn.Linear``'s (out, in) layout all the same, so FTP's per-row projection constrains each output unit
as it does for a Linear layer, and the delta is transposed only when it meets the base weight.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..base import linear_weight, to_layer_layout, transposed_linear
from ..delta_merge import merge_deltas, unmerge_deltas
from .config import FTPConfig


class FTPLayer(BaseTunerLayer):
    """Adapter state shared by :class:`FTPLinear` and :class:`FTPConv2d`, keyed by adapter name."""

    adapter_layer_names = ("ftp_delta", "ftp_A", "ftp_B")
    other_param_names = ("r", "scaling")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.ftp_delta = nn.ParameterDict({})
        self.ftp_A = nn.ParameterDict({})
        self.ftp_B = nn.ParameterDict({})
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        weight = linear_weight(self.get_base_layer())
        self.out_features = weight.shape[0]
        self.in_features = weight.shape[1] if weight.dim() > 1 else 1

    def update_layer(self, adapter_name: str, config: FTPConfig) -> None:
        """Create adapter ``adapter_name`` (a zero delta, or B = 0 and a random A for ``delta="lora"``)."""
        weight = linear_weight(self.get_base_layer())
        if config.delta == "full":
            self.ftp_delta[adapter_name] = nn.Parameter(torch.zeros(weight.shape, dtype=torch.float32))
            self.r[adapter_name] = 0
            self.scaling[adapter_name] = 1.0
        else:
            fan_in = weight[0].numel()
            a = torch.empty(config.r, fan_in, dtype=torch.float32)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.ftp_A[adapter_name] = nn.Parameter(a)
            self.ftp_B[adapter_name] = nn.Parameter(torch.zeros(weight.shape[0], config.r, dtype=torch.float32))
            self.r[adapter_name] = config.r
            self.scaling[adapter_name] = config.lora_alpha / config.r
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _has_adapter(self, adapter: str) -> bool:
        return adapter in self.ftp_delta or adapter in self.ftp_A

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The adapter's delta in the base weight's shape and layout, in the adapter's dtype."""
        base = self.get_base_layer()
        if adapter in self.ftp_delta:
            return to_layer_layout(base, self.ftp_delta[adapter])
        if adapter in self.ftp_A:
            shape = linear_weight(base).shape
            return to_layer_layout(base, (self.scaling[adapter] * (self.ftp_B[adapter] @ self.ftp_A[adapter])).reshape(shape))
        raise ValueError(f"Adapter {adapter!r} is not present in this FTP layer.")

    # ---- merging ------------------------------------------------------------------------------------
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the deltas of ``adapter_names`` (default: the active adapters) to the base weight."""
        merge_deltas(self, adapter_names, safe_merge, self._has_adapter, "FTP")

    def unmerge(self) -> None:
        """Subtract every merged delta from the base weight again."""
        unmerge_deltas(self, self._has_adapter)

    # ---- forward ------------------------------------------------------------------------------------
    def _apply_weight(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _low_rank_path(self, adapter: str) -> bool:
        """Whether ``adapter`` runs as a side path (x A^T B^T) instead of a weight delta."""
        return False

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        previous_dtype = x.dtype
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        active = [a for a in self.active_adapters if self._has_adapter(a)]
        if self.merged or not active:
            return self.base_layer(x, *args, **kwargs)
        # Another adapter (LoRA, ...) adapting the same layer below this one must run: the fused path would read
        # the innermost weight and skip it, so then every delta is a side path added to its output.
        stacked = isinstance(self.base_layer, BaseTunerLayer)
        dense = [] if stacked else [a for a in active if not self._low_rank_path(a)]
        if dense:
            # One matmul/convolution with W0 + sum of deltas, in the adapters' dtype (fp32 under autocast).
            dtype = self.get_delta_weight(dense[0]).dtype
            base = self.get_base_layer()
            weight = base.weight.to(dtype)
            for adapter in dense:
                weight = weight + self.get_delta_weight(adapter)
            bias = self._cast_input_dtype(base.bias, dtype)
            result = self._apply_weight(self._cast_input_dtype(x, dtype), weight, bias)
        else:
            result = self.base_layer(x, *args, **kwargs)
        for adapter in (a for a in active if a not in dense):
            if self._low_rank_path(adapter):
                a, b = self.ftp_A[adapter], self.ftp_B[adapter]
                low = F.linear(F.linear(self._cast_input_dtype(x, a.dtype), a), b) * self.scaling[adapter]
            else:
                delta = self.get_delta_weight(adapter)
                low = self._apply_weight(self._cast_input_dtype(x, delta.dtype), delta, None)
            result = result + low.to(result.dtype)
        return result.to(previous_dtype)


class _FTPModule(nn.Module, FTPLayer):
    """The nn.Module side of an FTP layer; subclasses say how a weight is applied."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: FTPConfig, **kwargs: Any) -> None:
        super().__init__()
        FTPLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    forward = FTPLayer.forward  # nn.Module comes first in the MRO and would shadow it

    def __repr__(self) -> str:
        return "ftp." + super().__repr__()


class FTPLinear(_FTPModule):
    """An ``nn.Linear`` with FTP adapters."""

    def _apply_weight(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def _low_rank_path(self, adapter: str) -> bool:
        return adapter in self.ftp_A


class FTPConv1D(FTPLinear):
    """A transformers ``Conv1D`` (GPT-2's Linear with an (in, out) weight) with FTP adapters."""

    def _apply_weight(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return transposed_linear(x, weight, bias)


class FTPConv2d(_FTPModule):
    """An ``nn.Conv2d`` (grouped and depthwise included) with FTP adapters."""

    def _apply_weight(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.get_base_layer()._conv_forward(x, weight, bias)
