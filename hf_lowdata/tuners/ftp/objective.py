"""Training objectives: FTP (the projecting optimizer) and TPGM (its predecessor, for comparison).

:class:`FTPObjective` only swaps the optimizer: ``LowDataTrainer`` picks it for models carrying an FTP
adapter, and it also turns plain full fine-tuning into FTP fine-tuning
(``LowDataTrainer(model=plain_model, objective=FTPObjective())``).

:class:`TPGMObjective` is TPGM (Tian et al., "Trainable Projected Gradient Method for Robust
Fine-Tuning", CVPR 2023): the base optimizer (Trainer's AdamW) updates the weights freely; then,
every ``interval`` steps, each constrained tensor's radius gamma takes ``iterations`` Adam steps on
the loss of a *held-out split of the training data* evaluated at the projected weights
(an extra forward and backward pass), and the projection is applied. This is the cost FTP removes,
so both are measured side by side. Simplifications [recon], said here and in BENCHMARKS.md: one
radius per tensor (TPGM's MARS norm is per row for matrices and per element for vectors; we use the
same rows as FTP), and by default one radius step per optimizer step (the paper projects less often,
with more radius steps each time; both are settings).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...training.objectives import AuxiliaryOptimizer, TrainingObjective, dataset_labels, model_columns
from .config import FTPConfig
from .optimizer import (
    GAMMA_FLOOR,
    NO_PRETRAINED_VALUE,
    FTPOptimizer,
    ProjectionUnit,
    as_rows,
    ftp_param_groups,
    lora_delta,
    projection_units,
    row_norms,
)

if TYPE_CHECKING:
    from ...training.trainer import LowDataTrainer


class FTPObjective(TrainingObjective):
    """Supervised training whose optimizer is :class:`~hf_lowdata.tuners.ftp.FTPOptimizer`.

    Learning rate, betas and epsilon come from the TrainingArguments; FTP's own settings from here
    (or from the adapter's :class:`FTPConfig` via :meth:`from_config`).

    Args:
        base_optimizer: ``"adam"`` (AdamP) or ``"sgd"`` (SGDP, Nesterov momentum ``momentum``).
        mu, kappa, norm: FTP's radius learning rate, damping and distance (see :class:`FTPConfig`).
        exclude: names of modules whose parameters have no pretrained value (new heads): plain update.
        momentum: SGD momentum.
    """

    name = "ftp"

    def __init__(
        self,
        base_optimizer: str = "adam",
        mu: float = 1e-2,
        kappa: float = 1.0,
        norm: str = "mars",
        exclude: Sequence[str] = NO_PRETRAINED_VALUE,
        momentum: float = 0.9,
    ) -> None:
        self.base_optimizer, self.mu, self.kappa, self.norm = base_optimizer, mu, kappa, norm
        self.exclude, self.momentum = tuple(exclude), momentum

    @classmethod
    def from_config(cls, config: FTPConfig) -> FTPObjective:
        return cls(base_optimizer=config.base_optimizer, mu=config.mu, kappa=config.kappa, norm=config.norm)

    def create_optimizer(
        self, trainer: LowDataTrainer, model: nn.Module, param_groups: list[dict[str, Any]]
    ) -> torch.optim.Optimizer:
        args = trainer.args
        return FTPOptimizer(
            ftp_param_groups(model, param_groups, self.exclude),
            lr=args.learning_rate,
            base=self.base_optimizer,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            momentum=self.momentum,
            mu=self.mu,
            kappa=self.kappa,
            norm=self.norm,
        )


def heldout_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices, stratified: round(fraction * n_c) of each class, at least one, never all."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator).tolist()
    train, held = [], []
    for label in sorted(set(labels)):
        members = [i for i in order if labels[i] == label]
        n_held = min(max(1, round(fraction * len(members))), len(members) - 1)
        held += members[:n_held]
        train += members[n_held:]
    return sorted(train), sorted(held)


class TPGMObjective(TrainingObjective):
    """TPGM: radii learned by a bi-level step on held-out training data (see the module docstring).

    Args:
        validation: tokenised held-out examples with ``labels``; ``None`` splits ``heldout_fraction``
            of the trainer's training set off (stratified, seeded by ``args.seed``) and trains on the rest.
        heldout_fraction: the share of the training set held out when ``validation`` is ``None``.
        lr: learning rate of the Adam step on the radii (TPGM's projection learning rate).
        norm: ``"mars"`` or ``"l2"``, as in FTP.
        interval: project every this many optimizer steps.
        iterations: radius steps per projection.
        batch_size: held-out examples per radius step (default: the training batch size).
        exclude: module names whose parameters have no pretrained value (left unconstrained).
    """

    name = "tpgm"

    def __init__(
        self,
        validation: Any = None,
        heldout_fraction: float = 0.2,
        lr: float = 1e-2,
        norm: str = "mars",
        interval: int = 1,
        iterations: int = 1,
        batch_size: int | None = None,
        exclude: Sequence[str] = NO_PRETRAINED_VALUE,
    ) -> None:
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"TPGM: heldout_fraction must lie in (0, 1), got {heldout_fraction!r}.")
        if interval < 1 or iterations < 1:
            raise ValueError(f"TPGM: interval and iterations must be >= 1, got {interval} and {iterations}.")
        if not lr > 0:
            raise ValueError(f"TPGM: lr (the radius learning rate) must be > 0, got {lr!r}.")
        self.validation, self.heldout_fraction, self.lr, self.norm = validation, heldout_fraction, lr, norm
        self.interval, self.iterations, self.batch_size, self.exclude = interval, iterations, batch_size, tuple(exclude)

    # ---- setup ------------------------------------------------------------------------------------
    def setup(self, trainer: LowDataTrainer) -> None:
        if self.validation is None:
            data = trainer.train_dataset
            labels = dataset_labels(data) if hasattr(data, "select") else None
            if labels is None:
                raise ValueError(
                    "TPGM holds out part of the training set, which must be a tokenised datasets.Dataset with a "
                    "'labels' or 'label' column; otherwise pass validation= (held-out examples with labels) to "
                    "TPGMObjective."
                )
            train_idx, held_idx = heldout_split(labels, self.heldout_fraction, trainer.args.seed)
            if not held_idx:
                raise ValueError(
                    "TPGM could not hold out any example: every class has a single labelled example. Pass "
                    "validation= explicitly or use FTP, which needs no held-out split."
                )
            trainer.train_dataset = data.select(train_idx)
            self.validation = data.select(held_idx)
        self.validation = model_columns(trainer, self.validation)  # its batches are collated outside the loader
        if len(self.validation) == 0:
            raise ValueError("TPGM: the validation set is empty.")
        model = trainer.model
        self.units: list[ProjectionUnit] = [u for u in projection_units(model, exclude=self.exclude) if u.kind != "none"]
        if not self.units:
            raise ValueError(
                "TPGM found no trainable tensor with a pretrained value to constrain: add an FTP adapter "
                "(get_peft_model(model, FTPConfig())) or train the model's pretrained weights."
            )
        names = {id(p): n for n, p in model.named_parameters()}
        self.names = [names[id(u.params[-1])] for u in self.units]  # the tensor that gets projected
        device = self.units[0].params[0].device
        self.gammas = [nn.Parameter(torch.zeros((), device=device)) for _ in self.units]
        self.anchors = [u.params[0].detach().clone() if u.kind == "anchor" else None for u in self.units]
        self.initialised = False
        self.collate = trainer.data_collator
        self.seed = trainer.args.seed
        self.batch_size = min(self.batch_size or trainer.args.per_device_train_batch_size, len(self.validation))

    def create_auxiliary_optimizers(self, trainer: LowDataTrainer, model: nn.Module) -> dict[str, AuxiliaryOptimizer]:
        return {"tpgm": AuxiliaryOptimizer(torch.optim.Adam(self.gammas, lr=self.lr))}

    # ---- the projection ---------------------------------------------------------------------------
    def _candidate(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, r): the tensor's distance from its anchor now, and its row norms."""
        unit = self.units[i]
        if unit.kind == "lora":
            a, b = unit.params
            return b.detach(), row_norms(lora_delta(a, b, unit.lora_scale), self.norm)
        p = unit.params[0].detach()
        c = p if self.anchors[i] is None else p - self.anchors[i]
        return c, row_norms(c, self.norm, unit.row_dim)

    def _projected(self, i: int, c: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        ratio = as_rows((self.gammas[i] / r).clamp(0, 1), c, self.units[i].row_dim)
        out = ratio * c
        return out if self.anchors[i] is None else self.anchors[i] + out

    def _clip(self, norms: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for gamma, r in zip(self.gammas, norms):
                gamma.copy_(gamma.clamp(max=r.max()).clamp(min=GAMMA_FLOOR))

    def _validation_batch(self, trainer: LowDataTrainer, draw: int) -> dict[str, Any]:
        """Held-out batch number ``draw``: a pure function of (seed, draw), so resume sees the same ones."""
        n = len(self.validation)
        per_epoch = max(1, n // self.batch_size)
        epoch, offset = divmod(draw, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + 7919 * (epoch + 1))).tolist()
        rows = [self.validation[j] for j in perm[offset * self.batch_size : (offset + 1) * self.batch_size]]
        return trainer._prepare_inputs(dict(self.collate(rows)))

    def on_optimizer_step(self, trainer: LowDataTrainer, model: nn.Module) -> None:
        step = trainer.state.global_step  # steps completed before this one
        if (step + 1) % self.interval:
            return
        model = trainer.model
        candidates = [self._candidate(i) for i in range(len(self.units))]
        norms = [r for _, r in candidates]
        if not self.initialised:  # TPGM's start: half the smallest row norm of each tensor
            with torch.no_grad():
                for gamma, r in zip(self.gammas, norms):
                    gamma.fill_(float(r.min()) / 2)
            self.initialised = True
        self._clip(norms)
        was_training = model.training
        model.eval()
        try:
            for it in range(self.iterations):
                batch = self._validation_batch(trainer, (step // self.interval) * self.iterations + it)
                overrides = {name: self._projected(i, c, r) for i, (name, (c, r)) in enumerate(zip(self.names, candidates))}
                outputs = torch.func.functional_call(model, overrides, args=(), kwargs=batch)
                loss = (outputs["loss"] if trainer.class_weights is None  # (the training loss's class weights)
                        else trainer.class_weighted_loss(outputs["logits"], batch["labels"]))
                trainer.step_auxiliary("tpgm", loss)
                self._clip(norms)
        finally:
            model.train(was_training)
        with torch.no_grad():
            for i, (unit, (c, r)) in enumerate(zip(self.units, candidates)):
                unit.params[-1].copy_(self._projected(i, c, r))

    # ---- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"gamma.{i}": g.detach() for i, g in enumerate(self.gammas)}
        state.update({f"anchor.{i}": a for i, a in enumerate(self.anchors) if a is not None})
        state["initialised"] = torch.tensor(int(self.initialised))
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for i, gamma in enumerate(self.gammas):
                gamma.copy_(state[f"gamma.{i}"])
            for i, anchor in enumerate(self.anchors):
                if anchor is not None:
                    anchor.copy_(state[f"anchor.{i}"])
        self.initialised = bool(int(state["initialised"]))
