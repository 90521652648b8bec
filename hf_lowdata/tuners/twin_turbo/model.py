"""``TwinTurboModel``: PEFT tuner that puts a TwinTurbo projector + head in place of a model's head."""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner
from peft.utils import ModulesToSaveWrapper
from torch import nn

from ..base import ModuleReplacement, OwnConfigCopy, PlainTrainerCheck
from .config import TwinTurboConfig
from .layer import MERGE_ERROR, TokenTap, TwinTurboLayer

#: Names transformers gives classification heads (``*ForSequenceClassification``, image classifiers; BART, mBART,
#: T5 and other encoder-decoders call theirs ``classification_head``).
DEFAULT_HEAD_NAMES = ("classifier", "score", "classification_head")


def find_backbone(model: nn.Module, name: str | None) -> nn.Module:
    """The module whose first output holds the token states (``name`` or the model's ``base_model_prefix``)."""
    name = name or getattr(model, "base_model_prefix", None)
    module = None
    if name:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = None
    if module is None or module is model:
        raise ValueError(
            f"TwinTurbo reads token states from the model's backbone but could not find it (looked for "
            f"{name!r}). Set TwinTurboConfig(backbone_module=...) to the name of the module whose first output is "
            "the token states, e.g. 'bert' for BERT or 'efficientnet' for EfficientNet."
        )
    return module


def token_tap(backbone: nn.Module) -> TokenTap:
    """The backbone's :class:`TokenTap`, registered as a forward hook on first use."""
    for hook in backbone._forward_hooks.values():
        if isinstance(hook, TokenTap):
            return hook
    tap = TokenTap()
    backbone.register_forward_hook(tap, with_kwargs=True)
    return tap


def remove_token_taps(model: nn.Module) -> None:
    """Remove every TokenTap hook below ``model`` (after unloading the adapters)."""
    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if isinstance(hook, TokenTap):
                del module._forward_hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)


#: Model classes (by name) whose head predicts per token or per span: TwinTurbo cannot replace it.
PER_TOKEN_MODEL_KINDS = ("ForTokenClassification", "ForQuestionAnswering", "ForMaskedLM", "ForCausalLM")


class TwinTurboModel(OwnConfigCopy, ModuleReplacement, PlainTrainerCheck, BaseTuner):
    """Replaces a model's classification head with a TwinTurbo projector + head over its frozen backbone.

    ``get_peft_model(AutoModelForSequenceClassification.from_pretrained(...), TwinTurboConfig())``
    gives a model whose logits are ``head(projector(token states))``; only projector and head are
    trainable and saved. ``disable_adapter()`` gives the base model's own head back. The adapter
    cannot be merged (``merge_and_unload`` raises); ``unload()`` removes it.
    """

    prefix: str = "twin_turbo_"
    tuner_layer_cls = TwinTurboLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> PeftConfig:
        kind = type(self.model).__name__
        if any(part in kind for part in PER_TOKEN_MODEL_KINDS):
            raise ValueError(
                f"TwinTurbo gives one prediction per sequence or image, but {kind} predicts per token: its head would "
                "get the same logits at every position. Load the model with AutoModelForSequenceClassification, or "
                "use LoRA / FTPConfig for per-token tasks."
            )
        if peft_config.target_modules is None:
            names = {n.rsplit(".", 1)[-1] for n, _ in self.model.named_modules()}
            found = [h for h in DEFAULT_HEAD_NAMES if h in names]
            if not found:
                raise ValueError(
                    "TwinTurbo replaces the model's classification head, but the model has no module named "
                    f"{' or '.join(DEFAULT_HEAD_NAMES)}. Set TwinTurboConfig(target_modules=[...]) to the head's name "
                    "(load the model with AutoModelForSequenceClassification / ...ForImageClassification to get one)."
                )
            peft_config.target_modules = {found[0]}
        return peft_config

    def plain_trainer_note(self, config: TwinTurboConfig, trainer: Any) -> str | None:
        """transformers' Trainer trains the projector with cross-entropy alone: say so unless that is the config."""
        if not config.uses_unlabelled_terms:
            return None
        return (
            "it trains the projector and head with the model's cross-entropy alone. The rest of TwinTurbo's objective "
            f"(marginal_weight={config.marginal_weight}, adversarial_weight={config.adversarial_weight}, latent_weight="
            f"{config.latent_weight}: the mutual-information terms and their discriminator, on unlabelled texts) only "
            "runs under LowDataTrainer: train with hf_lowdata.LowDataTrainer(model=..., args=..., train_dataset=..., "
            "unlabeled_dataset=...), or set the three weights to 0 for plain cross-entropy training."
        )

    def _create_and_replace(
        self,
        peft_config: TwinTurboConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        if isinstance(target, TwinTurboLayer):
            target.update_layer(adapter_name, peft_config)
            self._record_head_dims(peft_config, target, adapter_name)
            return
        if isinstance(target, ModulesToSaveWrapper):
            raise ValueError(
                f"{current_key!r} is already trained and saved whole by another adapter (its modules_to_save, e.g. a "
                "LoRA with task_type='SEQ_CLS'). TwinTurbo replaces that head, so the two cannot share it: give the "
                "other adapter no modules_to_save (a LoRA without task_type) or use a separate model."
            )
        tap = token_tap(find_backbone(self.model, peft_config.backbone_module))
        new_module = TwinTurboLayer(target, adapter_name, peft_config, tap)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter is not trainable until set active
        self._replace_module(parent, target_name, new_module, target)
        self._record_head_dims(peft_config, new_module, adapter_name)

    def _record_head_dims(self, config: TwinTurboConfig, layer: TwinTurboLayer, adapter_name: str) -> None:
        """Store the adapter's token width and label count in its config (saved with the adapter).

        Left at ``None`` they are read from the base model's head when the adapter is built, so loading
        would rebuild the head at the size of whatever head the fresh base has (ImageNet's 1,000 classes,
        a text model's default 2) and fail on the saved weights unless the user passed ``num_labels``.
        They go into a copy: the caller's config object may configure another model with other labels.
        """
        config = copy.copy(config)
        config.token_dim = layer.twin_turbo_projector[adapter_name].input.in_features
        config.num_labels = layer.twin_turbo_head[adapter_name].num_labels
        self.peft_config[adapter_name] = config
        self._match_label_count(config, adapter_name)

    def _match_label_count(self, config: TwinTurboConfig, adapter_name: str) -> None:
        """Give the model config the active adapter's label count when the base head has another one.

        A transformers classifier computes its loss with ``config.num_labels`` (or, like BERT, with a
        ``num_labels`` attribute copied from it at construction): an adapter loaded onto a base with
        its pretrained head (ImageNet's 1,000 classes, a text model's default 2) would otherwise fail
        on any batch with labels. The base's own labels come back on ``unload()``.
        """
        model_config = getattr(self.model, "config", None)
        if (adapter_name not in self.active_adapters or getattr(model_config, "id2label", None) is None
                or model_config.num_labels == config.num_labels or twin_turbo_layer(self.model).disable_adapters):
            return  # (disabled: the base head answers; enabling matches the labels again)
        if not hasattr(self, "_base_labels"):
            self._base_labels = (model_config.id2label, model_config.label2id, getattr(self.model, "num_labels", None))
        model_config.num_labels = config.num_labels
        if hasattr(self.model, "num_labels"):
            self.model.num_labels = config.num_labels

    def _restore_base_labels(self, model: nn.Module) -> None:
        """The base head's label count and names again (its head is what answers now)."""
        if hasattr(self, "_base_labels"):
            model.config.id2label, model.config.label2id, num_labels = self._base_labels
            if num_labels is not None:
                model.num_labels = num_labels

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        """PEFT's switch (``disable_adapter()``); the label count follows whichever head answers."""
        super()._enable_adapter_layers(enabled)
        if not enabled:
            self._restore_base_labels(self.model)
            return
        for name in self.active_adapters:
            self._match_label_count(self.peft_config[name], name)

    def delete_adapter(self, adapter_name: str) -> None:
        """PEFT's ``delete_adapter``; the label count follows the adapter PEFT makes active (or the base's)."""
        super().delete_adapter(adapter_name)
        if not self.active_adapters:
            self._restore_base_labels(self.model)
        for name in self.active_adapters:
            self._match_label_count(self.peft_config[name], name)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """PEFT's ``set_adapter``; the model config then carries the newly active adapter's label count."""
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        for name in [adapter_name] if isinstance(adapter_name, str) else adapter_name:
            self._match_label_count(self.peft_config[name], name)

    def _post_injection_hook(self, model: nn.Module, config: PeftConfig, adapter_name: str) -> None:
        layers = [n for n, m in model.named_modules()
                  if isinstance(m, TwinTurboLayer) and adapter_name in m.twin_turbo_projector]
        if len(layers) > 1:
            raise ValueError(
                f"TwinTurbo replaces one classification head, but target_modules matched {len(layers)} modules "
                f"({layers}). Target exactly one module, e.g. target_modules=['classifier']."
            )

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """Drop the adapter name after ``twin_turbo_projector``/``twin_turbo_head`` (nested modules)."""
        pattern = r"(\.(?:" + "|".join(TwinTurboLayer.adapter_layer_names) + r"))\." + re.escape(adapter_name) + r"(?=\.|$)"
        return re.sub(pattern, r"\1", key, count=1)

    def _check_merge_allowed(self) -> None:
        raise NotImplementedError(MERGE_ERROR)

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
                                     adapter_names: list[str] | None = None) -> nn.Module:
        model = super()._unload_and_optionally_merge(merge, progressbar, safe_merge, adapter_names)
        remove_token_taps(model)
        self._restore_base_labels(model)  # the base head is back: so are its labels
        return model

    def twin_turbo_layer(self) -> TwinTurboLayer:
        """The model's (single) TwinTurbo layer."""
        return twin_turbo_layer(self.model)


def twin_turbo_layer(model: nn.Module) -> TwinTurboLayer:
    """The TwinTurbo layer inside ``model`` (a PeftModel, a tuner model or an injected model)."""
    for module in model.modules():
        if isinstance(module, TwinTurboLayer):
            return module
    raise ValueError("The model has no TwinTurbo adapter; wrap it with get_peft_model(model, TwinTurboConfig()).")


def backbone_token_states(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run only the frozen backbone of a TwinTurbo model on ``inputs``; return tokens and mask (no grad)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    layer = twin_turbo_layer(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = next(iter(getattr(base, "peft_config", {}).values()), None)
    backbone = find_backbone(base, getattr(config, "backbone_module", None))
    kwargs = {k: v for k, v in inputs.items() if k != "labels"}
    with torch.no_grad():
        backbone(**kwargs)
    return layer.token_tap.take(next(iter(kwargs.values())).shape[0])
