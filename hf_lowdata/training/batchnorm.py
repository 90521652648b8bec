"""BatchNorm layers of a frozen base model stay in eval mode while an adapter trains.

``model.train()`` (which Trainer calls before every step, and which objectives call when they restore
a mode after a no-grad pass) also puts BatchNorm layers in training mode, where each forward pass
updates ``running_mean`` / ``running_var``. An adapter saves only its own weights, so statistics
drifted in the frozen base model are lost at ``save_pretrained``: the reloaded model would compute
other logits than the trained one. A BatchNorm layer whose affine parameters are all frozen belongs to
that frozen base model, so it normalises with its pretrained statistics; one the user made trainable
(``modules_to_save``, full fine-tuning) keeps training, and its statistics are saved with its weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn


def is_frozen_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm layer whose affine parameters are all frozen.

    A layer without affine parameters (``affine=False``) is never counted as frozen: nothing tells
    whether it belongs to the frozen base model, so it keeps PyTorch's default behaviour.
    """
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):
        return False
    params = list(module.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)


def _eval_if_frozen(module: nn.Module, args: Any) -> None:
    """Forward pre-hook: a frozen BatchNorm normalises with its stored statistics, never updating them."""
    if module.training and is_frozen_batchnorm(module):
        module.eval()


def _eval_always(module: nn.Module, args: Any) -> None:
    """Forward pre-hook: the BatchNorm layer normalises with its stored statistics, trainable or not."""
    if module.training:
        module.eval()


@contextmanager
def _batchnorm_hook(model: nn.Module, hook: Any) -> Iterator[None]:
    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def frozen_batchnorm_in_eval(model: nn.Module):
    """While active, every frozen BatchNorm layer of ``model`` runs in eval mode when it is called.

    A forward pre-hook rather than one ``eval()`` call: later ``model.train()`` calls (Trainer's per
    step, an objective restoring the mode after a pass in eval mode) cannot switch the layer back, and
    ``requires_grad`` is read at each call. The hooks are removed on exit.
    """
    return _batchnorm_hook(model, _eval_if_frozen)


def batchnorm_statistics_frozen(model: nn.Module):
    """While active, *every* BatchNorm layer of ``model`` runs in eval mode: trainable affine parameters still
    train, but each layer normalises with its stored statistics and never updates them.

    For fine-tuning a whole network on a few images: the statistics of a batch of 8 are no estimate of the
    population's, so a network trained under them predicts poorly once it normalises with running statistics
    (the image benchmark's full fine-tuning uses it; see :mod:`hf_lowdata.vision.finetune`).
    """
    return _batchnorm_hook(model, _eval_always)
