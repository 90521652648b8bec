"""Mixed Linear layers: ``W_eff = (a b^T) * W + ((1 - a)(1 - b)^T) * W0``, merged into a plain Linear.

The pretrained weight W0 is the base layer's weight and stays frozen. Per adapter the layer holds a
task weight W (a full copy, or W0 + s B A) and the rank-1 mixing factors a (out x 1), b (1 x in);
the factors are clamped to [0, 1] in every forward (and in place after every outer step by the
training objective), so perturbed or loaded values outside the range act as their clamped values.
Because W_eff depends on W0, a merged layer keeps the original weight so that further merges and
unmerging are exact.

transformers' ``Conv1D`` (GPT-2) is a Linear layer with its weight stored (in, out): the layer works on
the (out, in) view of it, so ``a`` scales output units and ``b`` input units for both kinds, and only a
merge writes back in the base layer's own layout.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from ..base import TransposedLinear, layer_features, linear_weight, to_layer_layout
from .config import MixupBLOConfig

#: The layers MixupBLO mixes: Linear, and transformers' Conv1D (a Linear with a transposed weight).
MIXED_LAYER_TYPES = (nn.Linear, TransposedLinear)


class MixupBLOLayer(BaseTunerLayer):
    """Adapter state of a mixed layer, keyed by adapter name."""

    adapter_layer_names = (
        "mixup_blo_weight",
        "mixup_blo_lora_A",
        "mixup_blo_lora_B",
        "mixup_blo_bias",
        "mixup_blo_mix_out",
        "mixup_blo_mix_in",
    )
    other_param_names = ("mixup_blo_task_weight", "mixup_blo_scaling")
    #: Names of the outer (mixing) parameters; everything else is an inner parameter.
    mixing_names = ("mixup_blo_mix_out", "mixup_blo_mix_in")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.mixup_blo_weight = nn.ParameterDict({})
        self.mixup_blo_lora_A = nn.ParameterDict({})
        self.mixup_blo_lora_B = nn.ParameterDict({})
        self.mixup_blo_bias = nn.ParameterDict({})
        self.mixup_blo_mix_out = nn.ParameterDict({})
        self.mixup_blo_mix_in = nn.ParameterDict({})
        self.mixup_blo_task_weight: dict[str, str] = {}
        self.mixup_blo_scaling: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        # The pretrained weight and bias while merged (W_eff depends on W0, so it must survive a merge).
        # Non-persistent buffers: never saved, but .to()/.half()/.cuda() move and cast them with the model.
        self.register_buffer("_pretrained_weight", None, persistent=False)
        self.register_buffer("_pretrained_bias", None, persistent=False)
        self.kwargs = kwargs
        base = self.get_base_layer()
        if not isinstance(base, MIXED_LAYER_TYPES):
            raise TypeError(
                f"MixupBLO mixes torch.nn.Linear and transformers' Conv1D layers only; got {type(base).__name__}. "
                "Choose Linear modules in target_modules."
            )
        self.in_features, self.out_features = layer_features(base)

    def update_layer(self, adapter_name: str, config: MixupBLOConfig, inference_mode: bool = False) -> None:
        """Create adapter ``adapter_name``: task weight, bias offset and mixing factors."""
        base = self.get_base_layer()
        self.mixup_blo_task_weight[adapter_name] = config.task_weight
        if config.task_weight == "full":
            self.mixup_blo_weight[adapter_name] = nn.Parameter(
                linear_weight(base).detach().clone(memory_format=torch.contiguous_format))
        else:
            self.mixup_blo_scaling[adapter_name] = config.lora_alpha / config.r
            lora_a = torch.empty(config.r, self.in_features)
            nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5))
            self.mixup_blo_lora_A[adapter_name] = nn.Parameter(lora_a)
            self.mixup_blo_lora_B[adapter_name] = nn.Parameter(torch.zeros(self.out_features, config.r))
        if config.train_bias and base.bias is not None:
            self.mixup_blo_bias[adapter_name] = nn.Parameter(torch.zeros(self.out_features))
        mix_out = torch.randn(self.out_features, 1) * config.init_std + config.init_mean
        mix_in = torch.randn(1, self.in_features) * config.init_std + config.init_mean
        self.mixup_blo_mix_out[adapter_name] = nn.Parameter(mix_out.clamp_(0.0, 1.0))
        self.mixup_blo_mix_in[adapter_name] = nn.Parameter(mix_in.clamp_(0.0, 1.0))
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    # ---- the mixed weight -----------------------------------------------------------------------
    def _pretrained(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """W0 (in (out, in) layout) and the pretrained bias, also while merged."""
        base = self.get_base_layer()
        if self._pretrained_weight is not None:
            return linear_weight(base, self._pretrained_weight), self._pretrained_bias
        return linear_weight(base), base.bias

    def mixing_factors(self, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) of ``adapter`` clamped to [0, 1]."""
        return self.mixup_blo_mix_out[adapter].clamp(0.0, 1.0), self.mixup_blo_mix_in[adapter].clamp(0.0, 1.0)

    def mixed_weight(self, adapter: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``W_eff`` of ``adapter``, computed in ``dtype`` (default: the adapter's dtype)."""
        a, b = self.mixing_factors(adapter)
        dtype = dtype or a.dtype
        a, b = a.to(dtype), b.to(dtype)
        w0 = self._pretrained()[0].to(dtype)
        if self.mixup_blo_task_weight[adapter] == "full":
            return (a * b) * self.mixup_blo_weight[adapter].to(dtype) + ((1.0 - a) * (1.0 - b)) * w0
        # W = W0 + s B A, so (a b^T) * W = (a b^T) * W0 + s (a * B)(A * b^T)
        lora_b = self.mixup_blo_lora_B[adapter].to(dtype)
        lora_a = self.mixup_blo_lora_A[adapter].to(dtype)
        low_rank = (a * lora_b) @ (lora_a * b)
        return (a * b + (1.0 - a) * (1.0 - b)) * w0 + self.mixup_blo_scaling[adapter] * low_rank

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``W_eff - W0`` of ``adapter`` in the base weight's layout and the adapter's dtype (what a merge adds
        to the pretrained weight)."""
        delta = self.mixed_weight(adapter, torch.float32) - self._pretrained()[0].float()
        return to_layer_layout(self.get_base_layer(), delta.to(self.mixup_blo_mix_out[adapter].dtype))

    def _combined(self, adapters: list[str], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias with ``adapters`` applied (their deltas add up), computed in ``dtype``."""
        w0, b0 = self._pretrained()
        if len(adapters) == 1:
            weight = self.mixed_weight(adapters[0], dtype)
        else:
            weight = w0.to(dtype) + sum(self.mixed_weight(name, dtype) - w0.to(dtype) for name in adapters)
        bias = None if b0 is None else b0.to(dtype)
        for name in adapters:
            if name in self.mixup_blo_bias:
                bias = bias + self.mixup_blo_bias[name].to(dtype)
        return weight, bias


class Linear(nn.Module, MixupBLOLayer):
    """A Linear layer mixed by one or more MixupBLO adapters."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: MixupBLOConfig, **kwargs: Any) -> None:
        super().__init__()
        MixupBLOLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, inference_mode=config.inference_mode)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Write ``W_eff`` (and the bias offsets) into the base Linear; the original is kept for unmerge."""
        adapter_names = [n for n in check_adapters_to_merge(self, adapter_names) if n in self.mixup_blo_mix_out]
        if not adapter_names:
            return
        self._refuse_a_changed_pretrained_weight("merge")
        base = self.get_base_layer()
        if self._pretrained_weight is None:
            self._pretrained_weight = base.weight.detach().clone()
            self._pretrained_bias = None if base.bias is None else base.bias.detach().clone()
        merged = [*self.merged_adapters, *adapter_names]
        with torch.no_grad():
            weight, bias = self._combined(merged, torch.float32)
            # checked in the base layer's dtype: a finite fp32 weight can overflow fp16
            weight = weight.to(base.weight.dtype)
            bias = None if bias is None else bias.to(base.bias.dtype)
            if safe_merge and not (torch.isfinite(weight).all() and (bias is None or torch.isfinite(bias).all())):
                if not self.merged:
                    self._pretrained_weight = self._pretrained_bias = None
                raise ValueError(
                    f"NaNs or infinities in the merged weights of adapter(s) {adapter_names}: the adapter is broken "
                    "(check the training loss); nothing was merged."
                )
            base.weight.data = to_layer_layout(base, weight).contiguous()
            if bias is not None:
                base.bias.data = bias
        self.merged_adapters.extend(adapter_names)

    def _refuse_a_changed_pretrained_weight(self, action: str) -> None:
        """Stacked on another adapter, MixupBLO mixes with the innermost weight as its W0: it cannot merge (its
        merge replaces that weight, the other adapter's merge adds to it) nor run while the other is merged."""
        inner = self.base_layer
        if not isinstance(inner, BaseTunerLayer):
            return
        if action == "merge" or inner.merged:
            raise ValueError(
                f"MixupBLO cannot {action} on a layer another adapter ({type(inner).__name__}) also adapts"
                f"{' and has merged' if inner.merged else ''}: it mixes with the pretrained weight, which that "
                "adapter's merge changes. Keep both unmerged (their outputs add up), or merge_and_unload the other "
                "adapter before adding MixupBLO."
            )

    def unmerge(self) -> None:
        """Restore the pretrained weight and bias exactly."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        base.weight.data = self._pretrained_weight
        if self._pretrained_bias is not None:
            base.bias.data = self._pretrained_bias
        self._pretrained_weight = self._pretrained_bias = None
        self.merged_adapters.clear()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        previous_dtype = x.dtype
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.mixup_blo_mix_out]
        if not active:
            return self.base_layer(x, *args, **kwargs)
        dtype = self.mixup_blo_mix_out[active[0]].dtype
        weight, bias = self._combined(active, dtype)
        if isinstance(self.base_layer, BaseTunerLayer):
            # Another adapter adapts the same layer below this one: it must run, and W_eff - W0 (and the bias
            # offsets) are added to its output.
            self._refuse_a_changed_pretrained_weight("run")
            w0, b0 = self._pretrained()
            delta_bias = None if bias is None else bias - b0.to(dtype)
            result = self.base_layer(x, *args, **kwargs)
            delta = nn.functional.linear(self._cast_input_dtype(x, dtype), weight - w0.to(dtype), delta_bias)
            return (result + delta.to(result.dtype)).to(previous_dtype)
        result = nn.functional.linear(self._cast_input_dtype(x, dtype), weight, bias)
        return result.to(previous_dtype)

    def __repr__(self) -> str:
        return "mixup_blo." + super().__repr__()
