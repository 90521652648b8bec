"""The SMAT router: from a task's support set to the weights of its sparse experts.

The router reads the class prototypes of the support set (mean features of each class, computed
with the *frozen* pretrained backbone), appends a few learned "skill" tokens, runs one small pre-LN
transformer block (spectral norm on its Linear layers, as in the authors' code) and scores its first
output token against M learned keys: ``l = K h_0`` (one logit per expert). Expert weights are
``s = sigmoid(l / T)`` (a relaxed-Bernoulli sample of it during meta-training) normalised to sum to
one, so they are non-negative and form a convex combination of the experts' masks.

The router lives in :class:`SparseExpertRouter`, a PEFT tuner layer attached to the model root as
``smat_router``: PEFT then saves, loads, (de)activates and deletes it with the rest of the
adapter, and ``merge_and_unload`` removes it (it changes no weight by itself).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import SparseExpertConfig
from .layer import SparseExpertTunerLayer

ROUTER_ATTRIBUTE = "smat_router"
#: The adapter-keyed container of router networks inside the router layer.
ROUTER_NET = "sparse_expert_router_net"


def _maybe_spectral(layer: nn.Linear, enabled: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(layer) if enabled else layer


class RouterNet(nn.Module):
    """Prototypes + skill tokens -> one transformer block -> M expert logits."""

    def __init__(self, config: SparseExpertConfig, feature_dim: int) -> None:
        super().__init__()
        if feature_dim % config.router_heads:
            raise ValueError(
                f"The router's feature size {feature_dim} is not divisible by router_heads={config.router_heads}; "
                "choose router_heads that divides it."
            )
        hidden = max(1, round(feature_dim * config.router_mlp_ratio))
        sn = config.router_spectral_norm
        self._build_args = (config, feature_dim)  # to rebuild it when unpickled (__reduce__)
        self.heads = config.router_heads
        self.skill_tokens = nn.Parameter(torch.randn(config.num_skill_tokens, feature_dim) * 1e-3)
        self.keys = nn.Parameter(nn.init.kaiming_normal_(torch.empty(config.num_experts, feature_dim)))
        self.norm1 = nn.LayerNorm(feature_dim)
        self.qkv = _maybe_spectral(nn.Linear(feature_dim, 3 * feature_dim), sn)
        self.proj = _maybe_spectral(nn.Linear(feature_dim, feature_dim), sn)
        self.norm2 = nn.LayerNorm(feature_dim)
        self.fc1 = _maybe_spectral(nn.Linear(feature_dim, hidden), sn)
        self.fc2 = _maybe_spectral(nn.Linear(hidden, feature_dim), sn)

    def __deepcopy__(self, memo: dict) -> RouterNet:
        """The usual module deep copy (a copied optimizer's memo still maps to the copy's parameters):
        ``__reduce__`` below is for pickling only."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__dict__, memo))
        return new

    def __copy__(self) -> RouterNet:
        new = type(self).__new__(type(self))
        new.__setstate__(dict(self.__dict__))
        return new

    def __reduce__(self) -> tuple:
        """Pickle (``torch.save(model)``, multiprocessing, hyperparameter-search tools) through the state dict.

        torch refuses to pickle spectral-norm parametrized modules directly, so the network is rebuilt
        from its config and loads its state: the same weights, power-iteration vectors, device,
        dtype and frozen parameters; the whole network gets its own train/eval mode (a submodule set
        to another mode than the network's is not kept).
        """
        frozen = tuple(name for name, p in self.named_parameters() if not p.requires_grad)
        return _rebuild_router_net, (*self._build_args, self.state_dict(), frozen, self.training)

    def forward(self, prototypes: torch.Tensor) -> torch.Tensor:
        """Expert logits (M,) for class prototypes of shape (num_classes, feature_dim)."""
        if prototypes.dim() != 2 or prototypes.shape[1] != self.keys.shape[1]:
            raise ValueError(
                f"The router expects class prototypes of shape (num_classes, {self.keys.shape[1]}), got "
                f"{tuple(prototypes.shape)}. Compute them with the backbone the adapter was built for."
            )
        tokens = torch.cat([prototypes.to(self.keys.dtype), self.skill_tokens], dim=0).unsqueeze(0)
        n, d = tokens.shape[1], tokens.shape[2]
        q, k, v = self.qkv(self.norm1(tokens)).view(1, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, n, d)
        tokens = tokens + self.proj(attended)
        tokens = tokens + self.fc2(F.gelu(self.fc1(self.norm2(tokens))))
        return self.keys @ tokens[0, 0]


def _rebuild_router_net(
    config: SparseExpertConfig, feature_dim: int, state: dict[str, torch.Tensor], frozen: tuple[str, ...], training: bool
) -> RouterNet:
    """Unpickle a :class:`RouterNet` (see ``RouterNet.__reduce__``) without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        net = RouterNet(config, feature_dim)
    reference = state["keys"]
    net = net.to(device=reference.device, dtype=reference.dtype)
    net.load_state_dict(state)
    for name, parameter in net.named_parameters():
        parameter.requires_grad_(name not in frozen)
    return net.train(training)


def expert_weights(
    logits: torch.Tensor, temperature: float, sample: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Non-negative expert weights summing to one from router logits.

    ``sample=True`` draws a relaxed-Bernoulli sample of ``sigmoid(logits / temperature)`` (meta-training,
    reparameterised so gradients reach the router); otherwise the expectation-free ``sigmoid(logits / T)``.
    """
    if temperature <= 0:
        raise ValueError(f"The router temperature must be positive, got {temperature}.")
    if sample:
        uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float32).to(logits.device)
        uniform = uniform.clamp(1e-6, 1 - 1e-6).to(logits.dtype)
        scores = torch.sigmoid((logits + torch.log(uniform) - torch.log1p(-uniform)) / temperature)
    else:
        scores = torch.sigmoid(logits / temperature)
    return scores / (scores.sum() + 1e-8)


class SparseExpertRouter(nn.Module, SparseExpertTunerLayer):
    """Holds one :class:`RouterNet` per adapter; a tuner layer without a base layer."""

    adapter_layer_names = ("sparse_expert_router_net",)
    other_param_names = ()

    def __init__(self) -> None:
        super().__init__()
        self.sparse_expert_router_net = nn.ModuleDict({})
        self._disable_adapters = False
        self._active_adapter = "default"
        self.merged_adapters = []

    def update_layer(
        self, adapter_name: str, config: SparseExpertConfig, feature_dim: int, device: torch.device | None = None
    ) -> None:
        """Create the router of ``adapter_name`` (fp32, on ``device``)."""
        net = RouterNet(config, feature_dim)
        if device is not None and not any(p.is_meta for p in net.parameters()):  # meta: low_cpu_mem_usage loading
            net = net.to(device)
        self.sparse_expert_router_net[adapter_name] = net
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def logits(self, adapter: str, prototypes: torch.Tensor) -> torch.Tensor:
        """Router logits of ``adapter`` for the class prototypes of a task."""
        if adapter not in self.sparse_expert_router_net:
            raise KeyError(f"No SparseExpert router for adapter {adapter!r}; known: {list(self.sparse_expert_router_net)}")
        return self.sparse_expert_router_net[adapter](prototypes)

    @property
    def weight(self) -> torch.Tensor:
        raise AttributeError("The SparseExpert router wraps no base layer and has no weight.")

    @property
    def bias(self) -> torch.Tensor:
        raise AttributeError("The SparseExpert router wraps no base layer and has no bias.")

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        # No base layer to follow: the router stays in fp32 where it was created or loaded.
        if device is not None and adapter_name in self.sparse_expert_router_net:
            self.sparse_expert_router_net[adapter_name].to(device)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Nothing to merge: the router changes no model weight by itself."""

    def unmerge(self) -> None:
        """Nothing to unmerge (see :meth:`merge`)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "The SparseExpert router is not a layer of the model's forward pass; call "
            "SparseExpertModel.route(prototypes) to weight the experts for a task."
        )
