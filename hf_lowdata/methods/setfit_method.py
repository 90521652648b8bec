"""``setfit``: SetFit (contrastive fine-tuning of the sentence encoder + logistic head), optional.

Needs the ``setfit`` extra (``pip install hf-lowdata[setfit]``). SetFit's own save format pickles the
head; we save the body with safetensors and the head's coefficients as safetensors instead.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from ..budgets import Budget
from ..data import FewShotTask, require_two_classes
from ..models import resolve_model_path
from .base import (
    CLASS_WEIGHT_OPTION,
    FittedClassifier,
    Method,
    MethodConfigError,
    RunContext,
    _run_callback,
    count_trainable,
    number_option,
    register_method,
)
from .probe import float64_head


class SetFitClassifier(FittedClassifier):
    def __init__(self, model, label_names: Sequence[str]) -> None:
        self.model = model
        self.label_names = tuple(label_names)
        head = float64_head(model.model_head) if hasattr(model.model_head, "coef_") else model.model_head
        head_params = int(head.coef_.size + head.intercept_.size) if hasattr(head, "coef_") else count_trainable(head)
        self.trainable_parameters = count_trainable(model.model_body) + head_params

    def to(self, device: str | torch.device) -> SetFitClassifier:
        self.model.to(device)
        return self

    def predict_proba(self, texts: Sequence[str], use_cache: bool = True) -> np.ndarray:
        proba = self.model.predict_proba(list(texts), as_numpy=True)
        head = self.model.model_head
        if hasattr(head, "classes_") and len(head.classes_) != len(self.label_names):
            full = np.zeros((len(texts), len(self.label_names)), dtype=np.float32)
            full[:, head.classes_] = proba
            return full
        return np.asarray(proba, dtype=np.float32)

    def save(self, directory: str | os.PathLike) -> Path:
        out = Path(directory)
        (out / "body").mkdir(parents=True, exist_ok=True)
        self.model.model_body.save(str(out / "body"), safe_serialization=True)
        head = self.model.model_head
        save_file(
            {"coef": torch.from_numpy(np.ascontiguousarray(head.coef_, dtype=np.float32)),
             "intercept": torch.from_numpy(np.ascontiguousarray(head.intercept_, dtype=np.float32)),
             # the label ids the head's columns stand for: a class without training examples (a declared label
             # name) has no column, so the columns are not always 0..num_labels-1
             "classes": torch.from_numpy(np.asarray(head.classes_, dtype=np.int64))},
            str(out / "setfit_head.safetensors"),
        )
        (out / "setfit_config.json").write_text(json.dumps({"method": "setfit", "label_names": list(self.label_names)}))
        return out


@register_method
class SetFit(Method):
    name = "setfit"
    summary = "SetFit: contrastive fine-tuning of the sentence encoder, then a logistic head"
    paper = "Tunstall et al., Efficient Few-Shot Learning Without Prompts, 2022"
    option_names = frozenset({"num_iterations", CLASS_WEIGHT_OPTION})

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import setfit  # noqa: F401
        except Exception as err:  # noqa: BLE001 - any import failure makes it unavailable
            return f"the optional package 'setfit' does not import ({err}); install it with pip install 'hf-lowdata[setfit]'"
        return None

    def planned_steps(self, num_examples: int, budget: Budget, options: Mapping[str, Any]) -> int:
        """The recipe's steps: 2 x num_iterations pairs per labelled example per epoch, in batches. A preset
        scales them through ``epochs``; ``max_steps`` (a setting, e.g. the demo's) caps them."""
        iterations = number_option(self.name, "num_iterations",
                                   options.get("num_iterations", budget.options.get("num_iterations", 20)),
                                   whole=True, low=1, example=20)
        recipe = math.ceil(2 * iterations * num_examples / budget.batch_size)
        return min(budget.max_steps, max(1, round(recipe * budget.epochs)))

    def iterations(self, ctx: RunContext) -> int:
        """Option ``num_iterations``: contrastive pairs per labelled example (SetFit's own name), at least 1."""
        return ctx.number_option(self.name, "num_iterations", 20, whole=True, low=1)

    def check_options(self, ctx: RunContext) -> None:
        super().check_options(ctx)
        self.iterations(ctx)

    def fit(self, task: FewShotTask, ctx: RunContext) -> FittedClassifier:
        from setfit import SetFitModel, Trainer, TrainingArguments

        from ..models import position_limit

        budget = ctx.budget_for(self.name)
        require_two_classes(task.labelled)  # SetFit's pair sampler fails with an IndexError on one class
        if task.labelled.pairs:
            raise MethodConfigError(
                "setfit embeds one sentence per example, and these examples are pairs of texts (premise / hypothesis, "
                "question / passage): its sentence encoder would read them as one run-on sentence. Compare the other "
                "methods on pairs (probe, lora, full, ...): they encode the two texts as the model's two segments.")
        # the logistic head weights classes as the probe's does (an uneven labelled set only: a balanced one keeps
        # the published recipe exactly); the contrastive phase is SetFit's own
        uneven = self.class_weights(task, ctx) is not None
        torch.manual_seed(ctx.seed)
        model = SetFitModel.from_pretrained(str(resolve_model_path(ctx.model)), local_files_only=True)
        if uneven:  # (set on the head itself: head_params= is ignored where the folder holds a saved head)
            if not hasattr(model.model_head, "class_weight"):
                raise MethodConfigError(f"{self.name}: class_weight=balanced weights SetFit's logistic head, but this "
                                        f"model's head is a {type(model.model_head).__name__}; leave it out.")
            model.model_head.set_params(class_weight="balanced")
        if ctx.device:
            model.to(ctx.device)
        iterations = self.iterations(ctx)
        steps = self.planned_steps(len(task.labelled), budget, {"num_iterations": iterations})
        args = TrainingArguments(
            output_dir=str(Path(ctx.work_dir) / f"setfit-seed{ctx.seed}"),
            batch_size=budget.batch_size,
            num_epochs=max(1, math.ceil(budget.epochs)),
            max_steps=steps,
            num_iterations=iterations,
            body_learning_rate=budget.learning_rate,
            max_length=budget.max_length,
            seed=ctx.seed,
            show_progress_bar=False,
            save_strategy="no",
            report_to="none",
        )
        # progress and the demo's cancel button, as for the methods trained by LowDataTrainer
        trainer = Trainer(model=model, args=args, train_dataset=task.labelled.to_hf(),
                          callbacks=[_run_callback(ctx, self.name)])
        # SetFit's TrainingArguments.max_length reaches only its end-to-end head: the encoder trains and predicts on
        # its own max_seq_length (256 for all-MiniLM-L6-v2). Cut texts where every other method does; the saved
        # body records it (sentence_bert_config.json), so a reloaded model cuts them there too.
        limit = position_limit(resolve_model_path(ctx.model))
        model.model_body.max_seq_length = min(budget.max_length, limit) if limit else budget.max_length
        trainer.train()
        fitted = SetFitClassifier(model, task.label_names)
        if uneven:
            fitted.notes["class_weights"] = "balanced (logistic head)"
        if task.dev is not None:  # said in the record rather than silently: SetFit runs its published recipe
            fitted.notes["dev_set"] = "not used: SetFit trains its fixed recipe, with no step to select"
        return fitted
