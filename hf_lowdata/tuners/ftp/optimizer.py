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
  with delta = ``lora_scale`` * B A; ``"none"``, the plain base update (a new head has no pretrained value);
* memory: the spec's W0 + c_prev + row norms shrink, for deltas projected towards zero in float32/64,
  to one number per row: the anchor is zero and c_prev is the projected delta divided row-wise by
  min(gamma, r_prev) (see :meth:`FTPOptimizer._hypergradient`); anchored tensors keep c_prev / r_prev;
* the base Adam update is torch's own (fused) AdamW, so unprojected tensors get exactly AdamW's update.

LoRA deltas (our extension): row i of delta = s B_i A. Projecting that row towards zero by the factor
clip(gamma / r_i, 0, 1) is exactly scaling row i of B, and because the projection never changes A,
A_{t-1} equals the candidate A of the previous step, so the hyper-gradient
<dL/d delta_i, c_prev_i> equals <dL/dB_i, B_cand_prev_i>: exact, computed from dL/dB alone. The row
norms need the product B A once per step (out x in multiply-adds times r).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.adamw import adamw

from ..base import TransposedLinear
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
_RADIUS_KEYS = ("gamma", "gamma_exp_avg", "gamma_exp_avg_sq", "kept")
#: Module names whose parameters have no pretrained value (new classification heads): plain update.
NO_PRETRAINED_VALUE = ("classifier", "score", "pre_classifier", "modules_to_save")


# ---- the projection's arithmetic (shared with TPGM) --------------------------------------------------
def row_norms(c: torch.Tensor, norm: str, row_dim: int = 0) -> torch.Tensor:
    """Distances r_i of ``c`` from zero: per output row (MARS, >= 2-D tensors) or one for the tensor.

    The output units run along ``row_dim``: 0 for Linear and convolution weights, 1 for a transformers
    ``Conv1D`` weight, stored (in, out). One pass over ``c``, accumulated in at least float32
    (half-precision weights would make the radius coarse).
    """
    dtype = torch.promote_types(c.dtype, torch.float32)
    if norm == "mars" and c.dim() >= 2:
        others = tuple(d for d in range(c.dim()) if d != row_dim)
        return torch.linalg.vector_norm(c, ord=1, dim=others, dtype=dtype) + NORM_EPS
    return torch.linalg.vector_norm(c, ord=1 if norm == "mars" else 2, dtype=dtype).reshape(1) + NORM_EPS


def as_rows(values: torch.Tensor, like: torch.Tensor, row_dim: int = 0) -> torch.Tensor:
    """Per-row (or whole-tensor) ``values`` shaped to broadcast against ``like`` (rows along ``row_dim``)."""
    if like.dim() == 0:
        return values.reshape(())
    shape = [1] * like.dim()
    shape[row_dim] = -1
    return values.reshape(shape)


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
    #: The dimension the output units run along: 1 for the (in, out) weight of a transformers ``Conv1D``.
    row_dim: int = 0


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
    transposed = {id(m.weight) for m in model.modules() if isinstance(m, TransposedLinear)}
    for name, p in model.named_parameters():
        if wanted(p) and id(p) not in claimed:
            kind = "none" if _has_no_pretrained_value(name, exclude) else "anchor"
            row_dim = int(kind == "anchor" and id(p) in transposed and p.dim() == 2)  # rows only matter when projected
            units.append(ProjectionUnit(kind, (p,), name, row_dim=row_dim))
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
            for row_dim in (0, 1):
                tensors = [u.params[0] for u in units if u.kind == kind and u.row_dim == row_dim]
                if tensors:
                    result.append({**options, "params": tensors, "projection": kind, **({"row_dim": 1} if row_dim else {})})
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
        norm: ``"mars"`` (per-row L1) or ``"l2"`` (per tensor). Rows are output units: a tensor's first
            dimension, or its second in a group with ``row_dim=1`` (:func:`ftp_param_groups` puts the (in, out)
            weights of transformers' ``Conv1D``, as in GPT-2, there; FTP adapters keep their deltas in (out, in)
            layout for every layer).
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
            nesterov=nesterov, mu=mu, kappa=kappa, norm=norm, projection=projection, lora_scale=1.0, row_dim=0,
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
        for group in self.param_groups:  # checkpoints written before a group option existed get its default
            for key, value in self.defaults.items():
                group.setdefault(key, value)
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
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            kind = group["projection"]
            # The hyper-gradients read W_{t-1}: take them before the base update moves the weights.
            if kind == "lora":
                b = group["params"][1]
                grad_b = b.grad if b.grad is not None else torch.zeros_like(b)
                hs = [self._hypergradient(b, grad_b)]
            elif kind != "none":
                hs = [self._hypergradient(p, p.grad) for p in params]
            self._base_update(params, group)
            if kind == "lora":
                a = group["params"][0]
                r = row_norms(lora_delta(a, b, group["lora_scale"]), group["norm"])
                self._shrink(b, r, self._radii([self.state[b]], hs, [r], group, t)[0])
            elif kind != "none":
                self._project(params, hs, group, t)
        self.global_step = t
        return loss

    def _base_update(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        """p <- p - D for every p, D the base update with decoupled weight decay (AdamW / SGDW).

        Adam runs as torch's own (fused where the device supports it) AdamW, so the unprojected
        update is exactly AdamW's and costs what AdamW costs.
        """
        lr, wd = group["lr"], group["weight_decay"]
        if group["base"] == "adam":
            states = [self.state[p] for p in params]
            for p, state in zip(params, states):
                if "exp_avg" not in state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                elif state["step"].device != p.device:  # checkpoints are loaded onto the CPU
                    state["step"] = state["step"].to(p.device, torch.float32)
            beta1, beta2 = group["betas"]
            adamw(
                params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                [], [s["step"] for s in states], fused=_fusable(params) or None, amsgrad=False, beta1=beta1,
                beta2=beta2, lr=lr, weight_decay=wd, eps=group["eps"], maximize=False,
            )
            return
        momentum = group["momentum"]
        for p in params:
            direction = p.grad
            if momentum:
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = p.grad.detach().clone()
                else:
                    buf.mul_(momentum).add_(p.grad)
                direction = p.grad.add(buf, alpha=momentum) if group["nesterov"] else buf
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(direction, alpha=-lr)

    def _hypergradient(self, p: torch.Tensor, grad: torch.Tensor) -> torch.Tensor | None:
        """dL/dgamma of last step's projection, sum_i <g_i, c_prev_i> / r_prev_i (``None`` before the first).

        Anchored tensors keep c_prev / r_prev. A delta projected towards zero needs no copy: it *is*
        c_prev scaled row-wise by min(gamma, r_prev_i) / r_prev_i, so c_prev_i / r_prev_i =
        W_{t-1,i} / min(gamma, r_prev_i) (exact up to rounding in float32/64; an anchored weight
        would lose the small offset W - W0 to cancellation, hence the copy there).
        """
        state = self.state[p]
        if "gamma" not in state:
            return None
        acc = state["gamma"].dtype
        if "c_over_r" in state:
            return torch.dot(grad.reshape(-1).to(acc), state["c_over_r"].reshape(-1).to(acc))
        kept = state["kept"]
        rows = len(kept)
        dots = torch.einsum("ij,ij->i", grad.reshape(rows, -1).to(acc), p.detach().reshape(rows, -1).to(acc))
        return (dots / kept).sum()

    def _radii(self, states: list[dict[str, Any]], hs: list[torch.Tensor | None], rs: list[torch.Tensor],
               group: dict[str, Any], t: int) -> list[torch.Tensor]:
        """This step's radius of each tensor from its hyper-gradient ``h`` (``None``: first update, discarded).

        The radius Adam runs on all of a group's tensors at once (stacked scalars, then copied back into
        each tensor's own state): a handful of kernels per group instead of ~15 per tensor, which is what
        dominated FTP's step on a GPU. Elementwise, the arithmetic is the per-tensor one.
        """
        for state, h, r in zip(states, hs, rs):
            if h is None:
                state["gamma"] = torch.full((), GAMMA_FLOOR, dtype=r.dtype, device=r.device)
                state["gamma_exp_avg"] = torch.zeros((), dtype=r.dtype, device=r.device)
                state["gamma_exp_avg_sq"] = torch.zeros((), dtype=r.dtype, device=r.device)
        live = [i for i, h in enumerate(hs) if h is not None]
        if live:
            dtype = rs[live[0]].dtype
            h = torch.stack([hs[i].to(dtype) for i in live])
            h = torch.where(h > 0, h * group["kappa"], h)
            beta1, beta2 = GAMMA_BETAS
            m = torch.stack([states[i]["gamma_exp_avg"] for i in live]).to(dtype).mul_(beta1).add_(h, alpha=1 - beta1)
            v = torch.stack([states[i]["gamma_exp_avg_sq"] for i in live]).to(dtype).mul_(beta2).addcmul_(
                h, h, value=1 - beta2)
            gamma = torch.stack([states[i]["gamma"] for i in live]).to(dtype)
            gamma = gamma - group["mu"] * (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + GAMMA_EPS)
            r_max = torch.stack([rs[i].max().to(dtype) for i in live])
            gamma = torch.minimum(gamma, r_max).clamp_min_(GAMMA_FLOOR)
            for key, values in (("gamma_exp_avg", m), ("gamma_exp_avg_sq", v), ("gamma", gamma)):
                torch._foreach_copy_([states[i][key] for i in live], list(values.unbind()))
        return [state["gamma"] for state in states]

    def _shrink(self, p: torch.Tensor, r: torch.Tensor, gamma: torch.Tensor, row_dim: int = 0) -> None:
        """p holds c (row norms r): scale each row by clip(gamma / r_i, 0, 1), keeping what the next h needs."""
        state = self.state[p]
        rows = as_rows(r, p, row_dim)
        if "anchor" in state or p.dtype not in (torch.float32, torch.float64):
            if "c_over_r" not in state:
                state["c_over_r"] = torch.empty_like(p)
            # c / r in float32, then stored in p's dtype: |c / r| <= 1 fits any float, while 1 / r (r as small as
            # NORM_EPS for a row that did not move) overflows fp16 to inf, and 0 * inf poisoned gamma with NaN
            state["c_over_r"].copy_(p.float() / rows.float())
        else:
            state["kept"] = torch.minimum(r, gamma)
        p.mul_((gamma / rows).clamp(0, 1).to(p.dtype))

    def _project(self, params: list[torch.Tensor], hs: list[torch.Tensor | None], group: dict[str, Any], t: int) -> None:
        """Each p holds its candidate W_{t-1} - D; replace it by its projection onto its radius-gamma ball."""
        anchored = [(p, self.state[p]["anchor"]) for p in params if "anchor" in self.state[p]]
        if anchored:  # p now holds c
            torch._foreach_sub_([p for p, _ in anchored], [a for _, a in anchored])
        rs = [row_norms(p, group["norm"], group["row_dim"]) for p in params]
        gammas = self._radii([self.state[p] for p in params], hs, rs, group, t)
        for p, r, gamma in zip(params, rs, gammas):
            self._shrink(p, r, gamma, group["row_dim"])
        if anchored:
            torch._foreach_add_([p for p, _ in anchored], [a for _, a in anchored])


def _fusable(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW kernel can take these tensors (one device, a float dtype)."""
    devices = {p.device for p in params}
    return len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda") and all(
        p.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) and p.grad.dtype == p.dtype
        for p in params
    )


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
    if group["row_dim"] not in (0, 1) or (group["row_dim"] == 1 and (
            group["projection"] != "anchor" or any(p.dim() != 2 for p in group["params"]))):
        raise ValueError(
            "FTPOptimizer: row_dim is 0, or 1 for the 2-D (in, out) weights of transformers' Conv1D in an 'anchor' "
            f"group; got row_dim={group['row_dim']!r} in a {group['projection']!r} group. Build groups with "
            "ftp_param_groups(model)."
        )
    if group["projection"] == "lora":
        params = group["params"]
        if len(params) != 2 or params[0].dim() != 2 or params[1].dim() != 2 or params[1].shape[1] != params[0].shape[0]:
            raise ValueError(
                "FTPOptimizer: a 'lora' group holds exactly [A, B] with A of shape (r, fan_in) and B of shape "
                f"(out, r); got shapes {[tuple(p.shape) for p in params]}. Build groups with ftp_param_groups(model)."
            )
        if not group["lora_scale"] > 0:
            raise ValueError(f"FTPOptimizer: lora_scale must be > 0, got {group['lora_scale']!r}.")
