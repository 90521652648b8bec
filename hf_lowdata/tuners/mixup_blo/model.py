"""``MixupBLOModel``: injects mixed Linear layers into a model (PEFT's ``BaseTuner``)."""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from ..base import WeightAdapterTuner
from .config import MixupBLOConfig
from .layer import MIXED_LAYER_TYPES, Linear, MixupBLOLayer

_BERT_LIKE = [
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
    "pooler.dense",
]
#: Default targets per ``model_type``: every Linear of the encoder and the pooler, as in the paper
#: (Q, K, V, attention output, both FFN layers, pooler dense), never the classification head.
TARGET_MODULES: dict[str, list[str]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "camembert": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "mpnet": ["q", "k", "v", "o", "intermediate.dense", "output.dense", "pooler.dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    **dict.fromkeys(("deberta-v2", "deberta"), ["query_proj", "key_proj", "value_proj", "in_proj",
                                               "attention.output.dense", "intermediate.dense", "output.dense",
                                               "pooler.dense"]),
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo"),
                    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "gpt2": ["c_attn", "c_proj", "c_fc"],  # Conv1D: fused QKV, attention output, MLP in/out (GPT-2 has no pooler)
}


class MixupBLOModel(WeightAdapterTuner):
    """Attention-guided weight mixup (Somayajula et al., NAACL 2024) as a PEFT tuner.

    ``get_peft_model(model, MixupBLOConfig())`` replaces the targeted Linear layers with mixed ones;
    train with :class:`~hf_lowdata.training.LowDataTrainer` (it picks the bi-level objective for this
    adapter type) or with the full fold protocol of :func:`hf_lowdata.methods.mixup_blo.train_mixup_blo`.
    ``merge_and_unload()`` returns the original architecture with ``W_eff`` in its Linear layers.
    """

    prefix: str = "mixup_blo_"
    tuner_layer_cls = MixupBLOLayer
    target_module_mapping = TARGET_MODULES

    def plain_trainer_note(self, config: MixupBLOConfig, trainer: Any) -> str | None:
        """transformers' Trainer steps the mixing factors with everything else: no bi-level problem, no folds."""
        return (
            "it trains the mixing factors together with the task weights on the training loss, with the Trainer's "
            f"optimizer and learning rate, not MixupBLO's outer problem (hypergradient={config.hypergradient!r}, "
            f"mixing_lr={config.mixing_lr}, factors clamped to [0, 1] after each step) nor its {config.folds} folds. "
            "Train with hf_lowdata.LowDataTrainer (it runs the bi-level objective for this adapter) or "
            "hf_lowdata.methods.mixup_blo.train_mixup_blo (the paper's fold protocol)."
        )

    def _create_and_replace(
        self,
        config: MixupBLOConfig,
        adapter_name: str,
        target: torch.nn.Module,
        target_name: str,
        parent: torch.nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        if isinstance(target, Linear):
            target.update_layer(adapter_name, config, inference_mode=config.inference_mode)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, MIXED_LAYER_TYPES):
            raise TypeError(
                f"MixupBLO can mix torch.nn.Linear and transformers' Conv1D layers only, but target {current_key!r} is a "
                f"{type(base).__name__}. Remove it from target_modules (or use exclude_modules)."
            )
        new_module = Linear(target, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # a further adapter is not trainable until set active
        self._replace_module(parent, target_name, new_module, target)
