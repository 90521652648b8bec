"""MixupBLO in the benchmark: the fold loop, fold averaging and phase 2 (Somayajula et al., NAACL 2024).

:func:`train_mixup_blo` is the whole training protocol of the paper, reusable outside the benchmark:

1. Phase 1, search, ``config.folds`` times: a fresh model from the pretrained start, a fresh
   stratified random split of the labelled set (``split_ratio`` inner, the rest validation), and
   one :class:`~hf_lowdata.training.LowDataTrainer` run with the bi-level
   :class:`~hf_lowdata.training.bilevel.MixupBLOObjective`.
2. Fold averaging: every trainable parameter (task weights, bias offsets, classifier, mixing factors)
   is set to its mean over the folds, a weight-space ensemble (``average_folds=False``: only the
   mixing factors are averaged; the rest restarts from the pretrained model).
3. Phase 2: the mixing factors are frozen and every other trainable parameter is fine-tuned on all
   labelled examples with plain supervised training.

Folds run one after another in this process; running them in parallel processes is not
implemented (on the CPU machines this benchmark targets it would not be faster).
The benchmark methods: ``mixup_blo`` (the paper), ``mixup_blo_lora`` (task weight W0 + B A, a small
adapter), and the ablations ``mixup_blo_joint`` (single-level joint training), ``mixup_blo_noavg``
(no fold averaging), ``mixup_blo_fo`` (first-order hypergradient) and ``mixup_blo_fast`` (one fold,
first-order: the variant whose training time is within about 4x full fine-tuning's).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..data import FewShotTask, collator, tokenize
from .base import (
    FittedClassifier,
    RunContext,
    TransformerClassifier,
    TransformerMethod,
    _median,
    _run_callback,
    class_weights_note,
    count_trainable,
    default_device,
    dev_selection_callback,
    load_base_classifier,
    method_config,
    no_target_error,
    register_method,
    require_heldout_examples,
    text_dev_logits,
)

#: Fold f trains with seed ``seed + FOLD_SEED_STRIDE * f`` (its split, data order and dropout).
FOLD_SEED_STRIDE = 7919
#: Gradient clipping of the inner problem in phase 1 (the authors' betty config: 5.0).
SEARCH_MAX_GRAD_NORM = 5.0


def _is_mixing(name: str) -> bool:
    return ".mixup_blo_mix_out." in name or ".mixup_blo_mix_in." in name


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def average_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of parameter dicts with the same keys (computed in float64)."""
    if not states:
        raise ValueError("No fold states to average.")
    keys = states[0].keys()
    for state in states[1:]:
        if state.keys() != keys:
            raise ValueError("Fold states have different parameters; every fold must train the same adapter.")
    return {k: (sum(s[k].double() for s in states) / len(states)).to(states[0][k].dtype) for k in keys}


def train_mixup_blo(
    base_model: Callable[[], torch.nn.Module],
    config: Any,
    train_dataset: Any,
    training_args: Callable[[str, int, int, int], Any],
    seed: int = 0,
    trainer_kwargs: dict[str, Any] | None = None,
    on_trainer: Callable[[Any, str, int], None] | None = None,
    state_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> torch.nn.Module:
    """Run the MixupBLO protocol and return the trained PEFT model (mixing factors frozen).

    Args:
        base_model: returns a fresh pretrained model (with its new head, same initialisation each call).
        config: the :class:`~hf_lowdata.tuners.mixup_blo.MixupBLOConfig`.
        train_dataset: all labelled examples, tokenised (``datasets.Dataset`` with ``labels``).
        training_args: ``(phase, fold, num_examples, seed) -> TrainingArguments``; phase is "search"
            (fold 0..folds-1) or "finetune" (fold -1). Give each run its own ``output_dir``.
        seed: the run's seed; fold ``f`` uses ``seed + FOLD_SEED_STRIDE * f``.
        trainer_kwargs: passed to every :class:`~hf_lowdata.training.LowDataTrainer` (data_collator,
            processing_class, callbacks).
        on_trainer: called with (trainer, phase, fold) before each run (callbacks, logging).
        state_dir: if given, each finished fold's parameters are written there (safetensors, atomically),
            so that ``resume=True`` skips finished folds after a kill.
        resume: skip folds saved in ``state_dir`` and continue each run from its last complete Trainer
            checkpoint in its ``output_dir``.
    """
    from accelerate import PartialState
    from peft import get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import set_seed

    from ..training import LowDataTrainer, TrainingObjective, last_complete_checkpoint
    from ..training.bilevel import MixupBLOObjective, _subset, split_indices
    from ..training.objectives import dataset_labels

    trainer_kwargs = dict(trainer_kwargs or {})
    labels = dataset_labels(train_dataset)
    n = len(train_dataset)

    def run(trainer: Any, phase: str, fold: int) -> None:
        if on_trainer is not None:
            on_trainer(trainer, phase, fold)
        checkpoint = last_complete_checkpoint(trainer.args.output_dir) if resume else None
        trainer.train(resume_from_checkpoint=checkpoint)

    states: list[dict[str, torch.Tensor]] = []
    for fold in range(config.folds):
        saved = Path(state_dir) / f"fold{fold}.safetensors" if state_dir is not None else None
        if resume and saved is not None and saved.is_file():
            states.append(load_file(str(saved)))
            continue
        fold_seed = seed + FOLD_SEED_STRIDE * fold
        base = base_model()
        set_seed(seed)  # every fold starts from the same adapter (LoRA's A, the mixing noise): a shared start,
        model = get_peft_model(base, copy.deepcopy(config))  # which averaging the folds' weights assumes
        if config.hypergradient == "none":  # single-level: no validation role, all examples train
            inner_data, validation = train_dataset, None
        else:
            inner, outer = split_indices(labels, n, config.split_ratio, fold_seed)
            inner_data, validation = _subset(train_dataset, inner), _subset(train_dataset, outer)
        trainer = LowDataTrainer(
            model=model,
            args=training_args("search", fold, len(inner_data), fold_seed),
            train_dataset=inner_data,
            objective=MixupBLOObjective.from_config(config, validation_dataset=validation),
            **trainer_kwargs,
        )
        run(trainer, "search", fold)
        states.append(_trainable_state(model))
        if saved is not None:  # one writer under DDP (every process holds the same fold state), then all wait
            process = PartialState()
            if process.is_main_process:
                saved.parent.mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in states[-1].items()}, str(saved) + ".tmp")
                os.replace(str(saved) + ".tmp", saved)
            process.wait_for_everyone()
    averaged = average_states(states)
    if not config.average_folds:  # only the mixing factors carry over; the rest restarts from pretrained
        averaged = {k: v for k, v in averaged.items() if _is_mixing(k)}
    set_seed(seed)
    model = get_peft_model(base_model(), copy.deepcopy(config))
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in averaged.items():
            parameters[name].copy_(value)
    for name, p in parameters.items():
        if _is_mixing(name):
            p.requires_grad_(False)
    trainer = LowDataTrainer(
        model=model,
        args=training_args("finetune", -1, n, seed),
        train_dataset=train_dataset,
        objective=TrainingObjective(),  # phase 2: plain fine-tuning with the mixing frozen
        **trainer_kwargs,
    )
    run(trainer, "finetune", -1)
    return model


class MixupBLOClassifier(TransformerClassifier):
    """Predicts with the merged model (plain Linear layers); saves the adapter."""

    def __init__(self, peft_model: torch.nn.Module, tokenizer: Any, label_names: Sequence[str], max_length: int,
                 merge: bool = True) -> None:
        self.peft_model = peft_model.eval()
        merged = copy.deepcopy(peft_model).merge_and_unload() if merge else peft_model
        super().__init__(merged, tokenizer, label_names, max_length)

    def save(self, directory: str | os.PathLike) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.peft_model.save_pretrained(out, safe_serialization=True)
        return out


#: MixupBLOConfig fields a run may set with ``--config key=value`` or budget options.
CONFIG_OPTIONS = (
    "task_weight", "r", "lora_alpha", "init_mean", "init_std", "train_bias", "hypergradient", "split_ratio",
    "folds", "average_folds", "mixing_lr", "mixing_weight_decay", "mixing_warmup_ratio", "mixing_scheduler",
    "darts_radius", "darts_precondition", "target_modules", "modules_to_save",
)


#: The method default's name for "the model's normalisation layers" (BERT's are called LayerNorm).
NORM_LAYERS = "LayerNorm"


def normalisation_layers(model: torch.nn.Module) -> list[str]:
    """Names (as ``modules_to_save`` suffixes) of the model's LayerNorm / RMSNorm layers outside its head.

    BERT-style encoders give ``["LayerNorm"]``, GPT-2 ``["ln_1", "ln_2", "ln_f"]``, Llama
    ``["input_layernorm", "post_attention_layernorm", "norm"]``; none found gives ``[]`` (head only).
    """
    from ..models import in_head

    names: list[str] = []
    for name, module in model.named_modules():
        kind = type(module).__name__.lower()
        if not name or list(module.children()) or not ("layernorm" in kind or "rmsnorm" in kind):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in names and not in_head(name):
            names.append(leaf)
    return names


@register_method
class MixupBLO(TransformerMethod):
    name = "mixup_blo"
    summary = "MixupBLO: mix pretrained and task weights with factors learned bi-level on a held-out split, 5 folds averaged"
    paper = ("Somayajula et al., Generalizable and Stable Finetuning of Pretrained Language Models on Low-Resource "
             "Texts, NAACL 2024")
    #: Config values that define this variant (options cannot override them).
    variant: ClassVar[dict[str, Any]] = {}
    #: Defaults of this method that differ from MixupBLOConfig's: the paper trains every non-mixing
    #: parameter in the inner problem and in phase 2, so the LayerNorms are trained too (a few thousand
    #: values). The word embeddings stay frozen: 11.7M values on MiniLM, they would double the adapter.
    #: ``["LayerNorm"]`` stands for the model's own normalisation layers (:func:`normalisation_layers`:
    #: GPT-2's ``ln_1``/``ln_2``/``ln_f``, Llama's ``input_layernorm``, ...), resolved when the run starts.
    method_defaults: ClassVar[dict[str, Any]] = {"modules_to_save": [NORM_LAYERS]}
    option_names = frozenset({*CONFIG_OPTIONS, "merge"})

    @classmethod
    def fixed_options(cls) -> Mapping[str, Any]:
        return dict(cls.variant)

    def peft_config(self, ctx: RunContext) -> Any:
        from peft import TaskType

        from ..tuners.mixup_blo import MixupBLOConfig

        defaults = {f.name: f.default for f in fields(MixupBLOConfig) if f.name in CONFIG_OPTIONS}
        defaults.update(self.method_defaults)
        values = {name: copy.deepcopy(ctx.option(self.name, name, default)) for name, default in defaults.items()}
        values.update(self.variant)
        return method_config(self.name, MixupBLOConfig, task_type=TaskType.SEQ_CLS, **values)

    def check_options(self, ctx: RunContext) -> None:
        super().check_options(ctx)
        self.peft_config(ctx)
        ctx.flag_option(self.name, "merge", True)

    def fit(self, task: FewShotTask, ctx: RunContext) -> FittedClassifier:
        from peft.utils import NoMatchingPeftModuleError
        from transformers.trainer_callback import PrinterCallback

        from ..models import classification_skeleton, new_modules
        from ..training import few_shot_training_args

        budget = ctx.budget_for(self.name)
        config = self.peft_config(ctx)
        merge = ctx.flag_option(self.name, "merge", True)  # (before training, not after it)
        class_weights = self.class_weights(task, ctx)
        if config.hypergradient != "none":  # the bi-level search learns the mixing factors on held-out examples
            require_heldout_examples(task, self.name, "to learn the mixing factors on",
                                     "mixup_blo_joint (single-level, no held-out split)")
        if list(config.modules_to_save or ()) == [NORM_LAYERS]:
            config.modules_to_save = normalisation_layers(classification_skeleton(ctx.model, task.num_labels))
        tokenizer = ctx.cache.tokenizer(ctx.model)
        device = default_device(ctx.device)
        train = tokenize(task.labelled, tokenizer, max_length=budget.max_length)
        search_callbacks: list[Any] = []
        dev_selection = None
        if task.dev is not None:  # the same dev-set model selection as every transformer method, in phase 2
            dev_selection = dev_selection_callback(task.dev.labels, text_dev_logits(tokenizer, task.dev.texts,
                                                                                     budget.max_length),
                                                   budget.steps(len(task.labelled)))

        def base_model() -> torch.nn.Module:
            return load_base_classifier(task, ctx)

        fresh = new_modules(base_model())
        if fresh:  # e.g. a pooler the checkpoint lacks: trained and saved whole (as LoRA and FTP do), not mixed
            # with a random W0 that the saved adapter does not hold and a reload would draw again
            config.modules_to_save = [*(config.modules_to_save or []), *fresh]
            excluded = config.exclude_modules
            config.exclude_modules = (f"(?:{excluded})|" + "|".join(re.escape(name) for name in fresh)
                                      if isinstance(excluded, str) else {*(excluded or ()), *fresh})

        root = Path(ctx.checkpoint_dir or ctx.work_dir) / f"{self.name}-seed{ctx.seed}"
        save_steps = ctx.save_steps

        def training_args(phase: str, fold: int, n: int, seed: int) -> Any:
            extra: dict[str, Any] = {"max_grad_norm": SEARCH_MAX_GRAD_NORM} if phase == "search" else {}
            if save_steps > 0:
                extra.update(save_strategy="steps", save_steps=save_steps, save_total_limit=2)
            folder = root / (f"search{fold}" if phase == "search" else "finetune")
            return few_shot_training_args(str(folder), budget, n, seed, use_cpu=device.type == "cpu", **extra)

        def on_trainer(trainer: Any, phase: str, fold: int) -> None:
            label = f"{self.name} fold {fold + 1}/{config.folds}" if phase == "search" else f"{self.name} phase 2"
            callback = _run_callback(ctx, label)
            trainer.add_callback(callback)
            if phase == "search":
                search_callbacks.append(callback)
            elif dev_selection is not None:
                trainer.add_callback(dev_selection)
            if ctx.quiet:
                trainer.remove_callback(PrinterCallback)

        try:
            model = train_mixup_blo(
                base_model, config, train, training_args, seed=ctx.seed,
                trainer_kwargs={"data_collator": collator(tokenizer), "processing_class": tokenizer,
                                "class_weights": class_weights},
                on_trainer=on_trainer,
                state_dir=root if save_steps > 0 else None,
                resume=ctx.resume,
            )
        except NoMatchingPeftModuleError as err:  # (raised by the first fold's get_peft_model, before any training)
            raise no_target_error(self.name, base_model(), config) from err
        if dev_selection is not None:
            dev_selection.restore(model)
        fitted = MixupBLOClassifier(model, tokenizer, task.label_names, budget.max_length,
                                    merge=merge)
        if dev_selection is not None:
            fitted.notes.update(dev_accuracy=dev_selection.best_accuracy, selected_step=dev_selection.best_step)
        fitted.notes.update(class_weights_note(class_weights))
        # the search's inner and outer parameters: phase 2's plus the (then frozen) mixing factors
        fitted.trainable_parameters = count_trainable(model) + sum(
            p.numel() for n, p in model.named_parameters() if _is_mixing(n))
        fitted.train_step_seconds = _median([s for c in search_callbacks for s in c.step_seconds])
        fitted.optimizer_step_seconds = _median([s for c in search_callbacks for s in c.optimizer_seconds])
        return fitted


def _variant(name: str, summary: str, **variant: Any) -> type[MixupBLO]:
    """Register a MixupBLO variant: the same protocol with some config values fixed."""
    cls = type(f"MixupBLO_{name}", (MixupBLO,), {"name": name, "summary": summary, "variant": variant})
    return register_method(cls)


_variant("mixup_blo_lora", "MixupBLO with a LoRA task weight (W0 + B A): the same bi-level mixing, a small adapter",
         task_weight="lora")
_variant("mixup_blo_joint", "MixupBLO ablation: mixing factors trained jointly with the weights (single level, no split)",
         hypergradient="none")
_variant("mixup_blo_noavg", "MixupBLO ablation: only the mixing factors are averaged over folds (no weight-space ensemble)",
         average_folds=False)
_variant("mixup_blo_fo", "MixupBLO with the first-order hypergradient (validation gradient only): cheaper outer steps",
         hypergradient="first_order")
_variant("mixup_blo_fast", "MixupBLO, cheapest: one search fold with the first-order hypergradient",
         hypergradient="first_order", folds=1)
