"""Training a backbone on a k-shot image task: the image rows of ``full``, ``lora`` and ``ftp``.

The text methods' own pieces are reused unchanged: :meth:`~hf_lowdata.methods.TransformerMethod.build_model`
(a new head on EfficientNet-Lite0, LoRA on each block's 1x1 convolutions, FTP's default EfficientNet
targets) and :meth:`~hf_lowdata.methods.TransformerMethod.make_trainer` (the method's budget, objective and
the LowDataTrainer); only the inputs differ, pixel values instead of tokens.

BatchNorm statistics stay frozen by default (option ``batchnorm="frozen"``): every BatchNorm layer
normalises with its pretrained statistics, while full fine-tuning still trains its affine parameters.
``batchnorm="batch"`` is PyTorch's default for a trainable layer (batch statistics while training, the
running statistics updated): a network trained under the statistics of 8 few-shot images then predicts
under running statistics it was not trained with (Fashion-MNIST dev, k = 4: see BENCHMARKS.md). LoRA's and
FTP's layers are frozen, so the two settings are the same for them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.data import Dataset

from ..budgets import image_budget
from ..methods import RunContext, TransformerMethod, get_method
from .data import ImageFewShotTask, check_images, images_to_pixel_values

#: Methods that train the backbone and can run on an image task.
IMAGE_BACKBONE_METHODS = ("full", "lora", "ftp")
#: The option that sets how BatchNorm layers normalise while training (see the module docstring).
BATCHNORM_OPTION = "batchnorm"
BATCHNORM_MODES = ("frozen", "batch")


class PixelDataset(Dataset):
    """Labelled images as ``{"pixel_values", "labels"}`` rows, preprocessed once."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int) -> None:
        self.pixel_values = images_to_pixel_values(images, size)
        self.labels = [int(label) for label in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


def fit_image_classifier(method_name: str, task: ImageFewShotTask, ctx: RunContext, image_size: int) -> torch.nn.Module:
    """Train method ``method_name`` (one of :data:`IMAGE_BACKBONE_METHODS`) on ``task``'s labelled images at
    ``image_size`` px; returns the trained model in eval mode. ``ctx.budget`` ``None`` takes the method's
    image budget (:func:`~hf_lowdata.budgets.image_budget`). ``ctx.options["batchnorm"]``: "frozen"
    (default) or "batch" (see the module docstring)."""
    from contextlib import nullcontext

    from transformers import default_data_collator

    from ..training import batchnorm_statistics_frozen

    if method_name not in IMAGE_BACKBONE_METHODS:
        raise ValueError(f"{method_name!r} does not train on images here; choose one of {list(IMAGE_BACKBONE_METHODS)}.")
    batchnorm = ctx.options.get(BATCHNORM_OPTION, "frozen")
    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(f"batchnorm={batchnorm!r}: choose one of {list(BATCHNORM_MODES)}.")
    if ctx.budget is None:  # the image learning rates (hf_lowdata/budgets.py)
        ctx = dataclasses.replace(ctx, budget=image_budget(method_name))
    method = get_method(method_name)
    if not isinstance(method, TransformerMethod):  # pragma: no cover - every name above is one
        raise TypeError(f"{method_name!r} is not a backbone-training method")
    model = method.build_model(task, ctx)
    train = PixelDataset(task.labelled.images, task.labelled.labels, image_size)
    trainer, _ = method.make_trainer(task, ctx, model, train, default_data_collator)
    with batchnorm_statistics_frozen(model) if batchnorm == "frozen" else nullcontext():
        trainer.train()
    return trainer.model.eval()


@torch.no_grad()
def predict_images(model: torch.nn.Module, images: np.ndarray, size: int, batch_size: int = 64) -> np.ndarray:
    """Predicted label ids of uint8 ``images`` (backbone + head, in eval mode, batches of ``batch_size``)."""
    check_images(images)
    model.eval()
    device = next(model.parameters()).device
    predictions = [
        model(pixel_values=images_to_pixel_values(images[start : start + batch_size], size).to(device)).logits.argmax(-1)
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(predictions).cpu().numpy() if predictions else np.zeros(0, dtype=np.int64)
