"""``twin_turbo`` and its ablations: a TwinTurbo projector trained on cached backbone token states.

The backbone is frozen and nothing is augmented, so its token states are computed once per input
(:mod:`hf_lowdata.features`) and training touches only the projector, its head and the
training-only discriminator / critics. Ablations (same projector, same labels, same budget):

* ``twin_turbo_ce`` — plain cross-entropy (every bound term off): the paper's baseline;
* ``twin_turbo_nolatent`` — without the latent-space bound;
* ``twin_turbo_noadv`` — without the adversarial KL term;
* ``twin_turbo_notask`` — without the task-space bound's unlabelled terms (marginal and adversarial):
  the conditional cross-entropy and the latent bound only. With ``_nolatent`` this gives the spec's
  "without each bound" (the conditional term is the supervision itself, kept in every variant).

"Without unlabelled data" is ``twin_turbo`` run with no unlabelled pool (``--unlabelled 0``;
the bench's default is 2,000): the task-space terms then use the labelled batch.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftConfig

from ..budgets import Budget
from ..data import FewShotTask
from ..features import (
    FeatureCache,
    TokenStateDataset,
    collate_token_states,
    model_fingerprint,
    text_token_states,
)
from ..models import resolve_model_path
from ..tuners.twin_turbo import TwinTurboConfig, TwinTurboObjective, twin_turbo_layer
from .base import (
    CLASS_WEIGHT_OPTION,
    FittedClassifier,
    Method,
    RunCancelled,
    RunContext,
    SharedCache,
    TransformerClassifier,
    _median,
    _run_callback,
    adapt_model,
    class_weights_note,
    default_device,
    dev_selection_callback,
    load_base_classifier,
    method_config,
    register_method,
)

BUDGET_NAME = "twin_turbo"
_OFF = {"marginal_weight": 0.0, "adversarial_weight": 0.0, "latent_weight": 0.0}
#: TwinTurboConfig fields each registered variant fixes (text and image benchmarks share them).
METHOD_VARIANTS: dict[str, dict[str, Any]] = {
    "twin_turbo": {},
    "twin_turbo_ce": _OFF,
    "twin_turbo_nolatent": {"latent_weight": 0.0},
    "twin_turbo_noadv": {"adversarial_weight": 0.0},
    "twin_turbo_notask": {"marginal_weight": 0.0, "adversarial_weight": 0.0},
}
#: Texts whose token states :class:`TwinTurboClassifier` holds at once while predicting.
PREDICT_CHUNK = 2048
#: TwinTurboConfig fields a run may set (``--config``): the method's own, not PEFT's bookkeeping (``peft_type``,
#: ``task_type``, ``revision``, ...) nor what the model and task give (``num_labels``, ``token_dim``), which a
#: benchmark option would contradict.
_CONFIG_FIELDS = ({f.name for f in dataclasses.fields(TwinTurboConfig)} - {f.name for f in dataclasses.fields(PeftConfig)}
                  - {"num_labels", "token_dim"})
_FEATURE_CACHES: weakref.WeakKeyDictionary[SharedCache, FeatureCache] = weakref.WeakKeyDictionary()

StatesFn = Callable[[Sequence[Any]], list[torch.Tensor]]


def feature_cache(ctx: RunContext) -> FeatureCache:
    """One feature cache per benchmark (per SharedCache); on disk if ``--config feature_cache_dir=...``."""
    cache = _FEATURE_CACHES.get(ctx.cache)
    if cache is None:
        cache = _FEATURE_CACHES[ctx.cache] = FeatureCache(ctx.option(BUDGET_NAME, "feature_cache_dir", None))
    return cache


def unlabelled_batch_size(ctx: RunContext) -> int:
    """The ``unlabelled_batch_size`` option (texts per unlabelled batch): a positive whole number."""
    return ctx.number_option(BUDGET_NAME, "unlabelled_batch_size", 256, whole=True, low=1)


def build_config(ctx: RunContext, overrides: dict[str, Any], **fixed: Any) -> TwinTurboConfig:
    """TwinTurboConfig from the budget's and the run's options (known fields only), then ``overrides``; a value it
    refuses is a :class:`MethodConfigError` naming the option (:func:`~hf_lowdata.methods.base.method_config`)."""
    budget = ctx.budget_for(BUDGET_NAME)
    values = {k: v for k, v in {**budget.options, **ctx.options}.items() if k in _CONFIG_FIELDS}
    return method_config(BUDGET_NAME, TwinTurboConfig, **{**values, **overrides, **fixed})


@torch.inference_mode()
def predict_from_states(model: torch.nn.Module, states: Sequence[torch.Tensor], batch_size: int = 256) -> np.ndarray:
    """Logits of a TwinTurbo model for cached token states (length-sorted batches, input order kept)."""
    layer = twin_turbo_layer(model)
    was_training = model.training
    model.eval()
    try:
        order = sorted(range(len(states)), key=lambda i: -states[i].shape[0])
        out = np.empty((len(states), layer.adapter_head().num_labels), dtype=np.float32)
        device = next(layer.parameters()).device
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate_token_states([{"token_states": states[i]} for i in idx])
            z = layer.encode(batch["token_states"].to(device), batch["token_mask"].to(device))
            out[idx] = layer.classify(z).float().cpu().numpy()
        return out
    finally:
        model.train(was_training)


def train_projector(
    model: torch.nn.Module, labelled: TokenStateDataset, unlabelled: TokenStateDataset | None, budget: Budget,
    ctx: RunContext, run_name: str, config: TwinTurboConfig, callbacks: Sequence[Any] = (),
    class_weights: torch.Tensor | None = None,
):
    """Train a TwinTurbo PEFT model on cached token states; return the trainer and its step timer.
    ``callbacks``: more TrainerCallbacks (e.g. dev-set selection); ``class_weights``: the conditional loss's."""
    from ..training import LowDataTrainer, few_shot_training_args

    device = default_device(ctx.device)
    args = few_shot_training_args(
        str(Path(ctx.work_dir) / f"{run_name}-seed{ctx.seed}"), budget, len(labelled), ctx.seed,
        use_cpu=device.type == "cpu", lr_scheduler_type="cosine",
    )
    callback = _run_callback(ctx, run_name)
    trainer = LowDataTrainer(
        model=model, args=args, train_dataset=labelled, data_collator=collate_token_states,
        objective=TwinTurboObjective(config), unlabeled_dataset=unlabelled,
        unlabeled_batch_size=unlabelled_batch_size(ctx),
        callbacks=[callback, *callbacks], class_weights=class_weights,
    )
    if ctx.quiet:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    trainer.train()
    return trainer, callback


class TwinTurboClassifier(TransformerClassifier):
    """The trained PEFT model; predictions reuse cached token states unless ``use_cache=False``."""

    caches_features = True

    def __init__(self, model: torch.nn.Module, tokenizer: Any, label_names: Sequence[str], max_length: int,
                 states: StatesFn) -> None:
        super().__init__(model, tokenizer, label_names, max_length)
        self.states = states

    def predict_proba(self, texts: Sequence[str], use_cache: bool = True) -> np.ndarray:
        if not use_cache:  # the real cost: backbone + projector on raw text
            return super().predict_proba(texts)
        # in chunks: the float32 batches of a whole large test set at once would take 2x its fp16 cache again
        chunks = [predict_from_states(self.model, self.states(texts[start : start + PREDICT_CHUNK]))
                  for start in range(0, len(texts), PREDICT_CHUNK)]
        logits = np.concatenate(chunks) if chunks else predict_from_states(self.model, [])
        return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()


@register_method
class TwinTurbo(Method):
    name = "twin_turbo"
    summary = "TwinTurbo: projector + head on frozen token states, MI bounds on labelled + unlabelled data"
    paper = ("Quétant, Molchanov, Voloshynovskiy, TwinTURBO: Semi-Supervised Fine-Tuning of Foundation Models via "
             "Mutual Information Decompositions for Downstream Task and Latent Spaces, arXiv:2503.07851, 2025")
    uses_unlabelled = True
    budget_name = BUDGET_NAME
    option_names = frozenset(_CONFIG_FIELDS | {"feature_cache_dir", "unlabelled_batch_size", CLASS_WEIGHT_OPTION})

    @classmethod
    def fixed_options(cls) -> Mapping[str, Any]:
        return dict(METHOD_VARIANTS.get(cls.name, {}))

    def peft_config(self, ctx: RunContext) -> TwinTurboConfig:
        """TwinTurboConfig from the run's options and this variant's fixed settings."""
        from peft import TaskType

        return build_config(ctx, METHOD_VARIANTS[self.name], task_type=TaskType.SEQ_CLS)

    def check_options(self, ctx: RunContext) -> None:
        super().check_options(ctx)
        self.peft_config(ctx)
        unlabelled_batch_size(ctx)

    def fit(self, task: FewShotTask, ctx: RunContext) -> FittedClassifier:
        budget = ctx.budget_for(BUDGET_NAME)
        # the options first: a bad one fails at once, not after every text has passed the backbone
        config = self.peft_config(ctx)
        batch_size = unlabelled_batch_size(ctx)
        class_weights = self.class_weights(task, ctx)
        tokenizer, backbone = ctx.cache.tokenizer(ctx.model), ctx.cache.encoder(ctx.model, ctx.device)
        key = model_fingerprint(resolve_model_path(ctx.model))
        # The run's cache (shared by a benchmark's runs) only while its SharedCache lives: a trained model kept
        # afterwards (the demo's, for pushing) must not keep every unlabelled text's token states in memory.
        shared = weakref.ref(feature_cache(ctx))

        def caching_progress(done: int, total: int) -> None:
            if ctx.cancel is not None and ctx.cancel.is_set():
                raise RunCancelled(f"{self.name}: cancelled while caching token states ({done}/{total})")
            if ctx.progress is not None:
                ctx.progress(f"{self.name}: caching token states {done}/{total}", 0.0)

        def states(texts: Sequence[str], on_batch: Callable[[int, int], None] | None = None) -> list[torch.Tensor]:
            cache = shared()
            if cache is None:  # the run's SharedCache is gone: a cache for this call only (kept, it would grow
                cache = FeatureCache()  # with every text the model is ever asked about)
            # the cache's fp16 tensors, not float32 copies (half the memory; batches are built in float32)
            return text_token_states(cache, backbone, tokenizer, texts, budget.max_length, key, on_batch=on_batch,
                                     as_stored=True)

        def training_states(texts: Sequence[str]) -> list[torch.Tensor]:
            return states(texts, on_batch=caching_progress)

        assert task.labelled.labels is not None
        labelled = TokenStateDataset(training_states(task.labelled.texts), task.labelled.labels)
        unlabelled, pool_note = None, None
        if self.uses_unlabelled and task.unlabelled is not None and len(task.unlabelled):  # (a draw may leave none)
            texts = list(task.unlabelled.texts)
            used = budget.steps(len(labelled)) * batch_size * max(
                1, int(os.environ.get("WORLD_SIZE", "1")))
            if len(texts) > used:  # training draws each text at most once: cache only the ones it will draw
                keep = np.sort(np.random.default_rng(ctx.seed).choice(len(texts), used, replace=False))
                texts, pool_note = [texts[i] for i in keep], {"unlabelled_pool": len(texts), "unlabelled_used": used}
            unlabelled = TokenStateDataset(training_states(texts))
        base = load_base_classifier(task, ctx)
        model = adapt_model(self.name, base, config).to(default_device(ctx.device))
        dev_selection = None
        if task.dev is not None:  # the same dev-set step selection as every method that trains in steps
            dev_states = training_states(task.dev.texts)
            dev_selection = dev_selection_callback(task.dev.labels, lambda m: predict_from_states(m, dev_states),
                                                   budget.steps(len(labelled)))
        trainer, callback = train_projector(model, labelled, unlabelled, budget, ctx, self.name, config,
                                            callbacks=[dev_selection] if dev_selection is not None else [],
                                            class_weights=class_weights)
        if dev_selection is not None:
            dev_selection.restore(trainer.model)
        fitted = TwinTurboClassifier(trainer.model, tokenizer, task.label_names, budget.max_length, states)
        if pool_note is not None:
            fitted.notes.update(pool_note)
        fitted.notes.update(class_weights_note(class_weights))
        if config.reads_label_prior:  # p(y) the unlabelled terms pulled towards
            fitted.notes["label_prior"] = [round(float(p), 4) for p in trainer.objective.prior]
        if dev_selection is not None:
            fitted.notes.update(dev_accuracy=dev_selection.best_accuracy, selected_step=dev_selection.best_step)
        fitted.train_step_seconds = _median(callback.step_seconds)
        fitted.optimizer_step_seconds = _median(callback.optimizer_seconds)
        return fitted


@register_method
class TwinTurboCE(TwinTurbo):
    name = "twin_turbo_ce"
    summary = "TwinTurbo ablation: the same projector trained with cross-entropy only"
    uses_unlabelled = False


@register_method
class TwinTurboNoLatent(TwinTurbo):
    name = "twin_turbo_nolatent"
    summary = "TwinTurbo ablation: without the latent-space bound"


@register_method
class TwinTurboNoAdv(TwinTurbo):
    name = "twin_turbo_noadv"
    summary = "TwinTurbo ablation: without the adversarial KL term"


@register_method
class TwinTurboNoTask(TwinTurbo):
    name = "twin_turbo_notask"
    summary = "TwinTurbo ablation: without the task-space bound's unlabelled terms (cross-entropy + latent bound)"
