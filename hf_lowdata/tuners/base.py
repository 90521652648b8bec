"""The PEFT ``BaseTuner`` our weight-adapting tuners share (FTP, MixupBLO, SparseExpert)."""

from __future__ import annotations

import copy
import sys
import warnings
from typing import Any

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..models import in_head

#: transformers' ``Conv1D`` (GPT-2, GPT, ...): a Linear layer whose weight is stored transposed, (in, out).
TransposedLinear = Conv1D


def linear_weight(layer: nn.Module, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` (default: the layer's own) in ``nn.Linear``'s (out, in) layout: transposed for a Conv1D.

    The tuners keep their own tensors in this layout for every layer kind, so per-output-unit rules
    (FTP's per-row projection, MixupBLO's output factor) mean the same for a GPT-2 layer as for a BERT one.
    """
    weight = layer.weight if weight is None else weight
    return weight.T if isinstance(layer, TransposedLinear) else weight


def to_layer_layout(layer: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """A weight in (out, in) layout back in ``layer``'s own layout (a transposed view for a Conv1D)."""
    return weight.T if isinstance(layer, TransposedLinear) else weight


def layer_features(layer: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a Linear, Conv1D or Conv2d (channels) layer."""
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels, layer.out_channels
    out_features, in_features = linear_weight(layer).shape
    return in_features, out_features


def transposed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """What a Conv1D computes with ``weight`` (in, out): ``x @ weight + bias``."""
    out = x @ weight
    return out if bias is None else out + bias


def _caller_stacklevel(also: tuple[str, ...] = ()) -> int:
    """The ``stacklevel`` that points a warning at the first frame outside peft, transformers and this
    package (and the packages ``also`` names): the user's ``get_peft_model`` (or ``add_adapter``, or
    ``trainer.train()``) line, however deep the library calls the hook."""
    skipped = ("peft", "transformers", "hf_lowdata", *also)
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in skipped:
        frame, level = frame.f_back, level + 1
    return level


def layer_names(model: nn.Module, kinds: tuple[type[nn.Module], ...]) -> list[str]:
    """Distinct leaf names of the ``kinds`` layers of ``model`` outside its head (``classifier``, ``score``),
    in model order: what ``target_modules`` can name."""
    names: list[str] = []
    for full_name, module in model.named_modules():
        leaf = full_name.rsplit(".", 1)[-1]
        if full_name and isinstance(module, kinds) and leaf not in names and not in_head(full_name):
            names.append(leaf)
    return names


def _kind_name(kind: type[nn.Module]) -> str:
    """``nn.Linear`` for torch's layers, ``Conv1D`` (transformers') otherwise."""
    return f"nn.{kind.__name__}" if kind.__module__.startswith("torch.") else f"transformers' {kind.__name__}"


class OwnConfigCopy:
    """Mixin for a ``BaseTuner``: inject each adapter on its own copy of the config.

    Defaults resolved at injection (``target_modules``, feature and head sizes) go into the adapter's
    config, so that it saves and reloads exactly. Resolving them into the caller's object (as PEFT's
    LoRA does) would make a later ``get_peft_model`` with the same object on another model (a Llama
    whose head is ``score``, another label count) reuse this model's values and fail.
    """

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        self.peft_config[adapter_name] = copy.deepcopy(self.peft_config[adapter_name])
        super().inject_adapter(model, adapter_name, *args, **kwargs)


class ModuleReplacement:
    """Mixin for a ``BaseTuner``: a module replacement that works for every module PEFT hands back.

    PEFT's default ``_replace_module`` copies ``child.weight`` onto a replacement without a
    ``base_layer``; when ``merge_and_unload``/``unload`` put back a ``modules_to_save`` head or a
    replaced head that has no weight of its own (RoBERTa's, XLM-R's and Electra's ``classifier`` is a
    small module), that raises AttributeError. LoRA overrides it in the same way: set the module, then
    move the adapter's own parameters to the device of the layer they adapt.
    """

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        if isinstance(parent, nn.MultiheadAttention) and isinstance(new_module, BaseTunerLayer):
            raise ValueError(
                f"{child_name!r} of a torch nn.MultiheadAttention cannot take this adapter: the attention reads "
                f"{child_name}.weight directly and never calls the layer, so the adapter would train without changing "
                "the output until merged. Leave it out of target_modules (adapt the layers around the attention, or use "
                "PEFT's LoRA, which adapts nn.MultiheadAttention as a whole)."
            )
        setattr(parent, child_name, new_module)
        if hasattr(child, "base_layer"):
            child = child.base_layer
        weight = getattr(child, "weight", None)
        if not isinstance(weight, torch.Tensor):
            weight = next(child.parameters(), None)
        if weight is None:
            return
        meta = torch.device("meta")
        for name, module in new_module.named_modules():
            if self.prefix in name and not any(p.device == meta for p in module.parameters()):
                module.to(weight.device)


class PlainTrainerWarning(UserWarning):
    """transformers' ``Trainer`` (not :class:`~hf_lowdata.training.LowDataTrainer`) trains an adapter whose
    method needs more than its plain loss and optimizer step. Silence it with ``warnings.filterwarnings``."""


def _trainer_on_stack(max_depth: int = 40) -> Any:
    """The ``transformers.Trainer`` whose method (``training_step``, ``compute_loss``) called this forward pass,
    or ``None``. Looked up only once transformers' trainer module is imported: without it no Trainer runs."""
    trainer_module = sys.modules.get("transformers.trainer")
    if trainer_module is None:
        return None
    frame = sys._getframe(2)
    for _ in range(max_depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames else None
        if isinstance(owner, trainer_module.Trainer):
            return owner
        frame = frame.f_back
    return None


def _is_low_data_trainer(trainer: Any) -> bool:
    module = sys.modules.get("hf_lowdata.training.trainer")
    return module is not None and isinstance(trainer, module.LowDataTrainer)


class PlainTrainerCheck:
    """Mixin for a ``BaseTuner``: warn once when a plain ``transformers.Trainer`` trains the adapter.

    The methods train with their own objective (bi-level, mutual information, episodes, projection), which
    :class:`~hf_lowdata.training.LowDataTrainer` picks for the adapter type; ``Trainer`` runs without complaint
    but trains something else. The check looks for the Trainer on the call stack at the first forward pass in
    training mode under a Trainer; a tuner says what goes wrong in :meth:`plain_trainer_note`.
    """

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.training and torch.is_grad_enabled() and not self.__dict__.get("_trainer_checked", False):
            trainer = _trainer_on_stack()
            if trainer is not None:
                self.__dict__["_trainer_checked"] = True  # once per model: not on every step
                note = None if _is_low_data_trainer(trainer) else self._plain_trainer_message(trainer)
                if note:
                    warnings.warn(note, PlainTrainerWarning, stacklevel=_caller_stacklevel(("torch", "accelerate")))
        return super().forward(*args, **kwargs)

    def _plain_trainer_message(self, trainer: Any) -> str | None:
        active = [name for name in self.active_adapters if name in self.peft_config]
        if not active:
            return None
        config = self.peft_config[active[0]]
        note = self.plain_trainer_note(config, trainer)
        if note is None:
            return None
        return (f"{type(trainer).__name__} is training a {type(config).__name__} adapter but is not "
                f"hf_lowdata.LowDataTrainer: {note}")

    def plain_trainer_note(self, config: PeftConfig, trainer: Any) -> str | None:
        """What a plain Trainer does to an adapter of ``config`` and what to use instead (``None``: nothing
        goes wrong)."""
        return None


class WeightAdapterTuner(OwnConfigCopy, ModuleReplacement, PlainTrainerCheck, BaseTuner):
    """``BaseTuner`` of the tuners that adapt weight layers (FTP, MixupBLO, SparseExpert): default targets
    by model type, a warning when a classifier's head would be neither trained nor saved."""

    #: The layer types the tuner adapts (for the default-target message).
    adapted_layer_types: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)
    #: Whether the tuned model's classification head is expected to be trained with it (False for a
    #: tuner that classifies with its own head, as SparseExpert's prototypes).
    trains_with_model_head: bool = True

    def _post_injection_hook(self, model: nn.Module, config: PeftConfig, adapter_name: str) -> None:
        """Warn when a classifier's head would be neither trained nor saved.

        Without ``task_type="SEQ_CLS"`` (PEFT has no image task type) or the head in
        ``modules_to_save``, the head of an ``...ForImageClassification`` /
        ``...ForSequenceClassification`` model stays frozen and is not saved with the adapter, exactly as with LoRA: a head created for new labels stays random,
        and training silently learns nothing useful.
        """
        super()._post_injection_hook(model, config, adapter_name)
        saved = getattr(config, "modules_to_save", None)
        if (not self.trains_with_model_head or config.inference_mode or config.task_type == "SEQ_CLS"
                or saved == []):  # SEQ_CLS: PEFT trains and saves the head; []: the user keeps it as it is
            return
        kind = type(model).__name__
        heads = [name for name in ("classifier", "score") if isinstance(getattr(model, name, None), nn.Module)
                 and name not in (saved or ())]
        if heads and kind.endswith(("ForImageClassification", "ForSequenceClassification")):
            warnings.warn(
                f"{kind}'s head {heads[0]!r} is neither trained nor saved by this {type(config).__name__} (no "
                f"task_type='SEQ_CLS', not in modules_to_save): a head created for new labels stays random. Pass modules_to_save="
                f"['{heads[0]}'] (images) or task_type='SEQ_CLS' (text), as with LoRA; modules_to_save=[] keeps the "
                "head as it is and silences this warning.",
                UserWarning,
                stacklevel=_caller_stacklevel(),
            )

    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> PeftConfig:
        """Default ``target_modules`` by ``model_type``, or a message naming the types that have defaults."""
        if peft_config.target_modules is None:
            model_type = model_config.get("model_type")
            if model_type not in self.target_module_mapping:
                name = type(peft_config).__name__
                raise ValueError(
                    f"{name} has no default target_modules for model type {model_type!r} (defaults exist for "
                    f"{sorted(self.target_module_mapping)}). {self._target_example(name)}"
                )
        return super()._prepare_adapter_config(peft_config, model_config)

    def _target_example(self, config_name: str) -> str:
        """How to set ``target_modules`` for this model: its own layer names, or why there are none."""
        kinds = " / ".join(_kind_name(kind) for kind in self.adapted_layer_types)
        names = layer_names(self.model, self.adapted_layer_types)
        others = {_kind_name(type(module)) for module in self.model.modules() if not list(module.children())
                  and isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1D))
                  and not isinstance(module, self.adapted_layer_types)}
        if names:
            return (f"Pass target_modules= with the names of the layers to adapt; this model's {kinds} layers are "
                    f"named {names[:8]}, e.g. {config_name}(target_modules={names[:2]}).")
        found = f" (its weight layers are {' / '.join(sorted(others))})" if others else ""
        return (f"This model has no {kinds} layer outside its head for {config_name} to adapt{found}; "
                f"{config_name} supports {kinds} layers only. LoRA or TwinTurbo can adapt such a model.")
