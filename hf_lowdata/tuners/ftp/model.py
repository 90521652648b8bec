"""``FTPModel``: injects FTP layers into a model, the way ``LoraModel`` injects LoRA layers."""

from __future__ import annotations

from typing import Any

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..base import TransposedLinear, WeightAdapterTuner
from .config import FTPConfig
from .layer import FTPConv1D, FTPConv2d, FTPLayer, FTPLinear

_BERT_STYLE = r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
_DEBERTA = r".*encoder\.layer\.\d+\.(attention\.self\.(query_proj|key_proj|value_proj|in_proj)|attention\.output\.dense|intermediate\.dense|output\.dense)"
_LLAMA_STYLE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

#: Default target modules per ``model_type``: every pretrained weight matrix of the transformer blocks
#: (FTP constrains all fine-tuned tensors, unlike LoRA's query/value default), never a new head.
TARGET_MODULES_BY_MODEL_TYPE: dict[str, Any] = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie"), _BERT_STYLE),
    "mpnet": r".*encoder\.layer\.\d+\.(attention\.attn\.(q|k|v|o)|intermediate\.dense|output\.dense)",
    **dict.fromkeys(("deberta-v2", "deberta"), _DEBERTA),
    "distilbert": r".*transformer\.layer\.\d+\.(attention\.(q_lin|k_lin|v_lin|out_lin)|ffn\.(lin1|lin2))",
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo"), _LLAMA_STYLE),
    "gpt2": ["c_attn", "c_proj", "c_fc"],  # transformers' Conv1D: attention in/out, MLP in/out
    "efficientnet": r".*(embeddings\.convolution|expand_conv|depthwise_conv\.depthwise_conv|"
    r"squeeze_excite\.(reduce|expand)|project_conv|top_conv)",
}


class FTPModel(WeightAdapterTuner):
    """Adds FTP adapters (a trainable delta per targeted layer) to a model.

    Train it with :class:`~hf_lowdata.training.LowDataTrainer`, which picks the FTP optimizer for
    it, or build the optimizer yourself with :func:`~hf_lowdata.tuners.ftp.ftp_param_groups` and
    :class:`~hf_lowdata.tuners.ftp.FTPOptimizer`. A plain optimizer (AdamW) trains the delta
    without projection, i.e. ordinary full (or LoRA) fine-tuning.
    """

    prefix: str = "ftp_"
    tuner_layer_cls = FTPLayer
    adapted_layer_types = (nn.Linear, TransposedLinear, nn.Conv2d)
    target_module_mapping = TARGET_MODULES_BY_MODEL_TYPE

    def plain_trainer_note(self, config: FTPConfig, trainer: Any) -> str | None:
        """transformers' Trainer with its own optimizer fine-tunes the deltas without FTP's projection."""
        from .optimizer import FTPOptimizer

        optimizer = getattr(trainer, "optimizer", None)
        if isinstance(getattr(optimizer, "optimizer", optimizer), FTPOptimizer):
            return None  # the user gave the Trainer FTP's optimizer: that is FTP
        kind = type(getattr(optimizer, "optimizer", optimizer)).__name__ if optimizer is not None else "its default"
        return (
            f"it updates the deltas with {kind} optimizer, without FTP's projection, so this is plain "
            f"{'LoRA' if config.delta == 'lora' else 'full'} fine-tuning. Train with hf_lowdata.LowDataTrainer (it "
            "picks FTPOptimizer for this adapter), or give the Trainer FTP's optimizer: "
            "optimizers=(FTPOptimizer(ftp_param_groups(model), lr=...), None) (hf_lowdata.tuners.ftp)."
        )

    def _create_and_replace(
        self,
        peft_config: FTPConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        if isinstance(target, FTPLayer):
            target.update_layer(adapter_name, peft_config)
            return
        new_module = self._create_new_module(peft_config, adapter_name, target, current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter is not trainable until it is activated
        self._replace_module(parent, target_name, new_module, target)

    @staticmethod
    def _create_new_module(config: FTPConfig, adapter_name: str, target: nn.Module, key: str = "") -> nn.Module:
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if isinstance(base, nn.Linear):
            return FTPLinear(target, adapter_name, config)
        if isinstance(base, TransposedLinear):
            return FTPConv1D(target, adapter_name, config)
        if isinstance(base, nn.Conv2d):
            return FTPConv2d(target, adapter_name, config)
        raise TypeError(
            f"FTP adapts nn.Linear, transformers' Conv1D and nn.Conv2d modules, but target module {key or target!r} is a "
            f"{type(base).__name__}. Remove it from target_modules (or add it to exclude_modules)."
        )
