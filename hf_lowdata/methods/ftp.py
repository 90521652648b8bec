"""``ftp``, ``ftp_lora`` and ``tpgm``: robust fine-tuning by projection towards the pretrained weights.

``ftp`` puts a dense delta on every weight matrix of the transformer blocks (FTPConfig's defaults)
and trains it with the FTP optimizer (AdamP); ``ftp_lora`` does the same with a rank-r delta;
``tpgm`` trains the same dense delta with AdamW and learns the projection radii on a held-out 20 %
of the labelled set (TPGM, FTP's predecessor), so the two can be compared at equal budgets.
Options (``--config key=value``): ``mu``, ``kappa``, ``norm``, ``base_optimizer``, ``r``,
``lora_alpha``, ``target_modules``; for ``tpgm``: ``tpgm_lr``, ``heldout_fraction``, ``interval``,
``iterations``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data import FewShotTask
from .base import (
    RunContext,
    TransformerMethod,
    adapt_model,
    method_config,
    register_method,
    require_heldout_examples,
)

_PAPER = "Tian, Liu, Smith, Kira, Fast Trainable Projection for Robust Fine-Tuning, NeurIPS 2023"


class _FTPAdapterMethod(TransformerMethod):
    """Wrap the classifier with an FTP adapter; LowDataTrainer then trains it with the FTP optimizer."""

    delta = "full"
    option_names = frozenset({"r", "lora_alpha", "mu", "kappa", "norm", "base_optimizer", "target_modules"})

    def ftp_config(self, ctx: RunContext, model: torch.nn.Module | None = None) -> Any:
        """FTPConfig from the run's options; its own ranges give a :class:`MethodConfigError` naming the method
        (:func:`method_config`). ``model``: trains and saves the modules its checkpoint lacks."""
        from peft import TaskType

        from ..models import new_modules
        from ..tuners.ftp import FTPConfig
        from ..tuners.ftp.config import BASE_OPTIMIZERS, NORMS
        from .finetune import module_name_list

        return method_config(
            self.name, FTPConfig,
            task_type=TaskType.SEQ_CLS,
            delta=self.delta,
            r=ctx.number_option(self.name, "r", 8, whole=True),
            lora_alpha=ctx.number_option(self.name, "lora_alpha", 8, whole=True),
            mu=ctx.number_option(self.name, "mu", 1e-2),
            kappa=ctx.number_option(self.name, "kappa", 1.0),
            norm=ctx.choice_option(self.name, "norm", "mars", NORMS),
            base_optimizer=ctx.choice_option(self.name, "base_optimizer", "adam", BASE_OPTIMIZERS),
            target_modules=module_name_list(ctx.option(self.name, "target_modules", None)),
            # e.g. a pooler the checkpoint lacks: trained and saved
            modules_to_save=(new_modules(model) or None) if model is not None else None,
        )

    def check_options(self, ctx: RunContext) -> None:
        super().check_options(ctx)
        self.ftp_config(ctx)

    def build_model(self, task: FewShotTask, ctx: RunContext) -> torch.nn.Module:
        base = super().build_model(task, ctx)
        return adapt_model(self.name, base, self.ftp_config(ctx, base))


@register_method
class FTP(_FTPAdapterMethod):
    name = "ftp"
    summary = "FTP: dense deltas on all block weights, kept near the pretrained model by a learned projection"
    paper = _PAPER


@register_method
class FTPLoRA(_FTPAdapterMethod):
    name = "ftp_lora"
    summary = "FTP with rank-r deltas (B A) on all block weights: parameter-efficient, projected like FTP"
    paper = _PAPER
    delta = "lora"


@register_method
class TPGM(_FTPAdapterMethod):
    name = "tpgm"
    summary = "TPGM: projection radii learned on a held-out 20% of the labelled set (FTP's predecessor)"
    paper = "Tian, Dai, Ma, Kira, Trainable Projected Gradient Method for Robust Fine-Tuning, CVPR 2023"
    option_names = _FTPAdapterMethod.option_names | {"heldout_fraction", "tpgm_lr", "interval", "iterations"}

    def check_options(self, ctx: RunContext) -> None:
        super().check_options(ctx)
        self.tpgm_objective(ctx)

    def objective(self, task: FewShotTask, ctx: RunContext, model: torch.nn.Module) -> Any:
        require_heldout_examples(task, self.name, "to learn its projection radii on", "ftp (no held-out split)")
        return self.tpgm_objective(ctx)

    def tpgm_objective(self, ctx: RunContext) -> Any:
        """TPGMObjective from the run's options."""
        from ..tuners.ftp import TPGMObjective
        from ..tuners.ftp.config import NORMS

        return method_config(
            self.name, TPGMObjective,
            heldout_fraction=ctx.number_option(self.name, "heldout_fraction", 0.2, low=0, high=1, low_open=True,
                                               high_open=True),
            lr=ctx.number_option(self.name, "tpgm_lr", 1e-2, low=0, low_open=True),
            norm=ctx.choice_option(self.name, "norm", "mars", NORMS),
            interval=ctx.number_option(self.name, "interval", 1, whole=True, low=1),
            iterations=ctx.number_option(self.name, "iterations", 1, whole=True, low=1),
        )
