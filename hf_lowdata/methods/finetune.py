"""``full`` (full fine-tuning) and ``lora`` (PEFT LoRA): the reference points for every method."""

from __future__ import annotations

from typing import Any

import torch

from ..data import FewShotTask
from .base import (
    MethodConfigError,
    RunContext,
    TransformerMethod,
    adapt_model,
    method_config,
    register_method,
)

#: LoRA's query/value targets for model types PEFT has no default for (PEFT's own table covers BERT,
#: RoBERTa, DeBERTa, ELECTRA, GPT-2, Llama, ...).
LORA_TARGETS: dict[str, list[str]] = {
    "distilbert": ["q_lin", "v_lin"],
    "mpnet": ["q", "v"],
    "camembert": ["query", "value"],
    "ernie": ["query", "value"],
    # EfficientNet (the image benchmark): each MBConv block's 1x1 convolutions, expansion and projection,
    # which are its Linear maps over channels (PEFT's LoRA adapts Conv2d layers).
    "efficientnet": ["expand_conv", "project_conv"],
}


#: Query/value layer names, for a model type neither PEFT nor :data:`LORA_TARGETS` knows.
_QUERY_VALUE_PAIRS = (("query", "value"), ("q_proj", "v_proj"), ("q_lin", "v_lin"), ("q", "v"))


def module_name_list(requested: object) -> object:
    """A ``target_modules`` option as the user means it: a string of plain layer names (``query`` or
    ``query,value``) becomes a list; PEFT would read any string as one regex over full module names, which
    such names never match. A regex (any other character) and lists pass through unchanged."""
    if isinstance(requested, str):
        parts = [part.strip() for part in requested.split(",") if part.strip()]
        if parts and all(part.replace("_", "").replace(".", "").replace("-", "").isalnum() for part in parts):
            return parts
    return requested


def lora_target_modules(model: torch.nn.Module, requested: object = None) -> object:
    """LoRA's ``target_modules`` for ``model``: ``requested`` if given (see :func:`module_name_list`), else
    ``None`` where PEFT has a default for the model type, else :data:`LORA_TARGETS`, else the model's own
    query/value layers (ALBERT's ``query``/``value``, ...). A model with none of these is an error naming
    its Linear layers."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS
    from transformers.pytorch_utils import Conv1D

    from ..tuners.base import layer_names

    if requested is not None:
        return module_name_list(requested)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in PEFT_DEFAULTS:
        return None
    if model_type in LORA_TARGETS:
        return list(LORA_TARGETS[model_type])
    names = layer_names(model, (torch.nn.Linear, Conv1D))
    for pair in _QUERY_VALUE_PAIRS:
        if all(name in names for name in pair):
            return list(pair)
    example = ", ".join(repr(n) for n in (names[:2] or ["q_proj", "v_proj"]))
    raise MethodConfigError(
        f"LoRA has no default target_modules for model type {model_type!r}. Pass them with --config "
        f"\"target_modules=[{example}]\" (this model's Linear layers are named {names[:8]})."
    )


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

    def lora_config(self, ctx: RunContext, model: torch.nn.Module | None = None) -> Any:
        """LoraConfig from the run's options (a :class:`MethodConfigError` naming a bad one). ``model`` resolves
        the default ``target_modules`` and trains the modules its checkpoint lacks; without it (the benchmark's
        check of the options before any run) the given targets are kept as they are."""
        from peft import LoraConfig, TaskType

        from ..models import new_modules

        requested = ctx.option(self.name, "target_modules", None)
        # int() cut r=2.5 to 2 and took True as 1; PEFT accepted a negative lora_alpha (a negated update)
        return method_config(
            self.name, LoraConfig,
            task_type=TaskType.SEQ_CLS,
            r=ctx.number_option(self.name, "r", 8, whole=True, low=1),
            lora_alpha=ctx.number_option(self.name, "lora_alpha", 8, whole=True, low=1),
            lora_dropout=ctx.number_option(self.name, "lora_dropout", 0.0, low=0, high=1, high_open=True),
            target_modules=module_name_list(requested) if model is None else lora_target_modules(model, requested),
            # e.g. a pooler the checkpoint lacks: trained and saved
            modules_to_save=(new_modules(model) or None) if model is not None else None,
        )

    def check_options(self, ctx: RunContext) -> None:
        super().check_options(ctx)
        self.lora_config(ctx)

    def build_model(self, task: FewShotTask, ctx: RunContext) -> torch.nn.Module:
        base = super().build_model(task, ctx)
        return adapt_model(self.name, base, self.lora_config(ctx, base))
