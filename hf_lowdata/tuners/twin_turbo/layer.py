"""The TwinTurbo tuner layer: projector + head in place of a model's classification head.

The head module of a transformers model only sees a pooled vector, but the projector needs every
token. A :class:`TokenTap` (a forward hook on the backbone, registered when the adapter is injected,
so it exists on every loading route: ``get_peft_model``, ``PeftModel``, transformers'
``load_adapter``) keeps the backbone's last token states and the attention mask of the current
forward pass; the layer takes them instead of its pooled input. Padding positions are masked out of
every attention and of the pooling, so a text gives the same logits however much it is padded.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .config import TwinTurboConfig

#: Batch keys of cached token states (:mod:`hf_lowdata.features`): (B, T, d) states, (B, T) mask.
TOKENS_KEY, MASK_KEY = "token_states", "token_mask"


def token_states(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A backbone output as tokens (B, T, d) and a boolean mask (B, T) of the real (unpadded) tokens.

    (B, T, d) text states keep their shape and use ``attention_mask``; a CNN feature map (B, C, H, W)
    becomes H*W tokens of width C; plain features (B, d) are one token.
    """
    if hidden.ndim == 2:
        tokens = hidden.unsqueeze(1)
    elif hidden.ndim == 3:
        tokens = hidden
    elif hidden.ndim == 4:
        tokens = hidden.flatten(2).transpose(1, 2)
    else:
        raise ValueError(f"Token states must be (B, d), (B, T, d) or (B, C, H, W); got shape {tuple(hidden.shape)}.")
    if attention_mask is None or hidden.ndim != 3:
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    if attention_mask.shape != tokens.shape[:2]:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the token states are {tuple(tokens.shape)}; "
            "TwinTurbo needs the 2-D (batch, tokens) padding mask the tokenizer returns."
        )
    return tokens, attention_mask.to(torch.bool)


class TokenTap:
    """Forward hook on the backbone that keeps the last token states and padding mask.

    Not an ``nn.Module``, so it is never part of the adapter's state. The states are kept per
    thread: forward hooks run in the calling thread, so threads sharing one model (a web server,
    ``nn.DataParallel``'s replicas) each get their own backbone's states, never another call's.
    Copies and pickles carry no states (they are per forward pass).
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._signatures: dict[type, inspect.Signature] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    @property
    def _value(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return getattr(self._local, "value", None)

    @_value.setter
    def _value(self, value: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        self._local.value = value

    def _attention_mask(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor | None:
        if "attention_mask" in kwargs or not args:
            return kwargs.get("attention_mask")
        signature = self._signatures.get(type(module))
        if signature is None:
            signature = self._signatures[type(module)] = inspect.signature(module.forward)
        try:
            return signature.bind_partial(*args, **kwargs).arguments.get("attention_mask")
        except TypeError:
            return None

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        self._value = token_states(hidden, self._attention_mask(module, args, kwargs))

    def take(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The token states of the current forward pass (consumed: a second call raises)."""
        value, self._value = self._value, None
        if value is None:
            raise RuntimeError(
                "TwinTurbo found no token states: the adapted head was called without a forward pass through the "
                "backbone (call the whole model, not its head)."
            )
        if value[0].shape[0] != batch_size:
            raise RuntimeError(
                f"TwinTurbo's token states are for a batch of {value[0].shape[0]}, the head got {batch_size}: call the "
                "whole model, not its head."
            )
        return value

    def clear(self) -> None:
        self._value = None


def _key_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B, 1, 1, T) attention mask (True = may be attended to)."""
    return mask[:, None, None, :]


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        q, k, v = self.qkv(h).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=_key_mask(mask), dropout_p=p)
        return self.out(a.transpose(1, 2).reshape(b, t, d))


class _EncoderLayer(nn.Module):
    """Pre-LN transformer encoder layer (attention, then a GELU MLP)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = _SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = h + self.drop(self.attention(self.norm1(h), mask))
        return h + self.drop(self.mlp(self.norm2(h)))


class _AttentionPool(nn.Module):
    """One learned query cross-attending the unpadded tokens (multi-head).

    The query starts at zero, so the pooling starts as the mean of the (projected) real tokens.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(dim))
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        k, v = self.kv(h).view(b, t, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q = self.query.view(1, self.heads, 1, d // self.heads).expand(b, -1, -1, -1).to(h.dtype)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=_key_mask(mask))
        return self.out(a.reshape(b, d))


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens: (B, T, d), (B, T) bool -> (B, d)."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class TokenProjector(nn.Module):
    """Token states (B, T, d) -> z* (B, d_p): input LayerNorm + Linear, pre-LN encoder, aggregation.

    The input LayerNorm is an addition to the paper's ``Linear(d -> d_p)`` [recon]: it puts text
    states and CNN feature maps (ReLU6 outputs in [0, 6]) on one scale without per-backbone tuning.
    """

    def __init__(self, token_dim: int, config: TwinTurboConfig) -> None:
        super().__init__()
        dim = config.projector_dim
        self.aggregation = config.aggregation
        self.input_norm = nn.LayerNorm(token_dim)
        self.input = nn.Linear(token_dim, dim)
        self.layers = nn.ModuleList(
            _EncoderLayer(dim, config.projector_heads, config.mlp_ratio, config.dropout)
            for _ in range(config.projector_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.pool = _AttentionPool(dim, config.projector_heads) if config.aggregation == "attention" else None

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] != self.input.in_features or mask.shape != tokens.shape[:2]:
            raise ValueError(
                f"TwinTurbo's projector expects token states (B, T, {self.input.in_features}) with a (B, T) mask; got "
                f"{tuple(tokens.shape)} and {tuple(mask.shape)}. Was the adapter (or the feature cache) made for "
                "another backbone?"
            )
        if not bool(mask.any(dim=1).all()):
            raise ValueError("A sequence with no real token reached TwinTurbo's projector (its attention mask is all 0).")
        h = self.input(self.input_norm(tokens))
        for layer in self.layers:
            h = layer(h, mask)
        h = self.norm(h)
        if self.pool is not None:
            return self.pool(h, mask)
        if self.aggregation == "cls":  # the first real token (left-padded batches start with padding)
            return h[torch.arange(h.shape[0], device=h.device), mask.int().argmax(dim=1)]
        return masked_mean(h, mask)


class ClassHead(nn.Module):
    """z* -> class logits, in the three variants of the task-space bound."""

    def __init__(self, dim: int, num_labels: int, kind: str, temperature: float, dropout: float) -> None:
        super().__init__()
        self.kind, self.temperature, self.num_labels = kind, temperature, num_labels
        self.drop = nn.Dropout(dropout)
        if kind == "infonce":
            self.proj = nn.Linear(dim, dim)
            self.class_embeddings = nn.Parameter(torch.randn(num_labels, dim) / dim**0.5)
        else:
            self.linear = nn.Linear(dim, num_labels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.drop(z)
        if self.kind == "infonce":
            u = F.normalize(self.proj(z), dim=-1)
            return u @ F.normalize(self.class_embeddings, dim=-1).t() / self.temperature
        return self.linear(z)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """q(y|x): softmax, or for one-vs-rest logits the normalised sigmoids."""
        if self.kind == "binary":
            p = torch.sigmoid(logits)
            return p / p.sum(-1, keepdim=True).clamp(min=1e-12)
        return logits.softmax(-1)


def head_dims(module: nn.Module) -> tuple[int | None, int | None]:
    """(input width, classes) of a head module: its first Linear's input, its last Linear's output."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None, None
    return linears[0].in_features, linears[-1].out_features


class TwinTurboLayer(nn.Module, BaseTunerLayer):
    """Wraps a classification head; while an adapter is active, logits come from projector + head."""

    adapter_layer_names = ("twin_turbo_projector", "twin_turbo_head")
    other_param_names = ()

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: TwinTurboConfig, tap: TokenTap) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.twin_turbo_projector = nn.ModuleDict()
        self.twin_turbo_head = nn.ModuleDict()
        self.token_tap = tap
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: TwinTurboConfig, **kwargs: Any) -> None:
        in_dim, out_dim = head_dims(self.get_base_layer())
        token_dim = config.token_dim or in_dim
        num_labels = config.num_labels or out_dim
        if token_dim is None or num_labels is None:
            raise ValueError(
                f"Cannot read the token width / number of classes from the targeted module "
                f"{type(self.get_base_layer()).__name__} (it has no Linear); set token_dim= and num_labels= in "
                "TwinTurboConfig."
            )
        if num_labels < 2:
            raise ValueError(f"TwinTurbo needs at least 2 classes, the targeted head has {num_labels} output(s).")
        self.twin_turbo_projector[adapter_name] = TokenProjector(token_dim, config)
        self.twin_turbo_head[adapter_name] = ClassHead(
            config.projector_dim, num_labels, config.head, config.head_temperature, config.dropout
        )
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _active(self) -> str:
        active = [a for a in self.active_adapters if a in self.twin_turbo_projector]
        if len(active) > 1:
            raise ValueError(
                f"TwinTurbo adapters replace the classification head, so only one can be active at a time; active: "
                f"{active}. Call set_adapter(name) with a single adapter."
            )
        return active[0] if active else ""

    def encode(self, tokens: torch.Tensor, mask: torch.Tensor, adapter: str | None = None,
               chunk_size: int = 64) -> torch.Tensor:
        """z* of the (active) adapter for token states (B, T, d) and their mask; computed in the adapter dtype.

        Sequences are processed in length-sorted chunks of ``chunk_size``, each cut to the token
        positions it uses: padding changes nothing (see the class docstring), so this only saves
        the work a batch padded to its longest member would waste (2-3x on sentence data).
        """
        adapter = adapter or self._active()
        projector = self.twin_turbo_projector[adapter]
        tokens = self._cast_input_dtype(tokens, projector.input.weight.dtype)
        if tokens.shape[0] <= chunk_size:
            used = mask.any(0)
            return projector(tokens[:, used], mask[:, used])
        order = torch.argsort(mask.sum(1), descending=True, stable=True)
        pieces = []
        for start in range(0, len(order), chunk_size):
            idx = order[start : start + chunk_size]
            chunk_mask = mask[idx]
            used = chunk_mask.any(0)
            pieces.append(projector(tokens[idx][:, used], chunk_mask[:, used]))
        return torch.cat(pieces)[torch.argsort(order)]

    def classify(self, z: torch.Tensor, adapter: str | None = None) -> torch.Tensor:
        """Class logits of the (active) adapter for z*."""
        return self.twin_turbo_head[adapter or self._active()](z)

    def adapter_head(self, adapter: str | None = None) -> ClassHead:
        return self.twin_turbo_head[adapter or self._active()]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        try:
            adapter = "" if self.disable_adapters else self._active()
        except ValueError:
            self.token_tap.clear()  # never leave this pass's states for a later call
            raise
        if not adapter:
            self.token_tap.clear()
            return self.base_layer(x, *args, **kwargs)
        tokens, mask = self.token_tap.take(x.shape[0])
        logits = self.classify(self.encode(tokens, mask, adapter), adapter).to(x.dtype)
        if x.dim() > 2 and isinstance(self.base_layer, nn.Linear):
            # a per-token head (decoder classifiers: Llama's, GPT-2's ``score``): the model picks the
            # last real token's logits after the head, so every position carries the sequence's logits
            logits = logits.view(logits.shape[0], *[1] * (x.dim() - 2), -1).expand(*x.shape[:-1], -1)
        return logits

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(MERGE_ERROR)

    def unmerge(self) -> None:
        """Nothing is ever merged."""

    def __repr__(self) -> str:
        return "twin_turbo." + super().__repr__()


MERGE_ERROR = (
    "TwinTurbo adapters cannot be merged: the projector is a small transformer over the backbone's token states, "
    "not a weight delta, so there is nothing to fold into the backbone. Keep the PeftModel for inference (backbone "
    "+ projector + head), or call unload() to get the base model back without the adapter."
)
