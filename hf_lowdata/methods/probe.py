"""``probe``: logistic regression on frozen, mean-pooled sentence embeddings.

The cheapest sensible baseline and, for sentence encoders such as all-MiniLM-L6-v2, a strong one.
Embeddings come from the shared cache, so a benchmark embeds each test set once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from ..data import FewShotTask, require_two_classes
from .base import (
    CLASS_WEIGHT_OPTION,
    FittedClassifier,
    Method,
    RunContext,
    SharedCache,
    register_method,
)


class ProbeClassifier(FittedClassifier):
    caches_features = True

    def __init__(self, cache: SharedCache, model, head, label_names: Sequence[str], max_length: int,
                 device: str | None = None) -> None:
        self.cache = cache
        self.model = model
        self.device = device
        self.head = float64_head(head)
        self.label_names = tuple(label_names)
        self.max_length = max_length
        self.trainable_parameters = int(head.coef_.size + head.intercept_.size)

    def to(self, device: str | torch.device) -> ProbeClassifier:
        """Embed with the base model on ``device`` (the logistic head runs in scikit-learn)."""
        self.device = str(device)
        return self

    def predict_proba(self, texts: Sequence[str], use_cache: bool = True) -> np.ndarray:
        features = self.cache.embeddings(self.model, texts, self.max_length, use_cache=use_cache, device=self.device)
        return self._full_proba(self.head.predict_proba(features))

    def _full_proba(self, proba: np.ndarray) -> np.ndarray:
        """sklearn only has columns for classes seen in training; put them at their label ids."""
        out = np.zeros((proba.shape[0], len(self.label_names)), dtype=np.float32)
        out[:, self.head.classes_] = proba
        return out

    def save(self, directory: str | os.PathLike) -> Path:
        from ..models import base_model_reference, model_content_digest, resolve_model_path

        return save_probe_head(directory, self.head, {
            "base_model": base_model_reference(self.model), "label_names": list(self.label_names),
            "base_model_digest": model_content_digest(resolve_model_path(self.model)), "pooling": "mean",
            "normalize": True, "max_length": self.max_length,
        })


def float64_head(head: Any) -> Any:
    """``head`` (a fitted LogisticRegression) with float64 coefficients, as a saved head is reloaded: fitted on
    float32 features its coefficients are float32 and it computes in float32, so a reloaded copy (float64)
    gave probabilities ~1e-7 apart. The float32 values convert exactly."""
    head.coef_ = np.asarray(head.coef_, dtype=np.float64)
    head.intercept_ = np.asarray(head.intercept_, dtype=np.float64)
    return head


def save_probe_head(directory: str | os.PathLike, head: Any, config: dict[str, Any]) -> Path:
    """Save a fitted logistic-regression probe: its weights (``probe_head.safetensors``) and ``config``
    (how its features are made, ``probe_config.json``); shared by the text and image probes."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "coef": torch.from_numpy(np.ascontiguousarray(head.coef_, dtype=np.float32)),
            "intercept": torch.from_numpy(np.ascontiguousarray(head.intercept_, dtype=np.float32)),
            "classes": torch.from_numpy(np.asarray(head.classes_, dtype=np.int64)),
        },
        str(out / "probe_head.safetensors"),
    )
    (out / "probe_config.json").write_text(json.dumps({"method": "probe", **config}, indent=2))
    return out


@register_method
class Probe(Method):
    name = "probe"
    summary = "Logistic regression on frozen mean-pooled embeddings (linear probe)"
    option_names = frozenset({"C", CLASS_WEIGHT_OPTION})
    budget_fields = frozenset({"max_length"})  # no optimizer, no steps
    default_class_weight = "balanced"  # chosen on dev splits (BENCHMARKS.md, "Label noise")

    def inverse_regularisation(self, ctx: RunContext) -> float:
        """Option ``C``: logistic regression's inverse regularisation strength, positive."""
        return ctx.number_option(self.name, "C", 1.0, low=0, low_open=True, meaning="the inverse regularisation strength")

    def check_options(self, ctx: RunContext) -> None:
        super().check_options(ctx)
        self.inverse_regularisation(ctx)

    def fit(self, task: FewShotTask, ctx: RunContext) -> FittedClassifier:
        from sklearn.linear_model import LogisticRegression

        budget = ctx.budget_for(self.name)
        require_two_classes(task.labelled)  # (scikit-learn's own error names neither the data nor a remedy)
        features = ctx.cache.embeddings(ctx.model, task.labelled.texts, budget.max_length, device=ctx.device)
        labels = np.asarray(task.labelled.labels)
        class_weight = None if self.class_weight_choice(ctx) == "none" else "balanced"
        candidates = [self.inverse_regularisation(ctx)]
        if task.dev is not None:  # with a dev set, choose C on it (the same rule as step selection)
            candidates = [0.01, 0.1, 1.0, 10.0, 100.0]
            dev_features = ctx.cache.embeddings(ctx.model, task.dev.texts, budget.max_length, device=ctx.device)
        best: tuple[float, Any] | None = None
        for c in candidates:
            head = float64_head(LogisticRegression(C=c, max_iter=2000, random_state=ctx.seed,
                                                   class_weight=class_weight).fit(features, labels))
            score = float((head.predict(dev_features) == np.asarray(task.dev.labels)).mean()) if task.dev else 0.0
            if best is None or score > best[0]:
                best = (score, head)
        assert best is not None
        fitted = ProbeClassifier(ctx.cache, ctx.model, best[1], task.label_names, budget.max_length, ctx.device)
        if task.dev is not None:
            fitted.notes.update(dev_accuracy=best[0], C=float(best[1].C))
        return fitted
