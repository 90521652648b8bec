"""Bi-level optimisation inside the LowDataTrainer: the outer step of DARTS-style hyperparameter learning.

The problem is ``min_alpha L_val(W*(alpha), alpha)`` subject to ``W*(alpha) = argmin_W L_train(W, alpha)``:
the inner variables W are what the Trainer's own optimizer updates; the outer variables alpha (a
method's choice, :meth:`BilevelObjective.outer_parameters`) get a second optimizer. At the start of
every optimizer step, on the step's first training micro-batch, :class:`BilevelObjective` does one
outer step:

1. ``darts`` (the default): cache W and the inner optimizer state; take a virtual inner step
   ``W' = step(W, grad_W L_train)`` with the inner optimizer itself (same learning rate, clipping,
   weight decay); take the validation gradients ``g_d = grad_alpha L_val(W')`` and
   ``v = grad_W' L_val(W')``; roll W and the optimizer state back; precondition ``u = J v`` with J the
   diagonal Jacobian of the inner update with respect to the gradient (lr for SGD, the Adam scaling
   for Adam/AdamW), so the result is the hypergradient of the unrolled step; estimate
   ``H_alpha,W u`` by central differences of ``grad_alpha L_train`` at ``W +- eps u``,
   ``eps = R / ||u||``; restore W exactly (bit for bit); ``alpha -= outer_step(g_d - H u)``.
2. ``first_order``: ``g = grad_alpha L_val(W)`` (DARTS' first-order approximation, no virtual step).
3. ``none``: no bi-level problem: alpha takes the training-loss gradient of the ordinary step
   (joint single-level training, the paper's ablation).

Then the Trainer takes the real inner step on the same micro-batch with the new alpha (and, for
``darts``, the same dropout mask as the virtual step). The validation batches come from a held-out
share of the training set (``split_ratio``, stratified by label) and are a pure function of
(seed, step, process), so a resumed run sees exactly the batches of an uninterrupted one; the
outer optimizer and its scheduler are checkpointed by the trainer.

Departures from the authors' betty-based code, all deliberate: the finite differences perturb W
around the pre-step point (as in DARTS, and as the exact derivative of the unrolled step requires;
betty perturbs W', a difference of order lr), with the same dropout mask in both evaluations
(betty draws new masks, which adds noise of order 1/eps), and W is restored from a copy instead of by
subtraction (betty 0.2.0 left it perturbed). The Jacobian of gradient clipping is ignored: the clip
factor c is treated as a constant, so the step's Jacobian is c J (checked against autograd). With gradient accumulation the outer step uses the first
micro-batch only.
"""

from __future__ import annotations

import math
import random
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from .objectives import (
    AuxiliaryOptimizer,
    TrainingObjective,
    dataset_labels,
    model_columns,
    process_share,
    raw_optimizer,
    register_default_objective,
)

if TYPE_CHECKING:
    from .trainer import LowDataTrainer

HYPERGRADIENTS = ("darts", "first_order", "none")
_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def split_indices(labels: Sequence[int] | None, n: int, ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """A random ``ratio`` / ``1 - ratio`` split of ``range(n)``, stratified by ``labels`` when given.

    Every class with at least two examples contributes to both parts; deterministic per ``seed``.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"split ratio must be strictly between 0 and 1, got {ratio}.")
    rng = random.Random(seed)
    groups: dict[Any, list[int]] = defaultdict(list)
    for i in range(n):
        groups[labels[i] if labels is not None else 0].append(i)
    first: list[int] = []
    second: list[int] = []
    for key in sorted(groups, key=str):
        members = groups[key]
        rng.shuffle(members)
        cut = len(members) if len(members) < 2 else min(len(members) - 1, max(1, round(ratio * len(members))))
        first.extend(members[:cut])
        second.extend(members[cut:])
    if not first or not second:
        raise ValueError(
            f"Cannot split {n} labelled example(s) into training and validation parts: the split holds out part of "
            "each class, so it needs a class with at least 2 examples (use hypergradient='none' for single-level "
            "training)."
        )
    return sorted(first), sorted(second)


def _subset(dataset: Any, indices: list[int]) -> Any:
    if hasattr(dataset, "select"):
        return dataset.select(indices)
    return torch.utils.data.Subset(dataset, indices)


class _RngState:
    """The CPU (and CUDA) random state, so two forward passes can share one dropout mask."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def _update_jacobian(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor],
                     state: dict[torch.Tensor, dict[str, Any]]) -> list[torch.Tensor] | None:
    """Diagonal of d(step)/d(grad) of one ``optimizer`` step at ``grads`` from ``state``; None if unknown.

    Exact for SGD without momentum (lr) and for Adam / AdamW without amsgrad; the weight decay term does
    not depend on the gradient.
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out = []
    for p, g in zip(params, grads):
        group = group_of[id(p)]
        lr = float(group["lr"])
        decay = group.get("weight_decay", 0.0)
        if decay and not group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW)):
            g = g + decay * p.detach()  # Adam's L2 decay enters the moments
        if "betas" in group and not group.get("amsgrad", False) and not group.get("maximize", False):
            beta1, beta2 = group["betas"]
            st = state.get(p, {})
            m0 = st.get("exp_avg", torch.zeros_like(g))
            v0 = st.get("exp_avg_sq", torch.zeros_like(g))
            t = float(st["step"]) + 1 if "step" in st else 1.0
            m = beta1 * m0 + (1 - beta1) * g
            v = beta2 * v0 + (1 - beta2) * g * g
            bc1, bc2_sqrt = 1 - beta1**t, math.sqrt(1 - beta2**t)
            root = v.sqrt()
            denom = root / bc2_sqrt + group["eps"]
            d_denom = torch.where(root > 0, (1 - beta2) * g / (bc2_sqrt * root.clamp_min(1e-30)), torch.zeros_like(g))
            out.append((lr / bc1) * ((1 - beta1) * denom - m * d_denom) / denom**2)
        elif "momentum" in group and group["momentum"] == 0 and not group.get("maximize", False):
            out.append(torch.full_like(g, lr))
        else:
            return None
    return out


class BilevelObjective(TrainingObjective):
    """Generic bi-level training: subclasses say which parameters are outer and how to project them.

    Args:
        hypergradient: "darts", "first_order" or "none" (see the module docstring).
        split_ratio: share of the training set for the inner problem when ``validation_dataset`` is None;
            the rest becomes the outer problem's validation set (stratified by label).
        validation_dataset: tokenised validation examples for the outer problem; ``None`` splits the
            trainer's ``train_dataset`` (the trainer then trains on the inner share only).
        outer_lr / outer_weight_decay / outer_warmup_ratio / outer_scheduler: the outer AdamW and its
            schedule ("cosine", "linear" or "constant", after linear warm-up), over the run's steps.
        darts_radius: finite-difference radius R (eps = R / ||u||).
        precondition: use the inner optimizer's one-step Jacobian (see the module docstring).
        split_seed: seed of the split (default: the trainer's seed).
    """

    name = "bilevel"

    def __init__(
        self,
        hypergradient: str = "darts",
        split_ratio: float = 0.8,
        validation_dataset: Any = None,
        outer_lr: float = 2e-3,
        outer_weight_decay: float = 0.0,
        outer_warmup_ratio: float = 0.1,
        outer_scheduler: str = "cosine",
        darts_radius: float = 0.01,
        precondition: bool = True,
        split_seed: int | None = None,
    ) -> None:
        if hypergradient not in HYPERGRADIENTS:
            raise ValueError(f"hypergradient must be one of {HYPERGRADIENTS}, got {hypergradient!r}.")
        if outer_scheduler not in _SCHEDULERS:
            raise ValueError(f"outer_scheduler must be one of {tuple(_SCHEDULERS)}, got {outer_scheduler!r}.")
        self.hypergradient = hypergradient
        self.split_ratio = split_ratio
        self.validation_dataset = validation_dataset
        self.outer_lr = outer_lr
        self.outer_weight_decay = outer_weight_decay
        self.outer_warmup_ratio = outer_warmup_ratio
        self.outer_scheduler = outer_scheduler
        self.darts_radius = darts_radius
        self.precondition = precondition
        self.split_seed = split_seed
        self._outer: list[torch.nn.Parameter] = []
        self._warned_jacobian = False

    # ---- what a method defines -----------------------------------------------------------------
    def outer_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        """The trainable outer variables of ``model``."""
        raise NotImplementedError

    def project_outer(self, params: list[torch.nn.Parameter]) -> None:
        """Map the outer variables back into their feasible set after each outer step."""

    # ---- setup ----------------------------------------------------------------------------------
    def setup(self, trainer: LowDataTrainer) -> None:
        args = trainer.args
        if args.fp16:
            raise ValueError(
                f"The {self.name!r} objective steps two optimizers per step, which fp16 loss scaling does not "
                "support; train in bf16 or fp32."
            )
        if args.gradient_accumulation_steps > 1:
            warnings.warn(
                f"gradient_accumulation_steps={args.gradient_accumulation_steps}: the {self.name!r} objective "
                "takes its outer step on the first micro-batch of each optimizer step only.",
                stacklevel=3,
            )
        outer = self.outer_parameters(trainer.model)
        half = [p for p in outer if p.dtype in (torch.float16, torch.bfloat16)]
        if half:  # before accelerate wraps the model: DDP then sees the final dtypes
            warnings.warn(
                f"The {self.name!r} objective keeps its outer parameters in float32 ({len(half)} tensors were "
                f"{half[0].dtype}, e.g. a model cast with .to(torch.bfloat16)): near 1, half precision cannot "
                f"represent outer steps of lr {self.outer_lr:g}, so they would never move.",
                stacklevel=3,
            )
            for p in half:
                p.data = p.data.float()
        if not outer:
            peft_type = getattr(getattr(trainer.model, "active_peft_config", None), "peft_type", None)
            raise ValueError(
                f"The {self.name!r} objective found no trainable outer parameters in this model (its adapter: "
                f"{getattr(peft_type, 'value', peft_type) or 'none'}). It trains the mixing of a MixupBLO adapter: "
                "wrap the model with get_peft_model(model, MixupBLOConfig()); to train with the mixing frozen, pass "
                "objective=TrainingObjective()."
            )
        self._seed = args.seed if self.split_seed is None else self.split_seed
        if self.hypergradient == "none":
            self.validation_dataset = None
            return
        if self.validation_dataset is None:
            data = trainer.train_dataset
            if data is None:
                raise ValueError(f"The {self.name!r} objective needs train_dataset= to split it.")
            inner, outer = split_indices(dataset_labels(data), len(data), self.split_ratio, self._seed)
            trainer.train_dataset = _subset(data, inner)
            self.validation_dataset = _subset(data, outer)
        self.validation_dataset = model_columns(trainer, self.validation_dataset)
        if len(self.validation_dataset) == 0:
            raise ValueError("validation_dataset is empty; the outer problem needs at least one example.")

    def excluded_parameters(self, model: torch.nn.Module) -> set[int]:
        return {id(p) for p in self.outer_parameters(model)}

    def create_auxiliary_optimizers(
        self, trainer: LowDataTrainer, model: torch.nn.Module
    ) -> dict[str, AuxiliaryOptimizer]:
        from transformers import get_scheduler

        self._outer = self.outer_parameters(model)
        if not self._outer:
            raise ValueError(
                f"The {self.name!r} objective found no trainable outer parameters in the model. Is the adapter "
                "active and trainable? To train with them frozen, pass objective=TrainingObjective()."
            )
        optimizer = torch.optim.AdamW(self._outer, lr=self.outer_lr, weight_decay=self.outer_weight_decay)
        total = max(1, int(trainer.state.max_steps or trainer.args.max_steps or 1))
        scheduler = get_scheduler(
            _SCHEDULERS[self.outer_scheduler], optimizer,
            num_warmup_steps=math.ceil(self.outer_warmup_ratio * total), num_training_steps=total,
        )
        self.project_outer(self._outer)
        return {"outer": AuxiliaryOptimizer(optimizer, scheduler)}

    # ---- the step -------------------------------------------------------------------------------
    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None, step_start=False):
        if model.training and step_start and self.hypergradient != "none":
            rng = _RngState()
            net = trainer.accelerator.unwrap_model(model)
            with _buffers_kept(net):  # the extra passes must not move BatchNorm statistics (validation data least)
                if self.hypergradient == "darts":
                    hypergradient = self.darts_hypergradient(trainer, net, inputs, rng)
                else:
                    val_loss = trainer.model_loss(net, self.validation_batch(trainer))
                    self._last_validation_loss = float(val_loss.detach())
                    hypergradient = list(torch.autograd.grad(val_loss, self._outer, allow_unused=True))
            rng.restore()  # the real step sees the dropout mask of the virtual one
            self._outer_step(trainer, self._average(trainer, _zeros_for_none(hypergradient, self._outer)))
        return trainer.model_loss(model, inputs, return_outputs, num_items_in_batch)

    def log_terms(self) -> dict[str, float]:
        """The outer problem's validation loss at the last outer step (at W' for DARTS)."""
        value = getattr(self, "_last_validation_loss", None)
        return {} if value is None else {"mixup_blo/validation_loss": value}

    def on_optimizer_step(self, trainer: LowDataTrainer, model: torch.nn.Module) -> None:
        if self.hypergradient == "none":  # joint training: alpha takes the training gradient of this step
            self._outer_step(trainer, [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._outer])

    def darts_hypergradient(
        self, trainer: LowDataTrainer, net: torch.nn.Module, inputs: dict[str, Any], rng: _RngState
    ) -> list[torch.Tensor]:
        """``g_d - H_alpha,W u`` for this step (local to this process); W and the optimizer are unchanged."""
        optimizer = raw_optimizer(trainer.optimizer)
        inner = [p for group in optimizer.param_groups for p in group["params"]]
        outer = self._outer
        saved = [p.detach().clone() for p in inner]
        saved_state = {p: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in optimizer.state[p].items()}
                       for p in inner if p in optimizer.state}
        try:
            # 1. the virtual inner step, exactly as the Trainer would take it
            loss = trainer.model_loss(net, inputs)
            raw_grads = torch.autograd.grad(loss, inner + outer, allow_unused=True)
            has_grad = [g is not None for g in raw_grads[: len(inner)]]  # the optimizer skips the others
            grads = self._average(trainer, _zeros_for_none(raw_grads, inner + outer))
            max_norm = trainer.args.max_grad_norm
            clip = 1.0  # the clip factor: a constant of the step, so it also scales the step's Jacobian
            if max_norm and max_norm > 0:
                total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
                clip = float((max_norm / (total + 1e-6)).clamp(max=1.0))
                grads = [g * clip for g in grads]
            grads = grads[: len(inner)]
            jacobian = _update_jacobian(optimizer, inner, grads, saved_state) if self.precondition else None
            if self.precondition and jacobian is None and not self._warned_jacobian:
                warnings.warn(
                    f"No one-step Jacobian for {type(optimizer).__name__} with these settings; the DARTS "
                    "hypergradient uses the learning rate alone as preconditioner.",
                    stacklevel=2,
                )
                self._warned_jacobian = True
            lrs = {id(p): float(g["lr"]) for g in optimizer.param_groups for p in g["params"]}
            with torch.no_grad():
                for p, g, used in zip(inner, grads, has_grad):
                    p.grad = g if used else None
                optimizer.step()
                for p in inner:
                    p.grad = None
            # 2. the validation gradients at W'
            val_loss = trainer.model_loss(net, self.validation_batch(trainer))
            self._last_validation_loss = float(val_loss.detach())
            val_grads = _zeros_for_none(torch.autograd.grad(val_loss, outer + inner, allow_unused=True), outer + inner)
            direct = val_grads[: len(outer)]
            v = self._average(trainer, val_grads[len(outer):])
        finally:
            _restore(inner, saved, optimizer, saved_state)
        # 3. central differences of grad_alpha L_train around W along u
        if not self.precondition:
            u = v
        elif jacobian is not None:
            u = [clip * j * x for j, x in zip(jacobian, v)]
        else:
            u = [clip * lrs[id(p)] * x for p, x in zip(inner, v)]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in u])))
        if norm == 0.0 or not math.isfinite(norm):
            return direct
        eps = self.darts_radius / norm
        try:
            sides = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for p, w, x in zip(inner, saved, u):
                        p.copy_(w).add_(x, alpha=sign * eps)
                rng.restore()
                loss = trainer.model_loss(net, inputs)
                sides.append(_zeros_for_none(torch.autograd.grad(loss, outer, allow_unused=True), outer))
        finally:
            _restore(inner, saved)
        return [d + (gn - gp) / (2 * eps) for d, gp, gn in zip(direct, *sides)]

    def validation_batch(self, trainer: LowDataTrainer) -> dict[str, torch.Tensor]:
        """The outer problem's batch for the current optimizer step, on the training device.

        A pure function of (seed, step, process): pass ``e`` over the validation set is a permutation
        seeded by (seed, e); processes take disjoint slices of each block.
        """
        data = self.validation_dataset
        n = len(data)
        world = max(1, trainer.args.world_size)
        block = min(n, trainer.args.per_device_train_batch_size * world)
        blocks_per_pass = max(1, n // block)
        pass_index, position = divmod(trainer.state.global_step, blocks_per_pass)
        generator = torch.Generator().manual_seed(self._seed * 1_000_003 + pass_index)
        order = torch.randperm(n, generator=generator)
        chosen = process_share(order[position * block : (position + 1) * block].tolist(), trainer.args.process_index,
                               world)
        return trainer._prepare_inputs(dict(trainer.data_collator([data[int(i)] for i in chosen])))

    # ---- helpers --------------------------------------------------------------------------------
    def _outer_step(self, trainer: LowDataTrainer, grads: list[torch.Tensor]) -> None:
        entry = trainer.auxiliary_optimizers["outer"]
        optimizer = raw_optimizer(entry.optimizer)  # the outer step happens off the gradient-sync point
        for p, g in zip(self._outer, grads):
            p.grad = g.detach().to(p.dtype)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if entry.scheduler is not None:
            entry.scheduler.step()
        self.project_outer(self._outer)

    @staticmethod
    def _average(trainer: LowDataTrainer, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mean over processes under DDP (each process saw its own batches)."""
        world = trainer.accelerator.num_processes
        if world > 1:
            import torch.distributed as dist

            for t in tensors:
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
                t.div_(world)
        return tensors


@contextmanager
def _buffers_kept(net: torch.nn.Module) -> Iterator[None]:
    """Put every buffer (BatchNorm running statistics and counters) back as it was: the hypergradient's forward
    passes are not training steps, and one of them sees the validation batch."""
    saved = [(b, b.detach().clone()) for b in net.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def _zeros_for_none(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _restore(params: list[torch.Tensor], saved: list[torch.Tensor], optimizer: torch.optim.Optimizer | None = None,
             state: dict[torch.Tensor, dict[str, Any]] | None = None) -> None:
    """Put the cached weights (bit for bit) and, if given, the cached optimizer state back."""
    with torch.no_grad():
        for p, w in zip(params, saved):
            p.copy_(w)
    if optimizer is not None and state is not None:
        for p in params:
            if p in state:
                optimizer.state[p] = state[p]
            else:
                optimizer.state.pop(p, None)


class MixupBLOObjective(BilevelObjective):
    """MixupBLO's outer problem: the mixing factors of the active adapter, clamped to [0, 1]."""

    name = "mixup_blo"

    def outer_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        from ..tuners.mixup_blo.layer import MixupBLOLayer

        params = []
        for module in model.modules():
            if isinstance(module, MixupBLOLayer):
                for attr in MixupBLOLayer.mixing_names:
                    params.extend(p for p in getattr(module, attr).values() if p.requires_grad)
        return params

    def project_outer(self, params: list[torch.nn.Parameter]) -> None:
        with torch.no_grad():
            for p in params:
                p.clamp_(0.0, 1.0)

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> MixupBLOObjective:
        """The objective a :class:`~hf_lowdata.tuners.mixup_blo.MixupBLOConfig` describes."""
        kwargs: dict[str, Any] = dict(
            hypergradient=config.hypergradient,
            split_ratio=config.split_ratio,
            outer_lr=config.mixing_lr,
            outer_weight_decay=config.mixing_weight_decay,
            outer_warmup_ratio=config.mixing_warmup_ratio,
            outer_scheduler=config.mixing_scheduler,
            darts_radius=config.darts_radius,
            precondition=config.darts_precondition,
        )
        kwargs.update(overrides)
        return cls(**kwargs)


register_default_objective("MIXUP_BLO", lambda model, config: MixupBLOObjective.from_config(config))
