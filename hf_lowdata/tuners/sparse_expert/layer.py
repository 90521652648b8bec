"""Sparse interpolated experts on one weight tensor: a dense delta and M hard-concrete masks.

For a task with expert weights ``w`` (non-negative, summing to one) the layer's weight is

    W = W0 + (sum_m w_m z_m) * d

with ``d`` a dense delta (initialised at zero, so the adapter starts as the identity) and
``z_m = clamp(sigmoid(log_alpha_m / beta) * (zeta - gamma) + gamma, 0, 1)`` the hard-concrete mask
of expert m. The authors' code turns the hard-concrete noise off (``u`` drawn from 0.5 +- 1e-6), so
masks are deterministic functions of their logits; ``beta`` is 2/3 during meta-training and 1 in
the adapted model. Once meta-training is over the masks are made binary (1 where the mask is
non-zero at the meta-training temperature, the support the sparsity constraint counted) and stored
bit-packed (``masks="binary"``: one bit per entry).

Memory and time: the mask logits hold M floats per targeted weight (8 x 10.6M for the encoder
Linears of MiniLM: 340 MB in fp32, plus 680 MB of Adam state in meta-training; the default targets
are the encoder's Linear weights only, for that reason). The masks therefore never go through
autograd as M separate tensors: :class:`_MixedMaskDelta` recomputes them in its backward pass, and
meta-training (:class:`_CachedMixDelta`) computes them once per optimizer step and forms their
gradient for the whole meta-batch with one matrix product. Binary masks cost 1 bit per entry (10.6 MB
for MiniLM with 8 experts), so a deployed adapter is the fp32 delta (42.5 MB) plus the masks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..base import TransposedLinear, layer_features, transposed_linear
from ..delta_merge import merge_deltas, unmerge_deltas
from .config import SparseExpertConfig

#: The layers SparseExpert adapts; a transformers ``Conv1D`` (GPT-2) keeps its delta and masks in its own
#: (in, out) layout, since masks and delta act entry by entry.
SUPPORTED_LAYERS = (nn.Linear, TransposedLinear, nn.Conv2d)


# --------------------------------------------------------------------------------------------------
# Hard-concrete masks and bit packing (pure functions)


def hard_concrete(logits: torch.Tensor, beta: float, gamma: float, zeta: float) -> torch.Tensor:
    """The noise-free hard-concrete mask ``clamp(sigmoid(logits / beta) * (zeta - gamma) + gamma, 0, 1)``."""
    return (torch.sigmoid(logits / beta) * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def density_shift(beta: float, gamma: float, zeta: float) -> float:
    """``P(z > 0) = sigmoid(log_alpha + shift)`` for the hard-concrete distribution (Louizos et al. 2018)."""
    return -beta * math.log(-gamma / zeta)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A boolean tensor as uint8 bytes, 8 entries per byte (most significant bit first)."""
    flat = mask.detach().reshape(-1).to(torch.uint8)
    flat = F.pad(flat, (0, (-flat.numel()) % 8)).view(-1, 8)
    place = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=flat.device)
    return (flat * place).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The first ``numel`` entries packed by :func:`pack_bits`, as a flat boolean tensor."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    if bits.numel() < numel:
        raise ValueError(f"packed mask holds {bits.numel()} bits but {numel} are needed: the adapter file is corrupt")
    return bits.reshape(-1)[:numel].bool()


class _MixedMaskDelta(torch.autograd.Function):
    """``d * sum_m w_m hard_concrete(log_alpha_m)``, recomputing the masks in backward to save memory.

    The clamp to [0, 1] passes gradients straight through (the derivative of the stretched sigmoid
    everywhere): with the noise off, an exactly-zero mask entry would otherwise never see the task
    gradient again, and any overshoot of the sparsity target would be permanent. [deviation]
    """

    @staticmethod
    def forward(ctx, delta, logits, weights, beta, gamma, zeta):  # noqa: D102 - autograd API
        mix = torch.zeros_like(delta)
        for m in range(logits.shape[0]):
            mix.add_(hard_concrete(logits[m], beta, gamma, zeta) * weights[m])
        ctx.save_for_backward(delta, logits, weights)
        ctx.hc = (beta, gamma, zeta)
        return delta * mix

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102 - autograd API
        delta, logits, weights = ctx.saved_tensors
        beta, gamma, zeta = ctx.hc
        need_delta, need_logits, need_weights = ctx.needs_input_grad[:3]
        grad_scaled = grad_out * delta
        mix = torch.zeros_like(delta) if need_delta else None
        grad_logits = torch.empty_like(logits) if need_logits else None
        grad_weights = torch.empty_like(weights) if need_weights else None
        for m in range(logits.shape[0]):
            s = torch.sigmoid(logits[m] / beta)
            stretched = s * (zeta - gamma) + gamma
            z = stretched.clamp(0.0, 1.0)
            if mix is not None:
                mix.add_(z * weights[m])
            if grad_weights is not None:
                grad_weights[m] = (grad_scaled * z).sum()
            if grad_logits is not None:
                grad_logits[m] = grad_scaled * (weights[m] * (zeta - gamma) / beta) * s * (1 - s)
        grad_delta = grad_out * mix if mix is not None else None
        return grad_delta, grad_logits, grad_weights, None, None, None


class _CachedMixDelta(torch.autograd.Function):
    """``d * sum_m w_m z_m`` with the masks ``z`` computed once per optimizer step (meta-training).

    Within a meta-batch the mask logits do not change, only the expert weights ``w`` of each episode
    do. So the masks are cached, and instead of an M x N gradient per episode the backward pass
    records ``(grad * d, w)``; :meth:`SparseExpertLayer.finalize_mask_grad` turns the records of the
    whole meta-batch into the logits' gradient with one matrix product. Same gradient as
    :class:`_MixedMaskDelta`, a fraction of the cost.
    """

    @staticmethod
    def forward(ctx, delta, logits, weights, layer, adapter):  # noqa: D102 - autograd API
        masks = layer._cached_masks(adapter)
        mix = torch.einsum("m,m...->...", weights.to(masks.dtype), masks)
        ctx.save_for_backward(delta, weights, mix)
        ctx.layer, ctx.adapter = layer, adapter
        return delta * mix

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102 - autograd API
        delta, weights, mix = ctx.saved_tensors
        scaled = grad_out * delta
        grad_weights = None
        if ctx.needs_input_grad[2]:
            masks = ctx.layer._cached_masks(ctx.adapter)
            grad_weights = (masks.reshape(masks.shape[0], -1) @ scaled.reshape(-1)).to(weights.dtype)
        if ctx.needs_input_grad[1]:
            ctx.layer._mask_grad_records.setdefault(ctx.adapter, []).append((scaled, weights.detach()))
        grad_delta = grad_out * mix if ctx.needs_input_grad[0] else None
        return grad_delta, None, grad_weights, None, None


# --------------------------------------------------------------------------------------------------
# The tuner layer


class SparseExpertTunerLayer(BaseTunerLayer):
    """Common base of the SparseExpert layers and the router, so PEFT's adapter bookkeeping reaches both."""


class SparseExpertLayer(SparseExpertTunerLayer):
    """Dense delta + M masks per adapter around an ``nn.Linear``, a ``Conv1D`` or an ``nn.Conv2d``."""

    adapter_layer_names = ("sparse_expert_delta", "sparse_expert_logits")
    other_param_names = ("sparse_expert_bits", "sparse_expert_weights", "sparse_expert_settings")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.sparse_expert_delta = nn.ParameterDict({})
        self.sparse_expert_logits = nn.ParameterDict({})
        self.sparse_expert_bits = BufferDict({}, persistent=True)
        self.sparse_expert_weights = BufferDict({}, persistent=True)
        self.sparse_expert_settings: dict[str, SparseExpertConfig] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        #: When True the layer is the plain base layer (used to compute frozen-backbone features and for
        #: functional calls with explicitly computed weights); set by SparseExpertModel.bypass().
        self.sparse_expert_bypass = False
        self._mask_cache: dict[str, torch.Tensor] = {}
        self._binary_meta_masks: set[str] = set()  # adapters meta-training with the binary masks (late phase)
        self._mask_grad_records: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.kwargs = kwargs
        base = self.get_base_layer()
        if not isinstance(base, SUPPORTED_LAYERS):
            raise TypeError(
                f"SparseExpert adapts nn.Linear, transformers' Conv1D and nn.Conv2d layers, not "
                f"{type(base).__name__}. Remove this module from target_modules."
            )
        self.in_features, self.out_features = layer_features(base)

    def update_layer(self, adapter_name: str, config: SparseExpertConfig, inference_mode: bool = False) -> None:
        """Create the delta, the masks and the expert weights of ``adapter_name`` on this layer."""
        shape = self.get_base_layer().weight.shape
        m = config.num_experts
        self.sparse_expert_delta[adapter_name] = nn.Parameter(torch.zeros(shape))
        if config.masks == "relaxed":
            self.sparse_expert_logits[adapter_name] = nn.Parameter(torch.randn(m, *shape) * config.mask_init_std)
        else:
            # A fresh binary adapter keeps every entry (all-ones masks); binary masks normally come from a file.
            self.sparse_expert_bits[adapter_name] = torch.full((math.ceil(m * shape.numel() / 8),), 255, dtype=torch.uint8)
        self.sparse_expert_weights[adapter_name] = torch.full((m,), 1.0 / m)
        self.sparse_expert_settings[adapter_name] = config
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    # ---- masks ----------------------------------------------------------------------------------
    def expert_masks(self, adapter: str, beta: float = 1.0) -> torch.Tensor:
        """The M masks of ``adapter``, shape ``(M, *weight.shape)``: soft at temperature ``beta``, or binary."""
        config = self.sparse_expert_settings[adapter]
        shape = self.get_base_layer().weight.shape
        if adapter in self.sparse_expert_logits:
            gamma, zeta = config.stretch_limits
            return hard_concrete(self.sparse_expert_logits[adapter], beta, gamma, zeta)
        bits = unpack_bits(self.sparse_expert_bits[adapter], config.num_experts * shape.numel())
        return bits.view(config.num_experts, *shape).to(self.sparse_expert_delta[adapter].dtype)

    def task_delta(
        self, adapter: str, expert_weights: torch.Tensor, beta: float | None = None, deployed: bool = False
    ) -> torch.Tensor:
        """``(sum_m w_m z_m) * d`` for expert weights ``w`` (differentiable in d, the logits and ``w``).

        ``beta`` is the mask temperature (``None``: 1, the adapted model's); meta-training passes its
        own. Binary masks ignore it. ``deployed=True`` takes relaxed masks as :meth:`binarize` will store
        them (1 where non-zero at the meta-training temperature; no gradient to the logits).
        """
        delta = self.sparse_expert_delta[adapter]
        weights = expert_weights.to(delta.dtype)
        if deployed and adapter in self.sparse_expert_logits:
            masks = self.kept_entries(adapter).to(delta.dtype)
            return delta * torch.einsum("m,m...->...", weights, masks)
        if adapter in self.sparse_expert_logits:
            gamma, zeta = self.sparse_expert_settings[adapter].stretch_limits
            logits = self.sparse_expert_logits[adapter]
            return _MixedMaskDelta.apply(delta, logits, weights, 1.0 if beta is None else beta, gamma, zeta)
        masks = self.expert_masks(adapter)
        return delta * torch.einsum("m,m...->...", weights, masks)

    def kept_entries(self, adapter: str) -> torch.Tensor:
        """The entries :meth:`binarize` keeps (bool, ``(M, *weight.shape)``): where the relaxed mask is non-zero at
        the meta-training temperature."""
        threshold = self.sparse_expert_settings[adapter].mask_threshold_logit
        return self.sparse_expert_logits[adapter].detach() > threshold

    # ---- meta-training: masks cached per optimizer step, deferred logit gradients ----------------
    def _cached_masks(self, adapter: str) -> torch.Tensor:
        """The masks of this optimizer step: relaxed at the meta-training temperature, or (late phase, see
        :meth:`SparseExpertModel.use_binary_meta_masks`) the binary masks :meth:`binarize` will store."""
        if adapter not in self._mask_cache:
            config = self.sparse_expert_settings[adapter]
            with torch.no_grad():
                if adapter in self._binary_meta_masks:
                    masks = self.kept_entries(adapter).to(self.sparse_expert_delta[adapter].dtype)
                else:
                    masks = self.expert_masks(adapter, beta=config.mask_temperature)
                self._mask_cache[adapter] = masks
        return self._mask_cache[adapter]

    def meta_task_delta(self, adapter: str, expert_weights: torch.Tensor) -> torch.Tensor:
        """:meth:`task_delta` at the meta-training temperature with cached masks; the mask logits' gradient
        is accumulated by :meth:`finalize_mask_grad` (call it before the optimizer step)."""
        if adapter not in self.sparse_expert_logits:
            raise ValueError(f"Adapter {adapter!r} has binary masks; meta-training needs relaxed ones.")
        delta = self.sparse_expert_delta[adapter]
        return _CachedMixDelta.apply(delta, self.sparse_expert_logits[adapter], expert_weights.to(delta.dtype), self,
                                     adapter)

    @torch.no_grad()
    def finalize_mask_grad(self, adapter: str) -> None:
        """Turn the recorded ``(grad * d, w)`` of the meta-batch into the mask logits' gradient and drop the
        cached masks (the logits are about to change). The clamp passes gradients straight through."""
        records = self._mask_grad_records.pop(adapter, [])
        self._mask_cache.pop(adapter, None)
        if not records or adapter not in self.sparse_expert_logits:
            return
        logits = self.sparse_expert_logits[adapter]
        config = self.sparse_expert_settings[adapter]
        gamma, zeta = config.stretch_limits
        beta = config.mask_temperature
        weights = torch.stack([w for _, w in records]).to(logits.dtype)  # (E, M)
        scaled = torch.stack([g.reshape(-1) for g, _ in records]).to(logits.dtype)  # (E, N)
        grad = (weights.T @ scaled).view_as(logits)
        s = torch.sigmoid(logits / beta)
        grad.mul_(s * (1 - s)).mul_((zeta - gamma) / beta)
        logits.grad = grad if logits.grad is None else logits.grad + grad

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The weight change of ``adapter`` with its stored expert weights (what merging adds)."""
        return self.task_delta(adapter, self.sparse_expert_weights[adapter])

    @torch.no_grad()
    def push_logits(self, adapter: str, step: torch.Tensor) -> None:
        """Lower the mask logits of expert m by ``step[m] * 4 sigmoid'(log_alpha + shift)``: a step down the
        expected-L0 gradient, largest (``step[m]``) at the entries about to reach zero."""
        if adapter not in self.sparse_expert_logits:
            return
        config = self.sparse_expert_settings[adapter]
        logits = self.sparse_expert_logits[adapter]
        s = torch.sigmoid(logits + density_shift(config.mask_temperature, *config.stretch_limits))
        view = (-1,) + (1,) * (logits.dim() - 1)
        logits.sub_(4.0 * s * (1 - s) * step.to(logits.device, logits.dtype).view(view))

    def nonzeros(self, adapter: str) -> torch.Tensor:
        """Per-expert count of non-zero mask entries (relaxed masks: non-zero at the meta-training temperature)."""
        if adapter in self.sparse_expert_logits:
            kept = self.kept_entries(adapter)
            return kept.reshape(kept.shape[0], -1).sum(dim=1)
        masks = self.expert_masks(adapter)
        return (masks.reshape(masks.shape[0], -1) > 0).sum(dim=1)

    def clamp_logits(self, adapter: str) -> None:
        """Keep the mask logits of ``adapter`` inside ``[-mask_logit_bound, mask_logit_bound]``."""
        if adapter in self.sparse_expert_logits:
            bound = self.sparse_expert_settings[adapter].mask_logit_bound
            with torch.no_grad():
                self.sparse_expert_logits[adapter].clamp_(-bound, bound)

    def binarize(self, adapter: str) -> None:
        """Replace the mask logits of ``adapter`` by bit-packed binary masks: 1 where the mask is non-zero at
        the meta-training temperature (so the binary sparsity is the one meta-training constrained)."""
        if adapter not in self.sparse_expert_logits:
            return
        kept = self.kept_entries(adapter)
        del self.sparse_expert_logits[adapter]
        self.sparse_expert_bits[adapter] = pack_bits(kept)


class SparseExpertModule(nn.Module, SparseExpertLayer):
    """A SparseExpert-adapted ``nn.Linear``, ``Conv1D`` or ``nn.Conv2d``."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: SparseExpertConfig, **kwargs: Any) -> None:
        super().__init__()
        SparseExpertLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, inference_mode=config.inference_mode)

    # ---- PEFT's merge / forward -----------------------------------------------------------------
    def _base_apply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        base = self.get_base_layer()
        if isinstance(base, nn.Conv2d):
            return base._conv_forward(x, weight, bias)
        if isinstance(base, TransposedLinear):
            return transposed_linear(x, weight, bias)
        return F.linear(x, weight, bias)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the active adapters' weight changes to the base weight (the result is a plain dense layer)."""
        merge_deltas(self, adapter_names, safe_merge, self.sparse_expert_delta.__contains__, "SparseExpert")

    def unmerge(self) -> None:
        """Subtract every merged adapter's weight change again."""
        unmerge_deltas(self, self.sparse_expert_delta.__contains__)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        previous_dtype = x.dtype
        if self.sparse_expert_bypass:
            return self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            result = self.base_layer(x, *args, **kwargs)
        elif self.merged:
            result = self.base_layer(x, *args, **kwargs)
        else:
            result = self.base_layer(x, *args, **kwargs)
            for adapter in self.active_adapters:
                if adapter not in self.sparse_expert_delta:
                    continue
                delta = self.get_delta_weight(adapter)
                result = result + self._base_apply(self._cast_input_dtype(x, delta.dtype), delta, None).to(result.dtype)
        return result.to(previous_dtype)

    def __repr__(self) -> str:
        return "sparse_expert." + super().__repr__()
