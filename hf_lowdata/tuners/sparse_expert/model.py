"""``SparseExpertModel``: the PEFT tuner of SMAT (sparse interpolated experts), plus its task API.

Besides PEFT's usual surface (``get_peft_model``, save/load, merge, several adapters) the model
offers what meta-training and meta-test need:

* :meth:`SparseExpertModel.route` - expert weights for a task from its class prototypes;
* :meth:`SparseExpertModel.task_weights` - the effective weights ``W0 + (sum_m w_m z_m) d`` as tensors
  (for functional forward passes during meta-training);
* :meth:`SparseExpertModel.bypass` - the frozen pretrained backbone (for router inputs and teachers);
* :meth:`SparseExpertModel.binarize_masks` / :meth:`SparseExpertModel.mask_sparsity`.

A task-adapted model is obtained with ``route(...)`` followed by ``merge_and_unload()``: a plain
dense model with zero inference overhead.

While an adapter is merged (``merge_adapter()``) its expert weights and masks cannot change and the
frozen backbone cannot be read: unmerging subtracts the delta of the *current* expert weights, so
routing in between would leave the pretrained weights changed for good. ``route``, ``route_support``,
``set_expert_weights``, ``bypass``, ``task_weights`` and ``binarize_masks`` therefore refuse while
merged; call ``unmerge_adapter()`` first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.func import functional_call

from ..base import WeightAdapterTuner
from .config import SparseExpertConfig
from .layer import SUPPORTED_LAYERS, SparseExpertLayer, SparseExpertModule, SparseExpertTunerLayer
from .router import ROUTER_ATTRIBUTE, ROUTER_NET, SparseExpertRouter, expert_weights

#: Prototype-head scale of the cosine ProtoNet (logits = 10 cos(f(x), c_k)), as in the authors' code.
PROTOTYPE_SCALE = 10.0


#: Modules of a model's head that are never default targets: transformers' poolers and task heads
#: (DistilBERT's ``pre_classifier``, the ``classifier`` / ``score`` PEFT wraps in ``modules_to_save``).
HEAD_MODULE_NAMES = frozenset({"pooler", "pre_classifier", "classifier", "score", "qa_outputs", "lm_head",
                               "multiple_choice_head"})


def _in_head(name: str, saved: tuple[str, ...]) -> bool:
    """Whether module ``name`` is (inside) a head module or a ``modules_to_save`` module.

    ``modules_to_save`` is matched as PEFT matches it (the module name ends with the entry), so DistilBERT's
    ``pre_classifier`` counts as ``classifier``: PEFT wraps it, and it must not be an adapter layer.
    """
    parts = name.split(".")
    if any(part in HEAD_MODULE_NAMES for part in parts):
        return True
    return any(".".join(parts[:i]).endswith(saved) for i in range(1, len(parts) + 1)) if saved else False


def default_target_modules(model: nn.Module, config: SparseExpertConfig) -> set[str]:
    """Every Linear/Conv1D/Conv2d inside the model's ``encoder`` (else the whole model), never the pooler or head,
    nor the output projection of a torch ``nn.MultiheadAttention`` (it reads that weight without calling the layer).

    A layer another adapter already wraps (LoRA, FTP, an earlier SparseExpert adapter) counts by the
    wrapper's name; the Linear layers inside a wrapper (its base layer, LoRA's A and B) are not targets.
    """
    tuner_layers = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    # children never to take: those inside a wrapper, and those nn.MultiheadAttention reads without calling them
    closed = tuner_layers + [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, SUPPORTED_LAYERS) and not any(name.startswith(f"{t}.") for t in closed)
    ]
    names += [n for n in tuner_layers
              if isinstance(model.get_submodule(n).get_base_layer(), SUPPORTED_LAYERS)
              and not any(n.startswith(f"{t}.") for t in closed)]
    encoders = [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] == "encoder"]
    if encoders:
        names = [n for n in names if any(n.startswith(f"{e}.") for e in encoders)]
    saved = tuple(config.modules_to_save or ())
    names = [n for n in names if not _in_head(n, saved)]
    if not names:
        raise ValueError(
            "SparseExpertConfig found no nn.Linear, transformers' Conv1D or nn.Conv2d layer to adapt in this model "
            "(default targets: the layers inside its 'encoder' module, else outside its pooler and head). Pass "
            "target_modules=[...] with the names of the layers to adapt."
        )
    return set(names)


def infer_feature_dim(model: nn.Module, config: SparseExpertConfig) -> int:
    """The router's input size: ``config.feature_dim`` or the model config's hidden size."""
    if config.feature_dim is not None:
        return int(config.feature_dim)
    model_config = getattr(model, "config", None)
    for key in ("hidden_size", "hidden_dim", "d_model"):
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(
        "SparseExpertConfig needs the size of the backbone features its router reads: this model has no "
        "config.hidden_size. Pass feature_dim= (the width of the pooled features) in the config."
    )


MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


def pooled_features(
    backbone: nn.Module, inputs: dict[str, torch.Tensor], weights: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """Sentence/image features of a transformers backbone: mean of the real tokens' last hidden states
    (text, as sentence-transformers pools MiniLM) or the pooled output (vision models).

    ``weights`` replaces parameters by name for this call (``torch.func.functional_call``).
    """
    kwargs = {k: v for k, v in inputs.items() if k in MODEL_INPUT_KEYS}
    out = backbone(**kwargs) if weights is None else functional_call(backbone, weights, args=(), kwargs=kwargs)
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is not None and hidden.dim() == 3:
        mask = kwargs.get("attention_mask")
        if mask is None:
            return hidden.mean(dim=1)
        scale = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * scale).sum(1) / scale.sum(1).clamp(min=1.0)
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise TypeError(
            f"Cannot pool features from {type(backbone).__name__}: its output has neither a 3-D last_hidden_state "
            "nor a pooler_output."
        )
    return pooled.flatten(1)


def feature_backbone(model: nn.Module) -> nn.Module:
    """The feature extractor of a (PEFT-wrapped) transformers model: its ``base_model`` (e.g. ``BertModel``)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(inner, "base_model", None)
    if not isinstance(backbone, nn.Module) or not hasattr(getattr(backbone, "config", None), "model_type"):
        raise TypeError(
            f"{type(inner).__name__} is not a transformers model with a base_model; SparseExpert meta-training and "
            "routing read pooled features of a transformers backbone (text encoder or vision model)."
        )
    return backbone


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Mean feature of each class, shape (num_classes, dim); every class needs at least one example."""
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    one_hot = F.one_hot(labels, num_classes).to(features.dtype)
    counts = one_hot.sum(0)
    if (counts == 0).any():
        missing = [int(c) for c in torch.nonzero(counts == 0).flatten()]
        raise ValueError(f"Classes {missing} have no support example; every class needs at least one.")
    return (one_hot.T @ features) / counts.unsqueeze(1)


def cosine_logits(features: torch.Tensor, prototypes: torch.Tensor, scale: float = PROTOTYPE_SCALE) -> torch.Tensor:
    """The ProtoNet head of SMAT: ``scale * cos(features, prototype_k)``."""
    return scale * F.normalize(features, dim=-1, eps=1e-12) @ F.normalize(prototypes, dim=-1, eps=1e-12).T


class SparseExpertModel(WeightAdapterTuner):
    """SMAT: M sparse experts over a shared dense delta per targeted weight, mixed per task by a router.

    Chen, Tack, Yang, Teh, Schwarz, Wei, "Unleashing the Power of Meta-tuning for Few-shot
    Generalization Through Sparse Interpolated Experts", ICML 2024 (arXiv:2403.08477).

    Args:
        model: the model to adapt.
        peft_config: the :class:`SparseExpertConfig`.
        adapter_name: name of the adapter (``"default"``).

    The router is a tuner layer attached to the model root (``model.smat_router``): it is saved and
    loaded with the adapter and removed by ``merge_and_unload``.
    """

    trains_with_model_head = False  # tasks are classified by prototypes of the support set

    prefix: str = "sparse_expert_"
    tuner_layer_cls = SparseExpertTunerLayer
    target_module_mapping: dict[str, list[str]] = {}

    # ---- PEFT hooks -----------------------------------------------------------------------------
    def plain_trainer_note(self, config: SparseExpertConfig, trainer: Any) -> str | None:
        """transformers' Trainer is no meta-training: say what it trains instead."""
        return (
            "it trains the deltas and mask logits through the model's own head with the current expert weights: no "
            "episodes, no router, no sparsity constraint, so the result is not a meta-trained SparseExpert adapter. "
            "Meta-train with hf_lowdata.LowDataTrainer on episodes (hf_lowdata.training.episodes.EpisodeDataset; it "
            "runs SparseExpertObjective); to fine-tune on one task, route it (model.base_model.route_support(...)), "
            "call merge_and_unload() and train the merged model."
        )

    def _prepare_adapter_config(self, peft_config: SparseExpertConfig, model_config: dict) -> SparseExpertConfig:
        return peft_config  # default targets depend on the modules, resolved in _prepare_model

    def _prepare_model(self, peft_config: SparseExpertConfig, model: nn.Module) -> None:
        if peft_config.target_modules is None:
            peft_config.target_modules = default_target_modules(model, peft_config)

    def _create_and_replace(
        self,
        peft_config: SparseExpertConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        if isinstance(target, SparseExpertLayer):
            target.update_layer(adapter_name, peft_config, inference_mode=peft_config.inference_mode)
        else:
            base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
            if not isinstance(base, SUPPORTED_LAYERS):
                kind = f"{type(base).__module__}.{type(base).__qualname__}"
                raise TypeError(
                    f"Target module {current_key!r} is a {kind}; SparseExpert adapts torch.nn.Linear, transformers' "
                    "Conv1D and torch.nn.Conv2d only. Remove it from target_modules."
                )
            new_module = SparseExpertModule(target, adapter_name, peft_config)
            if adapter_name not in self.active_adapters:
                new_module.requires_grad_(False)
            self._replace_module(parent, target_name, new_module, target)
        self._ensure_router(peft_config, adapter_name)

    def _ensure_router(self, config: SparseExpertConfig, adapter_name: str) -> None:
        router = getattr(self.model, ROUTER_ATTRIBUTE, None)
        if router is None:
            router = SparseExpertRouter()
            self.model.add_module(ROUTER_ATTRIBUTE, router)
        if adapter_name not in router.sparse_expert_router_net:
            config.feature_dim = infer_feature_dim(self.model, config)
            device = next((p.device for p in self.model.parameters() if p.device.type != "meta"), None)
            router.update_layer(adapter_name, config, config.feature_dim, device=device)
            if adapter_name not in self.active_adapters:
                router.sparse_expert_router_net[adapter_name].requires_grad_(False)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # The router's parameters sit deeper than PEFT's default rule expects (router_net.<adapter>.qkv.weight).
        marker = f".{ROUTER_NET}.{adapter_name}."
        if marker in key:
            return key.replace(marker, f".{ROUTER_NET}.", 1)
        return super()._remove_adapter_name_from_key(key, adapter_name)

    def _unload_and_optionally_merge(self, *args: Any, **kwargs: Any) -> nn.Module:
        unloaded = super()._unload_and_optionally_merge(*args, **kwargs)
        if hasattr(self.model, ROUTER_ATTRIBUTE):
            delattr(self.model, ROUTER_ATTRIBUTE)
        return unloaded

    # ---- task API -------------------------------------------------------------------------------
    def _refuse_while_merged(self, action: str, adapter: str | None = None) -> None:
        """Raise if ``adapter`` (``None``: any adapter) is merged into the base weights (see the module docstring)."""
        merged = {a for _, layer in self.expert_layers() for a in layer.merged_adapters if adapter in (None, a)}
        if merged:
            raise RuntimeError(
                f"Cannot {action} while the SparseExpert adapter(s) {sorted(merged)} are merged into the base "
                "weights: unmerging subtracts the delta of the current expert weights and masks, and the base weights "
                "are not the frozen backbone while merged. Call model.unmerge_adapter() first (and merge_adapter() "
                "again afterwards)."
            )

    def _adapter(self, adapter: str | None) -> str:
        name = adapter or (self.active_adapters[0] if self.active_adapters else None)
        if name is None or name not in self.peft_config:
            raise KeyError(f"No SparseExpert adapter {name!r}; adapters: {list(self.peft_config)}")
        return name

    @property
    def router(self) -> SparseExpertRouter:
        """The router tuner layer (``model.smat_router``)."""
        return getattr(self.model, ROUTER_ATTRIBUTE)

    def expert_layers(self, root: nn.Module | None = None) -> list[tuple[str, SparseExpertLayer]]:
        """``(name relative to root, layer)`` of every SparseExpert layer under ``root`` (default: the model)."""
        root = self.model if root is None else root
        return [(n, m) for n, m in root.named_modules() if isinstance(m, SparseExpertLayer)]

    def router_logits(self, prototypes: torch.Tensor, adapter: str | None = None) -> torch.Tensor:
        """Router logits (M,) of the class prototypes of a task (from the frozen backbone)."""
        return self.router.logits(self._adapter(adapter), prototypes)

    @torch.no_grad()
    def route(self, prototypes: torch.Tensor, temperature: float = 0.5, adapter: str | None = None) -> torch.Tensor:
        """Weight the experts for a task: ``w = normalise(sigmoid(router(prototypes) / T))``, stored in the layers.

        ``temperature`` is the router temperature at the end of meta-training (0.5 in the paper).
        Returns ``w``; ``merge_and_unload()`` afterwards gives the task's dense model. Refused while the
        adapter is merged (unmerge first).
        """
        adapter = self._adapter(adapter)
        self._refuse_while_merged("route a task", adapter)
        router = self.router.sparse_expert_router_net[adapter]
        was_training = router.training
        router.eval()
        try:
            weights = expert_weights(self.router_logits(prototypes, adapter), temperature)
        finally:
            router.train(was_training)
        self.set_expert_weights(weights, adapter)
        return weights

    @torch.no_grad()
    def route_support(
        self, inputs: dict[str, torch.Tensor], labels: torch.Tensor, temperature: float = 0.5, adapter: str | None = None
    ) -> torch.Tensor:
        """Route a task from its support set: class prototypes of the frozen backbone's pooled features
        (``inputs`` is a tokenised / pixel batch, ``labels`` 0..K-1), then :meth:`route`.

        The meta-test recipe: ``route_support(batch, labels)``, then ``merge_and_unload()`` (a plain
        dense model), then optionally fine-tune it on the support set. Refused while any adapter is merged
        (the frozen backbone's features need the pretrained weights).
        """
        self._refuse_while_merged("route a task from its support set")
        backbone = feature_backbone(self.model)
        was_training = backbone.training
        backbone.eval()
        try:
            with self.bypass():
                features = pooled_features(backbone, inputs)
        finally:
            backbone.train(was_training)
        labels = torch.as_tensor(labels, device=features.device)
        return self.route(class_prototypes(features, labels), temperature, adapter)

    @torch.no_grad()
    def set_expert_weights(self, weights: torch.Tensor | list[float], adapter: str | None = None) -> None:
        """Use these expert weights (non-negative; normalised to sum to one) in every layer of ``adapter``.

        Refused while ``adapter`` is merged: unmerging would subtract the new weights' delta, not the merged one.
        """
        adapter = self._adapter(adapter)
        self._refuse_while_merged("change the expert weights", adapter)
        num = self.peft_config[adapter].num_experts
        w = torch.as_tensor(weights, dtype=torch.float32).flatten()
        if w.numel() != num or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"Expert weights must be {num} finite non-negative numbers with a positive sum, got {w.tolist()}."
            )
        w = w / w.sum()
        for _, layer in self.expert_layers():
            if adapter in layer.sparse_expert_weights:
                buf = layer.sparse_expert_weights[adapter]
                buf.copy_(w.to(buf.device, buf.dtype))

    def task_weights(
        self,
        expert_weights: torch.Tensor,
        root: nn.Module,
        adapter: str | None = None,
        beta: float | None = None,
        meta: bool = False,
        deployed: bool = False,
    ) -> dict[str, torch.Tensor]:
        """``{name: W0 + (sum_m w_m z_m) d}`` for every adapted weight under ``root``, names relative to it.

        Differentiable in the deltas, the mask logits and ``expert_weights``; use with
        ``torch.func.functional_call(root, weights, ...)`` inside :meth:`bypass`. ``meta=True`` is the
        meta-training form: masks at the meta-training temperature, cached for the optimizer step, and
        mask-logit gradients deferred to :meth:`finalize_mask_gradients`. ``deployed=True`` uses the binary masks
        :meth:`binarize_masks` would store (what meta-training's held-out evaluation scores). Refused while a layer is merged
        (its base weight is then not ``W0``).
        """
        adapter = self._adapter(adapter)
        out = {}
        for name, layer in self.expert_layers(root):
            if adapter not in layer.sparse_expert_delta:
                continue
            if layer.merged:
                self._refuse_while_merged("compute task weights")
            base = layer.get_base_layer().weight
            if meta:
                delta = layer.meta_task_delta(adapter, expert_weights)
            else:
                delta = layer.task_delta(adapter, expert_weights, beta, deployed=deployed)
            out[f"{name}.base_layer.weight"] = base + delta.to(base.dtype)
        return out

    def use_binary_meta_masks(self, enabled: bool, adapter: str | None = None) -> None:
        """Meta-train with the binary masks (1 where non-zero at the meta-training temperature, what
        :meth:`binarize_masks` stores) instead of the relaxed ones; the logits' gradient still passes
        straight through the relaxed masks. Takes effect from the next optimizer step's masks."""
        adapter = self._adapter(adapter)
        for _, layer in self.expert_layers():
            if enabled:
                layer._binary_meta_masks.add(adapter)
            else:
                layer._binary_meta_masks.discard(adapter)

    def finalize_mask_gradients(self, adapter: str | None = None) -> None:
        """Accumulate the deferred mask-logit gradients of a meta-batch (see ``task_weights(meta=True)``)."""
        adapter = self._adapter(adapter)
        for _, layer in self.expert_layers():
            layer.finalize_mask_grad(adapter)

    @contextlib.contextmanager
    def bypass(self) -> Iterator[None]:
        """Within this context the adapted layers are their plain base layers (the frozen backbone).

        Refused while any adapter is merged: the base layers then hold the merged weights, not the backbone.
        """
        self._refuse_while_merged("bypass the adapters (read the frozen backbone)")
        layers = [layer for _, layer in self.expert_layers()]
        previous = [layer.sparse_expert_bypass for layer in layers]
        for layer in layers:
            layer.sparse_expert_bypass = True
        try:
            yield
        finally:
            for layer, value in zip(layers, previous):
                layer.sparse_expert_bypass = value

    @torch.no_grad()
    def push_mask_logits(self, step: torch.Tensor, adapter: str | None = None) -> None:
        """One decoupled sparsity step on every relaxed mask: see :meth:`SparseExpertLayer.push_logits`."""
        adapter = self._adapter(adapter)
        for _, layer in self.expert_layers():
            layer.push_logits(adapter, step)

    @torch.no_grad()
    def mask_sparsity(self, adapter: str | None = None) -> torch.Tensor:
        """Per-expert fraction of zero mask entries over all adapted weights.

        A relaxed mask entry counts as non-zero when it is non-zero at the meta-training temperature
        (the entries :meth:`binarize_masks` keeps); binary masks are counted as they are.
        """
        adapter = self._adapter(adapter)
        nonzero, count = None, 0
        for _, layer in self.expert_layers():
            if adapter in layer.sparse_expert_delta:
                nz = layer.nonzeros(adapter).to(torch.float64)
                nonzero = nz if nonzero is None else nonzero + nz
                count += layer.sparse_expert_delta[adapter].numel()
        assert nonzero is not None
        return (1.0 - nonzero / count).float()

    @torch.no_grad()
    def clamp_mask_logits(self, adapter: str | None = None) -> None:
        """Keep mask logits inside ``[-mask_logit_bound, mask_logit_bound]`` (after each optimizer step)."""
        adapter = self._adapter(adapter)
        for _, layer in self.expert_layers():
            layer.clamp_logits(adapter)

    def binarize_masks(self, adapter: str | None = None) -> None:
        """Make the masks binary (1 where they are non-zero at the meta-training temperature), bit-packed.

        The adapter's config records ``masks="binary"``, so a saved adapter reloads in this form. Refused
        while the adapter is merged (binary masks change its delta).
        """
        adapter = self._adapter(adapter)
        self._refuse_while_merged("binarize the masks", adapter)
        for _, layer in self.expert_layers():
            layer.binarize(adapter)
        self.peft_config[adapter].masks = "binary"
