"""The FTP optimizer: Adam or SGD-momentum whose update is projected back towards the pretrained weights.

Implements Algorithm 1 of Tian et al., "Fast Trainable Projection for Robust Fine-Tuning" (NeurIPS
2023), following ``shared/specs/methods.md`` section 4. At global step t, for each projected tensor
(anchor W0)::

    c   = (W_{t-1} - D) - W0              D: the base optimizer's update (Adam or SGD-momentum)
    r_i = sum_j |c_ij| + 1e-8             per output row (MARS); whole tensor for 1-D tensors or norm="l2"
    first update:  gamma = 1e-8           (the first step is effectively discarded)
    later:         h = sum_i <g_i, c_prev_i> / r_prev_i,  h *= kappa if h > 0
                   gamma -= mu * Adam(h)  (betas 0.9 / 0.999, bias correction with the global step t)
                   gamma = clip(gamma, 1e-8, max_i r_i)
    W_t = W0 + clip(gamma / r_i, 0, 1) * c   rows already inside the radius are left as they are

Where this differs from, or goes beyond, the authors' ``AdamP`` / ``SGDP``:

* state lives in ``self.state[param]`` (never indexed by call order, which broke the authors' code
  when a tensor had no gradient); a tensor's first projected update, whenever it happens, starts its
  radius at 1e-8; the global step is saved in :meth:`state_dict`, so a resumed run continues the
  uninterrupted trajectory exactly;
* SGD uses *decoupled* weight decay like Adam (the authors' SGDP couples it), as the spec asks;
* each param group says what its tensors are projected towards (``projection``): ``"anchor"``, a
  copy of the starting value (drop-in use for full fine-tuning); ``"zero"``, a delta whose anchor is
  implicitly zero (FTP adapters: the pretrained weight is not copied); ``"lora"``, a pair ``[A, B]``
  with delta = ``lora_scale`` * B A; ``"none"``, the plain base update (a new head has no pretrained value).

LoRA deltas (our extension): row i of delta = s B_i A. Projecting that row towards zero by the factor
clip(gamma / r_i, 0, 1) is exactly scaling row i of B, and because the projection never changes A,
A_{t-1} equals the candidate A of the previous step, so the hyper-gradient
<dL/d delta_i, c_prev_i> equals <dL/dB_i, B_cand_prev_i>: exact, with only B's candidate (out x r)
kept. The row norms need the product B A once per step (out x in multiply-adds times r).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import BASE_OPTIMIZERS, NORMS
from .layer import FTPLayer

PROJECTIONS = ("anchor", "zero", "lora", "none")
#: Floor of every projection radius, and the radius of a tensor's first (discarded) update.
GAMMA_FLOOR = 1e-8
#: Added to every norm (as in the authors' code) so that empty rows never divide by zero.
NORM_EPS = 1e-8
#: Adam constants of the radius update (the paper's; only its learning rate mu is a setting).
GAMMA_BETAS = (0.9, 0.999)
GAMMA_EPS = 1e-8
_RADIUS_KEYS = ("gamma", "gamma_exp_avg", "gamma_exp_avg_sq", "r_prev")
#: Module names whose parameters have no pretrained value (new classification heads): plain update.
NO_PRETRAINED_VALUE = ("classifier", "score", "pre_classifier", "modules_to_save")


# ---- the projection's arithmetic (shared with TPGM) --------------------------------------------------
def row_norms(c: torch.Tensor, norm: str) -> torch.Tensor:
    """Distances r_i of ``c`` from zero: per output row (MARS, >= 2-D tensors) or one for the tensor.

    Computed in at least float32 (half-precision weights would make the radius coarse).
    """
    c = c.to(torch.promote_types(c.dtype, torch.float32))
    if norm == "mars" and c.dim() >= 2:
        return c.abs().flatten(1).sum(1) + NORM_EPS
    if norm == "mars":
        return c.abs().sum().reshape(1) + NORM_EPS
    return torch.linalg.vector_norm(c).reshape(1) + NORM_EPS


def row_dots(g: torch.Tensor, c: torch.Tensor, norm: str) -> torch.Tensor:
    """<g_i, c_i> for the rows :func:`row_norms` uses."""
    prod = g.to(torch.promote_types(g.dtype, torch.float32)) * c
    return prod.flatten(1).sum(1) if norm == "mars" and c.dim() >= 2 else prod.sum().reshape(1)


def as_rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-row (or whole-tensor) ``values`` shaped to broadcast against ``like``."""
    if like.dim() == 0:
        return values.reshape(())
    return values.reshape((-1,) + (1,) * (like.dim() - 1))


def lora_delta(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """The LoRA delta ``scale * B A`` as a matrix (out x fan_in)."""
    dtype = torch.promote_types(b.dtype, torch.float32)
    return scale * (b.detach().to(dtype) @ a.detach().to(dtype))


# ---- which tensor is projected how -----------------------------------------------------------------
@dataclass(frozen=True)
class ProjectionUnit:
    """Tensors projected together: ``kind`` is one of :data:`PROJECTIONS`; ``params`` is ``(A, B)`` for LoRA."""

    kind: str
    params: tuple[nn.Parameter, ...]
    name: str
    lora_scale: float = 1.0


def _has_no_pretrained_value(name: str, exclude: Sequence[str]) -> bool:
    return any(part in exclude for part in name.split("."))


def projection_units(
    model: nn.Module, params: Iterable[nn.Parameter] | None = None, exclude: Sequence[str] = NO_PRETRAINED_VALUE
) -> list[ProjectionUnit]:
    """Classify the trainable parameters of ``model`` (restricted to ``params`` if given).

    FTP adapter deltas are projected towards zero (``"zero"``, or ``"lora"`` for B A pairs);
    parameters under a module named in ``exclude`` (new heads, PEFT's ``modules_to_save``) get the
    plain update (``"none"``); every other trainable parameter has a pretrained value and is projected
    towards a copy of its starting value (``"anchor"``), which is FTP as a drop-in optimizer.
    """
    allowed = None if params is None else {id(p) for p in params}

    def wanted(p: nn.Parameter) -> bool:
        return p.requires_grad and (allowed is None or id(p) in allowed)

    units: list[ProjectionUnit] = []
    claimed: set[int] = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, FTPLayer):
            continue
        for adapter, delta in module.ftp_delta.items():
            if wanted(delta):
                units.append(ProjectionUnit("zero", (delta,), f"{module_name}.ftp_delta.{adapter}"))
                claimed.add(id(delta))
        for adapter, a in module.ftp_A.items():
            b = module.ftp_B[adapter]
            if not (wanted(a) or wanted(b)):
                continue
            if not (wanted(a) and wanted(b)):
                raise ValueError(
                    f"FTP LoRA adapter {adapter!r} of {module_name} has only one of A and B trainable; the projection "
                    "scales B's rows given A, so train both (model.set_requires_grad) or neither."
                )
            units.append(ProjectionUnit("lora", (a, b), f"{module_name}.ftp_lora.{adapter}", module.scaling[adapter]))
            claimed.update((id(a), id(b)))
    for name, p in model.named_parameters():
        if wanted(p) and id(p) not in claimed:
            kind = "none" if _has_no_pretrained_value(name, exclude) else "anchor"
            units.append(ProjectionUnit(kind, (p,), name))
    return units


def ftp_param_groups(
    model: nn.Module,
    param_groups: Sequence[dict[str, Any]] | None = None,
    exclude: Sequence[str] = NO_PRETRAINED_VALUE,
) -> list[dict[str, Any]]:
    """Param groups for :class:`FTPOptimizer` from a model (and optional existing groups).

    Each group of ``param_groups`` (default: one group with every trainable parameter) is split by
    projection kind, keeping its other settings (``weight_decay``, ...); each LoRA pair becomes a
    group of its own. Usage for full fine-tuning: ``FTPOptimizer(ftp_param_groups(model), lr=...)``.
    """
    if param_groups is None:
        param_groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    result: list[dict[str, Any]] = []
    for group in param_groups:
        options = {k: v for k, v in group.items() if k != "params"}
        members = list(group["params"])
        units = projection_units(model, members, exclude)
        for kind in ("zero", "anchor", "none"):
            tensors = [u.params[0] for u in units if u.kind == kind]
            if tensors:
                result.append({**options, "params": tensors, "projection": kind})
        for unit in units:
            if unit.kind == "lora":
                result.append({**options, "params": list(unit.params), "projection": "lora", "lora_scale": unit.lora_scale})
        left = {id(p) for p in members} - {id(p) for u in units for p in u.params}
        if left:
            raise ValueError(f"{len(left)} parameter(s) in the optimizer groups are not trainable parameters of the model.")
    return result


# ---- the optimizer ---------------------------------------------------------------------------------
class FTPOptimizer(torch.optim.Optimizer):
    """AdamP / SGDP: Adam or SGD-momentum with Fast Trainable Projection (see the module docstring).

    Args:
        params: parameters or param groups; a group may set any option below. Build groups from a
            model with :func:`ftp_param_groups` (new heads unprojected, FTP adapters projected to zero).
        lr: learning rate of the base update (the paper's AdamP default is 1e-4).
        base: ``"adam"`` (AdamP) or ``"sgd"`` (SGDP).
        betas, eps: Adam's.
        weight_decay: decoupled weight decay (towards zero: for a ``"zero"`` delta, towards the pretrained weight).
        momentum, nesterov: SGD's (the paper: 0.9, Nesterov).
        mu: learning rate of the Adam step on each radius gamma (1e-2).
        kappa: damping in [0, 1] of positive hyper-gradients.
        norm: ``"mars"`` (per-row L1) or ``"l2"`` (per tensor).
        projection: default kind of a group: ``"anchor"`` (a copy of the starting value, taken here),
            ``"zero"``, ``"lora"`` (params ``[A, B]`` and ``lora_scale``) or ``"none"``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        *,
        base: str = "adam",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        nesterov: bool = True,
        mu: float = 1e-2,
        kappa: float = 1.0,
        norm: str = "mars",
        projection: str = "anchor",
    ) -> None:
        defaults = dict(
            lr=lr, base=base, betas=tuple(betas), eps=eps, weight_decay=weight_decay, momentum=momentum,
            nesterov=nesterov, mu=mu, kappa=kappa, norm=norm, projection=projection, lora_scale=1.0,
        )
        #: Optimizer steps taken (the spec's global t, shared by all tensors).
        self.global_step = 0
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_group(group)
        if group["projection"] == "anchor":
            for p in group["params"]:
                self.state[p]["anchor"] = p.detach().clone()

    # ---- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["ftp_global_step"] = self.global_step
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "ftp_global_step" not in state_dict:
            raise ValueError(
                "This optimizer state was not written by FTPOptimizer (it has no 'ftp_global_step'): resume from a "
                "checkpoint of the same method, or start the run afresh."
            )
        self.global_step = int(state_dict.pop("ftp_global_step"))
        # torch casts state tensors to the parameter's dtype; the radius state keeps its own (>= fp32).
        radius = {i: {k: v for k, v in st.items() if k in _RADIUS_KEYS} for i, st in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(saved_ids, params):
            for key, value in radius.get(i, {}).items():
                self.state[p][key] = value.to(p.device)

    # ---- the step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        t = self.global_step + 1
        for group in self.param_groups:
            if group["projection"] == "lora":
                self._lora_step(group, t)
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._base_update(p, p.grad, group)
                if group["projection"] != "none":
                    self._project(p, p.grad, group, t)
        self.global_step = t
        return loss

    def _base_update(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        """p <- p - D, D the base optimizer's update with decoupled weight decay (AdamW / SGDW)."""
        state = self.state[p]
        lr, wd = group["lr"], group["weight_decay"]
        if wd:
            p.mul_(1 - lr * wd)
        if group["base"] == "adam":
            if "exp_avg" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            beta1, beta2 = group["betas"]
            state["exp_avg"].lerp_(grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias2_sqrt = math.sqrt(1 - beta2 ** state["step"])
            denom = (state["exp_avg_sq"].sqrt() / bias2_sqrt).add_(group["eps"])
            p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** state["step"]))
            return
        direction = grad
        momentum = group["momentum"]
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad)
            direction = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        p.add_(direction, alpha=-lr)

    def _radius(self, state: dict[str, Any], grad: torch.Tensor, r: torch.Tensor, group: dict[str, Any], t: int) -> torch.Tensor:
        """This step's gamma from last step's candidate and this step's gradient; updates the state."""
        if "gamma" not in state:  # the tensor's first projected update: discard it
            state["gamma"] = torch.full((), GAMMA_FLOOR, dtype=r.dtype, device=r.device)
            state["gamma_exp_avg"] = torch.zeros((), dtype=r.dtype, device=r.device)
            state["gamma_exp_avg_sq"] = torch.zeros((), dtype=r.dtype, device=r.device)
            return state["gamma"]
        h = (row_dots(grad, state["c_prev"], group["norm"]) / state["r_prev"]).sum()
        h = torch.where(h > 0, h * group["kappa"], h)
        beta1, beta2 = GAMMA_BETAS
        m = state["gamma_exp_avg"].mul_(beta1).add_(h, alpha=1 - beta1)
        v = state["gamma_exp_avg_sq"].mul_(beta2).addcmul_(h, h, value=1 - beta2)
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        gamma = state["gamma"] - group["mu"] * m_hat / (v_hat.sqrt() + GAMMA_EPS)
        state["gamma"] = gamma.clamp_max(r.max()).clamp_min(GAMMA_FLOOR)
        return state["gamma"]

    @staticmethod
    def _remember(state: dict[str, Any], c: torch.Tensor, r: torch.Tensor) -> None:
        if "c_prev" in state:
            state["c_prev"].copy_(c)
        else:
            state["c_prev"] = c.detach().clone()
        state["r_prev"] = r

    def _project(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any], t: int) -> None:
        """p holds the candidate W_{t-1} - D; replace it by its projection onto the radius-gamma ball."""
        state = self.state[p]
        anchor = state.get("anchor")
        if anchor is not None:
            p.sub_(anchor)  # p now holds c
        r = row_norms(p, group["norm"])
        gamma = self._radius(state, grad, r, group, t)
        self._remember(state, p, r)
        p.mul_(as_rows((gamma / r).clamp(0, 1), p).to(p.dtype))
        if anchor is not None:
            p.add_(anchor)

    def _lora_step(self, group: dict[str, Any], t: int) -> None:
        a, b = group["params"]
        if a.grad is None and b.grad is None:
            return
        if a.grad is not None:
            self._base_update(a, a.grad, group)
        grad_b = b.grad if b.grad is not None else torch.zeros_like(b)
        if b.grad is not None:
            self._base_update(b, grad_b, group)
        state = self.state[b]
        r = row_norms(lora_delta(a, b, group["lora_scale"]), group["norm"])
        gamma = self._radius(state, grad_b, r, group, t)
        self._remember(state, b, r)
        b.mul_(as_rows((gamma / r).clamp(0, 1), b).to(b.dtype))


def _check_group(group: dict[str, Any]) -> None:
    """Clear errors for settings the step cannot work with."""
    if group["projection"] not in PROJECTIONS:
        raise ValueError(f"FTPOptimizer: projection must be one of {PROJECTIONS}, got {group['projection']!r}.")
    if group["base"] not in BASE_OPTIMIZERS:
        raise ValueError(f"FTPOptimizer: base must be one of {BASE_OPTIMIZERS}, got {group['base']!r}.")
    if group["norm"] not in NORMS:
        raise ValueError(f"FTPOptimizer: norm must be one of {NORMS}, got {group['norm']!r}.")
    if not group["mu"] > 0:
        raise ValueError(f"FTPOptimizer: mu (the radius learning rate) must be > 0, got {group['mu']!r}.")
    if not 0.0 <= group["kappa"] <= 1.0:
        raise ValueError(f"FTPOptimizer: kappa must lie in [0, 1], got {group['kappa']!r}.")
    if group["lr"] < 0 or group["weight_decay"] < 0 or group["eps"] < 0:
        raise ValueError("FTPOptimizer: lr, weight_decay and eps must be >= 0.")
    if not all(0.0 <= beta < 1.0 for beta in group["betas"]):
        raise ValueError(f"FTPOptimizer: betas must lie in [0, 1), got {group['betas']!r}.")
    if group["base"] == "sgd" and group["nesterov"] and not group["momentum"] > 0:
        raise ValueError("FTPOptimizer: Nesterov SGD needs momentum > 0 (or pass nesterov=False).")
    if group["projection"] == "lora":
        params = group["params"]
        if len(params) != 2 or params[0].dim() != 2 or params[1].dim() != 2 or params[1].shape[1] != params[0].shape[0]:
            raise ValueError(
                "FTPOptimizer: a 'lora' group holds exactly [A, B] with A of shape (r, fan_in) and B of shape "
                f"(out, r); got shapes {[tuple(p.shape) for p in params]}. Build groups with ftp_param_groups(model)."
            )
        if not group["lora_scale"] > 0:
            raise ValueError(f"FTPOptimizer: lora_scale must be > 0, got {group['lora_scale']!r}.")
