"""Class-weighted cross-entropy for uneven labelled sets.

A labelled set whose classes are uneven teaches a classifier the class prior. Weighting each example's loss
by ``n / (K n_c)`` (scikit-learn's ``class_weight="balanced"``: ``n`` labelled examples, ``K`` classes present,
``n_c`` of class c) gives every class the same total weight. The weights average 1 over the labelled set, so
the loss keeps its scale (learning rates stay valid), and on a balanced set every weight is exactly 1. On
SST-5 at its class frequencies this trades accuracy for macro-F1; it does not rescue a class of a handful of
examples, which a fine-tuned model memorises (BENCHMARKS.md, "Class weights").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: Label value transformers uses for "no label" (the row counts in no loss).
IGNORE_INDEX = -100


def balanced_class_weights(labels: Sequence[int], num_labels: int) -> torch.Tensor:
    """``n / (K n_c)`` per class (``K``: the classes that have examples; a class without any gets 1, which
    no example uses); their mean over ``labels`` is 1."""
    if num_labels < 1:
        raise ValueError(f"num_labels must be at least 1, got {num_labels}.")
    counts = torch.zeros(num_labels, dtype=torch.float64)
    for label in labels:
        if not 0 <= int(label) < num_labels:
            raise ValueError(f"Label {label} is outside 0..{num_labels - 1}: the labels must be class indices.")
        counts[int(label)] += 1
    present = counts > 0
    if not bool(present.any()):
        raise ValueError("balanced_class_weights needs at least one labelled example.")
    weights = torch.ones(num_labels, dtype=torch.float64)
    weights[present] = counts.sum() / (int(present.sum()) * counts[present])
    return weights.float()


def check_class_weights(weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``weights`` as a 1-D float tensor, or a ValueError saying what is wrong with them."""
    tensor = torch.as_tensor(weights, dtype=torch.float32).detach().cpu()
    if tensor.dim() != 1 or tensor.numel() == 0:
        raise ValueError(f"class_weights must be one number per class, got shape {tuple(tensor.shape)}.")
    if not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()) or not bool((tensor > 0).any()):
        raise ValueError(f"class_weights must be finite, non-negative and not all zero, got {tensor.tolist()}.")
    return tensor


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over the labelled rows of ``weights[y] * CE(logits, y)`` (with Trainer's label smoothing).

    A mean over rows, not PyTorch's ``weight=`` normalisation by the sum of the batch's weights: that one
    would undo the weighting in every batch that holds one class only (each of its rows weighted alike),
    which at few-shot batch sizes is common.
    """
    if labels.dtype.is_floating_point or logits.dim() != 2 or labels.dim() != 1:
        raise ValueError(
            "Class weights apply to single-label classification (integer labels, one logit per class), but this "
            f"batch has logits of shape {tuple(logits.shape)} and {labels.dtype} labels of shape "
            f"{tuple(labels.shape)}: train without class weights (class_weight=none)."
        )
    if weights.numel() != logits.shape[-1]:
        raise ValueError(f"{weights.numel()} class weights for a model with {logits.shape[-1]} classes: give one "
                         "weight per class of the model's head.")
    labelled = labels != IGNORE_INDEX
    if not bool(labelled.any()):
        return logits.sum() * 0.0  # (a mean over no row would be NaN)
    logits, labels = logits[labelled], labels[labelled]
    per_row = F.cross_entropy(logits.float(), labels, reduction="none", label_smoothing=label_smoothing)
    return (weights.to(per_row.device)[labels] * per_row).mean()
