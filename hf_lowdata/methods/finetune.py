"""``full`` (full fine-tuning) and ``lora`` (PEFT LoRA): the reference points for every method."""

from __future__ import annotations

import torch

from ..data import FewShotTask
from .base import RunContext, TransformerMethod, register_method


@register_method
class FullFineTuning(TransformerMethod):
    name = "full"
    summary = "Full fine-tuning of every weight and a new classification head"


@register_method
class LoRA(TransformerMethod):
    name = "lora"
    summary = "LoRA (PEFT): low-rank updates of query/value, new head trained"
    paper = "Hu et al., LoRA: Low-Rank Adaptation of Large Language Models, ICLR 2022"
    option_names = frozenset({"r", "lora_alpha", "lora_dropout", "target_modules"})

    def build_model(self, task: FewShotTask, ctx: RunContext) -> torch.nn.Module:
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=int(ctx.option(self.name, "r", 8)),
            lora_alpha=int(ctx.option(self.name, "lora_alpha", 8)),
            lora_dropout=float(ctx.option(self.name, "lora_dropout", 0.0)),
            target_modules=ctx.option(self.name, "target_modules", None),
        )
        return get_peft_model(super().build_model(task, ctx), config)
