"""The per-method training strategy that :class:`~hf_lowdata.training.LowDataTrainer` calls.

Each method that trains differently from plain supervised fine-tuning (bi-level weight mixing,
mutual-information losses on unlabelled data, episodic meta-learning, a projecting optimizer)
implements one small :class:`TrainingObjective` subclass, so the trainer itself holds no
``if method == ...`` branches. The base class *is* plain supervised training with the model's own
loss; every hook has a default that does nothing special.

Hooks, in the order the trainer calls them:

* :meth:`TrainingObjective.setup` once, when the trainer is built;
* :meth:`train_dataloader` when training starts (episodic objectives supply their own data);
* :meth:`main_parameters` / :meth:`create_optimizer` for the optimizer the Trainer steps, and
  :meth:`create_auxiliary_optimizers` for any second optimizer (outer problem, discriminator),
  which the trainer prepares with accelerate and checkpoints beside the first;
* per micro-batch :meth:`compute_loss` (``step_start=True`` on the first micro-batch of an
  optimizer step, which is where bi-level objectives do their outer step);
* after the last micro-batch of an optimizer step :meth:`complete_gradients` (gradients formed outside
  autograd), before the trainer averages gradients over processes;
* after each optimizer step :meth:`on_optimizer_step` (clamping, a discriminator step, ...);
* :meth:`state_dict` / :meth:`load_state_dict` for objective state that must survive resume
  (weights of training-only modules such as a discriminator; never saved with the adapter), and
  :meth:`json_state` / :meth:`load_json_state` for a record of the run kept beside it (a per-step history).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from .trainer import LowDataTrainer


@dataclass
class AuxiliaryOptimizer:
    """A second optimizer (and optional scheduler) owned by an objective.

    The trainer prepares ``optimizer`` with accelerate (so it steps only on gradient-sync steps and
    works under DDP), saves both states in every checkpoint and restores them on resume. Step it
    with ``trainer.step_auxiliary(name, loss)``, which also averages gradients across processes.
    """

    optimizer: torch.optim.Optimizer
    scheduler: Any | None = None


class TrainingObjective:
    """Plain supervised training; subclass and override hooks for a method's own training."""

    #: Short name used in logs and error messages.
    name: str = "supervised"
    #: Whether the objective reads unlabelled batches (``trainer.unlabelled_batch()``).
    uses_unlabelled: bool = False
    #: Whether the loss runs through the (DDP-wrapped) model's forward. An objective that calls
    #: submodules of the unwrapped model sets this False: DDP then never averages the gradients, and
    #: the trainer averages them over processes itself before each optimizer step.
    uses_wrapped_forward: bool = True
    #: Whether the objective's loss honours the trainer's ``class_weights`` (it uses :meth:`LowDataTrainer.model_loss`
    #: or weights its own loss); the trainer refuses class weights for one that does not.
    takes_class_weights: bool = True

    def setup(self, trainer: LowDataTrainer) -> None:
        """Called once from the trainer's constructor."""

    # ---- data -----------------------------------------------------------------------------------
    def train_dataloader(self, trainer: LowDataTrainer) -> DataLoader | None:
        """A custom training DataLoader (episodes, ...); ``None`` uses Trainer's own."""
        return None

    def eval_dataloader(self, trainer: LowDataTrainer, dataset: Any) -> DataLoader | None:
        """A custom DataLoader for ``evaluate`` / ``predict`` on ``dataset``; ``None`` uses Trainer's own."""
        return None

    def prediction_step(
        self, trainer: LowDataTrainer, model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None] | None:
        """``(loss, logits, labels)`` of one evaluation batch for inputs Trainer cannot read; ``None``:
        Trainer's own prediction step."""
        return None

    # ---- optimizers ----------------------------------------------------------------------------
    def excluded_parameters(self, model: torch.nn.Module) -> set[int]:
        """``id()`` of trainable parameters the main optimizer must not update (outer variables)."""
        return set()

    def main_parameters(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
        """Named parameters the main (Trainer-stepped) optimizer updates."""
        excluded = self.excluded_parameters(model)
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in excluded]

    def create_optimizer(
        self, trainer: LowDataTrainer, model: torch.nn.Module, param_groups: list[dict[str, Any]]
    ) -> torch.optim.Optimizer | None:
        """A custom main optimizer over ``param_groups``; ``None`` lets Trainer pick from its args."""
        return None

    def create_auxiliary_optimizers(
        self, trainer: LowDataTrainer, model: torch.nn.Module
    ) -> dict[str, AuxiliaryOptimizer]:
        """Second optimizers keyed by a name unique within this objective."""
        return {}

    # ---- the step -------------------------------------------------------------------------------
    def compute_loss(
        self,
        trainer: LowDataTrainer,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
        step_start: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The loss to backpropagate for one micro-batch (also used under ``no_grad`` in eval)."""
        return trainer.model_loss(model, inputs, return_outputs, num_items_in_batch)

    def complete_gradients(self, trainer: LowDataTrainer, model: torch.nn.Module) -> None:
        """Called after the last micro-batch's backward of an optimizer step, before gradients are averaged
        over processes and before the optimizer steps: write any gradient the objective forms itself (not
        by autograd) into ``.grad`` here. With ``uses_wrapped_forward = False`` the trainer then averages it
        over processes like the rest; with DDP's own synchronisation it would stay per process."""

    def on_optimizer_step(self, trainer: LowDataTrainer, model: torch.nn.Module) -> None:
        """Called right after the main optimizer stepped."""

    def log_terms(self) -> dict[str, float]:
        """The latest values of the objective's own loss terms (``"<method>/<term>"``); the trainer adds
        them to each training log line, so they reach ``log_history`` and every ``report_to`` logger."""
        return {}

    # ---- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors (and nothing else) that must survive a resume; saved as safetensors."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def json_state(self) -> dict[str, Any]:
        """A record of the run so far (a per-step history, counters: numbers, strings, lists and dicts) that must
        survive a resume; saved as JSON beside :meth:`state_dict` in every checkpoint. Unlike the tensors it is not
        reloaded by ``load_best_model_at_end``: like ``log_history``, it records the whole run."""
        return {}

    def load_json_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`json_state` returned."""


#: Columns transformers' collators read labels from (``label`` and ``label_ids`` become ``labels``).
LABEL_COLUMNS = ("labels", "label", "label_ids")


def dataset_labels(dataset: Any) -> list[int] | None:
    """The integer labels of a training set: a ``labels`` / ``label`` / ``label_ids`` column (or attribute,
    as :class:`~hf_lowdata.data.TextDataset` has), or items that carry one; ``None`` if it has none."""
    labels = getattr(dataset, "labels", None)
    if labels is not None and not callable(labels):
        return [int(y) for y in labels]
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        name = next((c for c in LABEL_COLUMNS if c in columns), None)
        return None if name is None else [int(y) for y in dataset[name]]
    try:
        return [int(next(dataset[i][c] for c in LABEL_COLUMNS if c in dataset[i])) for i in range(len(dataset))]
    except (KeyError, TypeError, IndexError, StopIteration):
        return None


def model_columns(trainer: Any, dataset: Any) -> Any:
    """``dataset`` restricted to the columns the model reads and the label columns, as Trainer's
    ``remove_unused_columns`` restricts the training set. Held-out splits that objectives draw batches from
    go through the collator outside Trainer's data loader, and a raw ``text`` column would break it."""
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        return dataset
    trainer._set_signature_columns_if_needed()
    keep = {*(trainer._signature_columns or ()), *LABEL_COLUMNS, *(trainer.label_names or ())}
    return dataset.select_columns([c for c in columns if c in keep])


def raw_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside an accelerate wrapper. The wrapper skips ``step`` off gradient-sync points and,
    under fp16, steps through the loss scaler (dividing the gradients by the scale); an objective's own optimizers
    take gradients of losses that were never scaled, at the steps the objective chooses."""
    return getattr(optimizer, "optimizer", optimizer)


def process_share(indices: list[int], process_index: int, world: int) -> list[int]:
    """This process's slice of a block of example indices: every process gets the same number (at least one),
    wrapping around the block as a DistributedSampler pads, so none gets an empty batch when the block is
    smaller than the process count and per-process means weigh alike."""
    if world <= 1 or not indices:
        return list(indices)
    per_process = -(-len(indices) // world)
    return [indices[(process_index + j * world) % len(indices)] for j in range(per_process)]


def module_parameter_ids(modules: Iterable[torch.nn.Module]) -> set[int]:
    """``id()`` of every parameter of ``modules``; a helper for :meth:`TrainingObjective.excluded_parameters`."""
    return {id(p) for m in modules for p in m.parameters()}


ObjectiveFactory = Callable[[torch.nn.Module, Any], TrainingObjective]
_DEFAULT_OBJECTIVES: dict[str, ObjectiveFactory] = {}


def register_default_objective(peft_type: str, factory: ObjectiveFactory) -> None:
    """Make ``LowDataTrainer`` use ``factory(model, peft_config)`` for models with this adapter type.

    Each tuner package registers its objective here, so ``LowDataTrainer(model=get_peft_model(m,
    FTPConfig()), ...)`` trains with FTP's optimizer without being told.
    """
    _DEFAULT_OBJECTIVES[str(peft_type).upper()] = factory


def default_objective_for(model: torch.nn.Module) -> TrainingObjective | None:
    """The registered objective for the model's active adapter type, or ``None``."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return None
    active = getattr(model, "active_adapter", None)
    if isinstance(active, (list, tuple)):
        active = active[0] if active else None
    config = configs.get(active) if active in configs else next(iter(configs.values()))
    peft_type = getattr(config, "peft_type", None)
    key = getattr(peft_type, "value", peft_type)
    factory = _DEFAULT_OBJECTIVES.get(str(key).upper()) if key is not None else None
    return factory(model, config) if factory is not None else None
