"""``LowDataTrainer``: a ``transformers.Trainer`` for objectives beyond one loss and one optimizer.

It keeps everything Trainer does (``TrainingArguments``, progress bars, logging, callbacks,
accelerate underneath, checkpoints) and adds, through a per-method
:class:`~hf_lowdata.training.objectives.TrainingObjective`:

* extra losses on unlabelled batches (``unlabeled_dataset=``), drawn deterministically per step so
  a resumed run sees exactly the batches the uninterrupted one would have seen;
* second optimizers (bi-level outer problem, discriminator) prepared with accelerate and saved /
  restored with the first one in every checkpoint;
* the objective's own state (tensors, and a JSON record such as a per-step history) saved in every
  checkpoint and restored on resume;
* custom main optimizers and parameters excluded from the main optimizer;
* a custom training DataLoader (episodic meta-learning).

BatchNorm layers whose affine parameters are all frozen (the frozen base model's: their statistics are
not saved with an adapter) stay in eval mode while training (:mod:`~hf_lowdata.training.batchnorm`).

It also refuses to continue on a non-finite loss (:class:`NonFiniteLossError`, instead of Trainer's
silent skipping) and resumes only from complete checkpoints (:func:`last_complete_checkpoint`).

DeepSpeed and FSDP accept one model and one optimizer only, so objectives with auxiliary optimizers
raise a clear error under them; plain DDP (multi-GPU or multi-process CPU) works.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer, TrainerCallback

from ..paths import atomic_write_text
from .batchnorm import frozen_batchnorm_in_eval
from .class_weights import check_class_weights, weighted_cross_entropy
from .objectives import (
    AuxiliaryOptimizer,
    TrainingObjective,
    default_objective_for,
    process_share,
    raw_optimizer,
)

AUX_OPTIMIZERS_FILE = "auxiliary_optimizers.pt"
OBJECTIVE_STATE_FILE = "objective_state.safetensors"
#: The objective's :meth:`~hf_lowdata.training.TrainingObjective.json_state`, beside its tensors.
OBJECTIVE_JSON_FILE = "objective_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` folder that was completely written, or ``None``.

    Trainer writes ``trainer_state.json`` last; a checkpoint whose state file is missing or does not
    parse (a kill during the write) is skipped, so a kill at any moment leaves the previous one usable.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    candidates = sorted(
        (int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))
    )
    for _, path in reversed(candidates):
        state = path / "trainer_state.json"
        try:
            json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        return str(path)
    return None


class _ObjectiveCallback(TrainerCallback):
    """Forwards the end of each optimizer step to the objective."""

    def __init__(self, trainer: LowDataTrainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.objective.on_optimizer_step(self.trainer, self.trainer.model)
        return control


class LowDataTrainer(Trainer):
    """A ``Trainer`` that runs a :class:`TrainingObjective` (default: plain supervised training).

    Args:
        objective: the method's training strategy; ``None`` takes the objective registered for the
            model's adapter type (FTP's optimizer for an FTP adapter, ...), and for other models
            plain supervised training with the model's own loss, i.e. ``transformers.Trainer``.
        unlabeled_dataset: texts without labels for semi-supervised objectives: a tokenised
            ``datasets.Dataset`` (``input_ids``, ``attention_mask``) or a
            :class:`~hf_lowdata.data.TextDataset` (tokenised here with ``processing_class``), or a
            torch ``Dataset`` whose items the data collator takes as they are (e.g. cached features).
        unlabeled_batch_size: examples per unlabelled batch (per process).
        class_weights: one loss weight per class for single-label classification (e.g.
            :func:`~hf_lowdata.training.balanced_class_weights` of the labelled set, for uneven classes): the
            loss becomes the mean of ``weight[y] * cross-entropy`` (with ``label_smoothing_factor``) in place
            of the model's own, wherever the objective uses the model's loss (:meth:`model_loss`).
        All other arguments are those of ``transformers.Trainer``.
    """

    def __init__(
        self,
        *args: Any,
        objective: TrainingObjective | None = None,
        unlabeled_dataset: Any = None,
        unlabeled_batch_size: int = 64,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        if class_weights is not None and kwargs.get("compute_loss_func") is not None:
            raise ValueError("Pass class_weights or compute_loss_func, not both: class_weights replaces the loss.")
        self.class_weights = None if class_weights is None else check_class_weights(class_weights)
        super().__init__(*args, **kwargs)
        launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if launched > 1 and self.args.world_size == 1:
            raise ValueError(
                f"This process is one of {launched} started by a launcher (WORLD_SIZE={launched}), but its "
                "TrainingArguments train in a single process: every process would run the whole training on its "
                f"own and write to the same {self.args.output_dir!r}. On a machine without GPUs pass use_cpu=True "
                "to TrainingArguments, so the processes train together (gloo); otherwise start one process."
            )
        if not _sums_its_loss_over_items(self.model):
            # Trainer sees **kwargs in forward and assumes the model sums its loss over num_items_in_batch:
            # then it skips the division by the accumulation steps and multiplies by the process count.
            # Classifiers (sequence, token, image, multiple choice) return a batch mean and ignore
            # num_items_in_batch, so that summed gradients over micro-batches and scaled them by world_size.
            self.model_accepts_loss_kwargs = False
        self.objective = objective or default_objective_for(self.model) or TrainingObjective()
        if self.class_weights is not None and not self.objective.takes_class_weights:
            raise ValueError(
                f"The {self.objective.name!r} objective computes its own loss and does not weight classes: leave "
                "class_weights out (for this method, balance the labelled set instead)."
            )
        self.auxiliary_optimizers: dict[str, AuxiliaryOptimizer] = {}
        self.unlabeled_dataset = self._prepare_unlabelled(unlabeled_dataset)
        self.unlabeled_batch_size = unlabeled_batch_size
        if self.objective.uses_unlabelled and self.unlabeled_dataset is None:
            raise ValueError(
                f"The {self.objective.name!r} objective trains on unlabelled data: pass unlabeled_dataset= "
                "(texts without labels) to LowDataTrainer, or turn the unlabelled terms off in its config."
            )
        self._started_step: int | None = None  # the optimizer step whose micro-batches are running
        self._micro_in_step = 0  # micro-batches of that step done so far
        self._step_start = False
        self.add_callback(_ObjectiveCallback(self))
        self.objective.setup(self)

    # ---- data -----------------------------------------------------------------------------------
    def _prepare_unlabelled(self, data: Any) -> Any:
        if data is None:
            return None
        from ..data import TextDataset

        if isinstance(data, TextDataset):
            if self.processing_class is None:
                raise ValueError("A TextDataset as unlabeled_dataset needs processing_class= (the tokenizer).")
            from ..data import tokenize

            data = tokenize(data.without_labels(), self.processing_class)
        if isinstance(data, (str, bytes, list, tuple, dict)) or not (hasattr(data, "__len__") and
                                                                      hasattr(data, "__getitem__")):
            raise TypeError(
                f"unlabeled_dataset must be a tokenized datasets.Dataset (input_ids, attention_mask), a hf_lowdata "
                f"TextDataset (with processing_class=, the tokenizer) or a torch Dataset of model inputs; got "
                f"{type(data).__name__}. For a list of texts: datasets.Dataset.from_dict({{'text': texts}}).map(lambda b: "
                "tokenizer(b['text'], truncation=True), batched=True, remove_columns=['text'])."
            )
        if len(data) == 0:
            raise ValueError("unlabeled_dataset is empty; pass at least one text or leave it out.")
        if not hasattr(data, "column_names"):  # a torch Dataset of ready model inputs (e.g. cached features)
            return data
        keep = [c for c in data.column_names if c in ("input_ids", "attention_mask", "token_type_ids")]
        if "input_ids" not in keep:
            raise ValueError(
                f"unlabeled_dataset has no input_ids column (columns: {data.column_names}): tokenize it first "
                "(dataset.map(lambda b: tokenizer(b['text'], truncation=True), batched=True)), or pass a TextDataset "
                "with processing_class= (the tokenizer)."
            )
        return data.select_columns(keep)

    def _prepared(self, loader: DataLoader | None) -> DataLoader | None:
        """An objective's own loader, made resumable and prepared by accelerate (``None`` stays ``None``)."""
        return None if loader is None else self.accelerator.prepare(_with_batch_sampler(loader))

    def get_train_dataloader(self):
        custom = self._prepared(self.objective.train_dataloader(self))
        return custom if custom is not None else super().get_train_dataloader()

    def get_eval_dataloader(self, eval_dataset=None):
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(dataset, str):
            dataset = self.eval_dataset[dataset]
        custom = self._prepared(self.objective.eval_dataloader(self, dataset) if dataset is not None else None)
        return custom if custom is not None else super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        custom = self._prepared(self.objective.eval_dataloader(self, test_dataset))
        return custom if custom is not None else super().get_test_dataloader(test_dataset)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        custom = self.objective.prediction_step(self, model, inputs, prediction_loss_only)
        if custom is not None:
            return custom
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def unlabelled_batch(self) -> dict[str, torch.Tensor]:
        """The unlabelled batch for the current micro-step, on the training device.

        Batches are a pure function of (seed, micro-step, process): epoch ``e`` of the pool is a
        permutation seeded by ``args.seed + e``; processes take disjoint slices of it.
        """
        if self.unlabeled_dataset is None:
            raise ValueError("No unlabeled_dataset was given to the trainer.")
        n = len(self.unlabeled_dataset)
        world = max(1, self.args.world_size)
        per_step = min(self.unlabeled_batch_size * world, max(n, 1))
        steps_per_epoch = max(1, n // per_step)
        epoch, offset = divmod(self._micro_step, steps_per_epoch)
        # (the last optimizer step of an epoch may have fewer micro-batches: indices are skipped, never reused)
        generator = torch.Generator().manual_seed(self.args.seed + 1_000_003 * epoch)
        perm = torch.randperm(n, generator=generator)
        block = perm[offset * per_step : (offset + 1) * per_step].tolist()
        mine = process_share(block, self.args.process_index, world)
        features = [self.unlabeled_dataset[i] for i in mine]
        batch = self.data_collator(features)
        return self._prepare_inputs(dict(batch))

    @property
    def _micro_step(self) -> int:
        """Index of the current micro-batch, a pure function of the optimizer step and the position in it
        (so a resumed run draws the same unlabelled batches as an uninterrupted one, whatever the
        accumulation and epoch lengths)."""
        return self.state.global_step * self.args.gradient_accumulation_steps + self._micro_in_step

    # ---- optimizers -----------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            named = self.objective.main_parameters(opt_model)
            decay = set(self.get_decay_parameter_names(opt_model))
            groups = [
                {"params": [p for n, p in named if n in decay], "weight_decay": self.args.weight_decay},
                {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
            ]
            groups = [g for g in groups if g["params"]]
            if not groups:
                raise ValueError(
                    "No trainable parameters for the optimizer: every parameter is frozen or claimed by the "
                    f"{self.objective.name!r} objective's other optimizers. Check the adapter config's "
                    "target_modules and modules_to_save."
                )
            custom = self.objective.create_optimizer(self, opt_model, groups)
            self.optimizer = custom if custom is not None else self._trainer_optimizer(opt_model, groups)
        if not self.auxiliary_optimizers:
            aux = self.objective.create_auxiliary_optimizers(self, opt_model)
            if aux and (self.is_deepspeed_enabled or self.is_fsdp_enabled):
                raise ValueError(
                    f"The {self.objective.name!r} objective uses a second optimizer, which DeepSpeed and FSDP do "
                    "not support (one model, one optimizer). Train with DDP or on one device."
                )
            for name, entry in aux.items():
                self._broadcast_parameters(_optimizer_params(entry.optimizer))
                entry.optimizer = self.accelerator.prepare(entry.optimizer)
                self.auxiliary_optimizers[name] = entry
        return self.optimizer

    def _trainer_optimizer(self, opt_model: torch.nn.Module, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """Trainer's own optimizer for ``groups``: ``optimizer_cls_and_kwargs=`` or ``args.optim``, with its factories
        (Muon, Dion) and the parameter lists some optimizers build themselves (GaLore, LOMO, layer-wise)."""
        from transformers.trainer_optimizer import is_optimizer_factory

        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs = dict(optimizer_kwargs)
        if is_optimizer_factory(optimizer_cls):
            return optimizer_cls()(opt_model, **optimizer_kwargs)
        params: Any = groups
        for key in ("params", "model", "optimizer_dict"):  # in Trainer's order: the last one given wins
            if key in optimizer_kwargs:
                params = optimizer_kwargs.pop(key)
        return optimizer_cls(params, **optimizer_kwargs)

    def step_auxiliary(self, name: str, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """One step of auxiliary optimizer ``name`` on ``loss``.

        Gradients are taken with ``torch.autograd.grad`` (so Trainer's ``zero_grad`` and gradient
        clipping of the model never touch them), averaged over processes under DDP (objective
        modules are not DDP-wrapped), then the optimizer and its scheduler step. The torch optimizer steps itself
        (:func:`~hf_lowdata.training.objectives.raw_optimizer`): under fp16, accelerate's wrapper would divide
        these unscaled gradients by the loss scale (65536 at first) and advance the scaler once more per step.
        """
        entry = self.auxiliary_optimizers[name]
        params = _optimizer_params(entry.optimizer)
        grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        if self.accelerator.num_processes > 1:
            import torch.distributed as dist

            for g in grads:
                dist.all_reduce(g, op=dist.ReduceOp.SUM)
                g.div_(self.accelerator.num_processes)
        norms = torch.stack([loss.detach().float().reshape(-1).norm(), *torch._foreach_norm(grads)])
        finite = bool(torch.isfinite(norms).all())  # (one check, one device sync)
        if not self._on_every_process(finite):
            raise NonFiniteLossError(
                f"The {name!r} optimizer's loss or gradients are not finite at step {self.state.global_step} "
                f"(objective {self.objective.name!r}): usually a learning rate too high for that part, or fp16 "
                "overflow (use bf16 or fp32). Its step was not applied; completed checkpoints in "
                f"{self.args.output_dir} are intact."
            )
        for p, g in zip(params, grads):
            p.grad = g
        optimizer = raw_optimizer(entry.optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if entry.scheduler is not None:
            entry.scheduler.step()

    def _broadcast_parameters(self, params: list[torch.Tensor]) -> None:
        """Start every process from rank 0's values (objective modules are not DDP-wrapped)."""
        if self.accelerator.num_processes > 1:
            import torch.distributed as dist

            with torch.no_grad():
                for p in params:
                    dist.broadcast(p.data, src=0)

    # ---- the step -------------------------------------------------------------------------------
    def model_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Trainer's own loss computation (the model's loss, label smoothing if configured).

        On a copy of ``inputs``: Trainer pops ``labels`` when it smooths labels or has a
        ``compute_loss_func``, and objectives reuse the batch (MixupBLO's hypergradient passes).
        With ``class_weights``, the class-weighted cross-entropy of the model's logits instead.
        """
        if self.class_weights is not None and inputs.get("labels") is not None:
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            loss = self.class_weighted_loss(logits, labels, float(self.args.label_smoothing_factor or 0.0))
            if not isinstance(outputs, dict):  # a tuple, as with labels: (loss, logits, ...) (prediction_step drops [0])
                outputs = (loss, *outputs)
            return (loss, outputs) if return_outputs else loss
        return super().compute_loss(model, dict(inputs), return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def class_weighted_loss(self, logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """The mean over rows of ``class_weights[y] * cross-entropy``: for an objective that computes a model's loss
        itself (TPGM's held-out loss at projected weights), as :meth:`model_loss` does. Needs ``class_weights``."""
        if self.class_weights is None:
            raise ValueError("class_weighted_loss needs class_weights= (LowDataTrainer was built without them).")
        return weighted_cross_entropy(logits, labels, self.class_weights, label_smoothing)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:  # a training log line: add the objective's own terms, averaged over processes
            terms = dict(self.objective.log_terms())
            # (log_terms gives the same keys on every process: the objectives' loss terms of the step)
            names = sorted(n for n, v in terms.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
            if names and self.accelerator.num_processes > 1:  # numbers only; anything else is logged as it is
                values = torch.tensor([float(terms[n]) for n in names], device=self.accelerator.device)
                terms.update(zip(names, self.accelerator.reduce(values, reduction="mean").tolist()))
            logs = {**logs, **terms}
        super().log(logs, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._objective_ran = True
        step_start = model.training and self._step_start
        return self.objective.compute_loss(
            self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch,
            step_start=step_start,
        )

    def training_step(self, model, inputs, num_items_in_batch=None):
        # A step starts with the first micro-batch after the optimizer step count changed: this holds for
        # an epoch's short last step and after a resume, where counting micro-batches drifts.
        if self.state.global_step != self._started_step:
            self._started_step, self._micro_in_step = self.state.global_step, 0
        self._step_start = self._micro_in_step == 0
        self._objective_ran = False
        loss = super().training_step(model, inputs, num_items_in_batch)
        local_finite = bool(torch.isfinite(loss).all())
        if not self._objective_ran and type(self.objective).compute_loss is not TrainingObjective.compute_loss:
            raise RuntimeError(
                f"{type(self).__name__}.compute_loss does not call LowDataTrainer.compute_loss, so the "
                f"{self.objective.name!r} objective never ran: the method would train as plain fine-tuning. Call "
                "super().compute_loss(model, inputs, ...) from your override (and change the loss it returns), or "
                "use transformers.Trainer if plain fine-tuning is what you want."
            )
        if not self._on_every_process(local_finite):  # every process stops at the same micro-step, none waits
            lr = self._get_learning_rate() if self.lr_scheduler is not None else self.args.learning_rate
            where = "" if local_finite else f"{loss.item()} "
            raise NonFiniteLossError(
                f"The training loss is {where or 'not finite on another process '}at step "
                f"{self.state.global_step + 1} (objective "
                f"{self.objective.name!r}, learning rate {lr:.3g}). Usual causes: a learning rate that is too "
                "high, fp16 overflow (use bf16 or fp32), or inputs that are empty or corrupted. Lower "
                "learning_rate, set max_grad_norm, or check the data; completed checkpoints in "
                f"{self.args.output_dir} are intact."
            )
        self._micro_in_step += 1
        if self._micro_in_step == self.current_gradient_accumulation_steps:
            self.objective.complete_gradients(self, model)
            if not self.objective.uses_wrapped_forward and self.accelerator.num_processes > 1:
                self._average_gradients(model)
            if not self.args.fp16:  # (fp16's loss scaler skips steps with inf gradients by design)
                self._refuse_non_finite_gradients(model, loss)
        return loss

    def _refuse_non_finite_gradients(self, model: torch.nn.Module, loss: torch.Tensor) -> None:
        """Stop before the optimizer step when a finite loss gave NaN/inf gradients, so no checkpoint ever
        holds weights that such a step would have poisoned."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not self._on_every_process(not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())):
            raise NonFiniteLossError(
                f"The gradients are not finite at step {self.state.global_step + 1} although the loss is "
                f"{loss.item():.4g} (objective {self.objective.name!r}): usually an overflow in the backward pass "
                "(try bf16 or fp32, a lower learning_rate, or max_grad_norm) or a corrupted input. This step was "
                f"not applied; completed checkpoints in {self.args.output_dir} are intact."
            )

    def _on_every_process(self, holds: bool) -> bool:
        """Whether ``holds`` is true on every process (each one must call this at the same point)."""
        if self.accelerator.num_processes == 1:
            return holds
        flag = torch.tensor([0.0 if holds else 1.0], device=self.accelerator.device)
        return not bool(self.accelerator.reduce(flag, reduction="sum").item())

    def _average_gradients(self, model: torch.nn.Module) -> None:
        """Average the trainable parameters' gradients over processes (what DDP's forward would have arranged).

        One flat all-reduce; a parameter without a gradient on every process keeps ``grad=None`` (the
        optimizer skips it, as it would on one process).
        """
        import torch.distributed as dist

        params = [p for p in self.accelerator.unwrap_model(model).parameters() if p.requires_grad]
        if not params:
            return
        device = params[0].device
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
        dist.all_reduce(has_grad, op=dist.ReduceOp.SUM)
        used = [p for p, flag in zip(params, has_grad.tolist()) if flag > 0]
        grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).float().reshape(-1) for p in used]
        flat = torch.cat(grads).to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(self.accelerator.num_processes)
        for p, chunk in zip(used, flat.split([p.numel() for p in used])):
            p.grad = chunk.view_as(p).to(p.dtype)

    # ---- checkpoints ----------------------------------------------------------------------------
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(
                    f"resume_from_checkpoint=True but {self.args.output_dir} holds no complete checkpoint; "
                    "start without resume_from_checkpoint."
                )
        self._started_step, self._micro_in_step = None, 0  # a (resumed) run starts a fresh step
        model_init = self.model_init
        if model_init is not None:
            self._reinit_model(trial)
        try:
            # the frozen base model's BatchNorm statistics are not saved with an adapter: they must not drift
            with frozen_batchnorm_in_eval(self.model):
                return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                                     ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        finally:
            self.model_init = model_init

    def _reinit_model(self, trial: Any) -> None:
        """``model_init`` (and ``hyperparameter_search``): make this run's fresh model here, as Trainer would inside
        ``train``, so that the BatchNorm freeze covers it; Trainer then finds ``model_init`` unset for this call.

        An objective with modules, optimizers or state of its own was set up on the model the trainer was built
        with and cannot follow a new one: that is refused, with what to do instead."""
        from transformers import enable_full_determinism, set_seed

        if type(self.objective) is not TrainingObjective:
            raise ValueError(
                f"model_init (and hyperparameter_search) make a new model inside train(), but the "
                f"{self.objective.name!r} objective was set up on the model this trainer was built with (its own "
                "modules, optimizers and state). Build one LowDataTrainer per trial, with its own model."
            )
        enable_full_determinism(self.args.seed) if self.args.full_determinism else set_seed(self.args.seed)
        self.model = self.call_model_init(trial)
        self.optimizer, self.lr_scheduler = None, None
        if self.place_model_on_device:
            self._move_model_to_device(self.model, self.args.device)
        self.model_wrapped = self.model
        self.model_init = None

    def _save_rng_state(self, output_dir: str) -> None:
        """Each process saves its RNG state; all wait before the main one writes ``trainer_state.json``.

        ``trainer_state.json`` marks a checkpoint complete (:func:`last_complete_checkpoint`): without
        the barrier the main process could write it while another process's RNG file was half-written.
        """
        super()._save_rng_state(output_dir)
        self.accelerator.wait_for_everyone()

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if not self.args.should_save:
            return
        if self.auxiliary_optimizers:
            state = {
                name: {
                    "optimizer": entry.optimizer.state_dict(),
                    "scheduler": entry.scheduler.state_dict() if entry.scheduler is not None else None,
                }
                for name, entry in self.auxiliary_optimizers.items()
            }
            _atomic_torch_save(state, os.path.join(output_dir, AUX_OPTIMIZERS_FILE))
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.objective.state_dict().items()}
        if tensors:
            tmp = os.path.join(output_dir, OBJECTIVE_STATE_FILE + ".tmp")
            save_safetensors(tensors, tmp)
            os.replace(tmp, os.path.join(output_dir, OBJECTIVE_STATE_FILE))
        record = self.objective.json_state()
        if record:  # written whole before trainer_state.json marks the checkpoint complete
            try:
                text = json.dumps(record)
            except (TypeError, ValueError) as err:
                raise TypeError(f"The {self.objective.name!r} objective's json_state() cannot be saved as JSON ({err}): "
                                "return numbers, strings, lists and dicts only.") from err
            atomic_write_text(os.path.join(output_dir, OBJECTIVE_JSON_FILE), text)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: the objective's state too comes from the best checkpoint (Trainer reloads the
        model's weights only)."""
        super()._load_best_model()
        best = self.state.best_model_checkpoint
        path = os.path.join(best, OBJECTIVE_STATE_FILE) if best else None
        if path is not None and os.path.isfile(path):
            self.objective.load_state_dict(load_safetensors(path))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        aux_path = os.path.join(checkpoint, AUX_OPTIMIZERS_FILE)
        objective_path = os.path.join(checkpoint, OBJECTIVE_STATE_FILE)
        missing = [f for f, needed in ((AUX_OPTIMIZERS_FILE, bool(self.auxiliary_optimizers)),
                                       (OBJECTIVE_STATE_FILE, bool(self.objective.state_dict())))
                   if needed and not os.path.isfile(os.path.join(checkpoint, f))]
        if missing:
            weights_only = not any(os.path.isfile(os.path.join(checkpoint, f)) for f in ("optimizer.pt", "optimizer.bin"))
            why = ("it was saved with save_only_model=True (weights only)" if weights_only
                   else f"it was not written by the {self.objective.name!r} objective")
            raise FileNotFoundError(
                f"Checkpoint {checkpoint} has no {' or '.join(missing)}, which the {self.objective.name!r} objective "
                f"needs to resume exactly where it stopped: {why}. Resume from a full checkpoint of this objective, "
                "or start the run afresh."
            )
        if self.auxiliary_optimizers:
            state = torch.load(aux_path, map_location="cpu", weights_only=True)
            for name, entry in self.auxiliary_optimizers.items():
                if name not in state:
                    raise KeyError(f"Checkpoint {checkpoint} has no state for auxiliary optimizer {name!r}.")
                entry.optimizer.load_state_dict(state[name]["optimizer"])
                if entry.scheduler is not None and state[name]["scheduler"] is not None:
                    entry.scheduler.load_state_dict(state[name]["scheduler"])
        if os.path.isfile(objective_path):
            self.objective.load_state_dict(load_safetensors(objective_path))
        record_path = os.path.join(checkpoint, OBJECTIVE_JSON_FILE)
        if os.path.isfile(record_path):
            try:
                record = json.loads(Path(record_path).read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise ValueError(f"Checkpoint {checkpoint}: {OBJECTIVE_JSON_FILE} cannot be read ({err}). Resume from "
                                 "another checkpoint, or start the run afresh.") from err
            self.objective.load_json_state(record)
        elif self.objective.json_state():  # a record only: training resumes exactly, its record starts here
            warnings.warn(f"Checkpoint {checkpoint} has no {OBJECTIVE_JSON_FILE} (written by an older hf_lowdata): "
                          f"the {self.objective.name!r} objective's json_state() (a record such as its history) of "
                          f"the steps up to {self.state.global_step} is not restored, so it covers the later steps "
                          "only. Training itself resumes exactly.", UserWarning, stacklevel=2)


def _sums_its_loss_over_items(model: torch.nn.Module) -> bool:
    """Whether ``model`` (a PEFT model or not) divides its loss by Trainer's ``num_items_in_batch``: transformers'
    causal language models do, or a model that declares ``accepts_loss_kwargs = True``. Every other head returns
    a batch mean, whatever its forward accepts (a wrong "no" only gives each micro-batch equal weight)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    declared = getattr(inner, "accepts_loss_kwargs", None)
    return bool(declared) if declared is not None else type(inner).__name__.endswith("ForCausalLM")


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _atomic_torch_save(obj: Any, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class _FirstItem:
    """Collate a batch of one item as that item alone (what a loader with ``batch_size=None`` yields)."""

    def __init__(self, collate_fn: Any) -> None:
        self.collate_fn = collate_fn

    def __call__(self, items: list[Any]) -> Any:
        return self.collate_fn(items[0])


def _with_batch_sampler(loader: DataLoader) -> DataLoader:
    """``loader`` with the same items in the same order, but with a batch sampler.

    An objective may yield ready-made batches (episodes) with ``batch_size=None``; such a loader has no
    batch sampler, which accelerate needs to skip the batches already seen when a run resumes. Batches
    of one item, unwrapped by the collate function, give the same items and make resuming work.
    """
    if loader.batch_size is not None or isinstance(loader.dataset, IterableDataset):
        return loader
    return DataLoader(
        loader.dataset, batch_size=1, sampler=loader.sampler, collate_fn=_FirstItem(loader.collate_fn),
        num_workers=loader.num_workers, pin_memory=loader.pin_memory, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn, generator=loader.generator,
        persistent_workers=loader.persistent_workers if loader.num_workers > 0 else False,
    )
