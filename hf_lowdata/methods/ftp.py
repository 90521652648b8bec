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

    def build_model(self, task: FewShotTask, ctx: RunContext) -> torch.nn.Module:
        from peft import TaskType

        from ..models import new_modules
        from ..tuners.ftp import FTPConfig
        from ..tuners.ftp.config import BASE_OPTIMIZERS, NORMS
        from .finetune import module_name_list

        base = super().build_model(task, ctx)
        # ranges: FTPConfig's own checks (through method_config, a MethodConfigError naming the method)
        config = method_config(
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
            modules_to_save=new_modules(base) or None,  # e.g. a pooler the checkpoint lacks: trained and saved
        )
        return adapt_model(self.name, base, config)


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

    def objective(self, task: FewShotTask, ctx: RunContext, model: torch.nn.Module) -> Any:
        from ..tuners.ftp import TPGMObjective
        from ..tuners.ftp.config import NORMS

        require_heldout_examples(task, self.name, "to learn its projection radii on", "ftp (no held-out split)")
        return method_config(
            self.name, TPGMObjective,
            heldout_fraction=ctx.number_option(self.name, "heldout_fraction", 0.2, low=0, high=1, low_open=True,
                                               high_open=True),
            lr=ctx.number_option(self.name, "tpgm_lr", 1e-2, low=0, low_open=True),
            norm=ctx.choice_option(self.name, "norm", "mars", NORMS),
            interval=ctx.number_option(self.name, "interval", 1, whole=True, low=1),
            iterations=ctx.number_option(self.name, "iterations", 1, whole=True, low=1),
        )
