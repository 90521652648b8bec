"""``SparseExpertConfig``: meta-tuned sparse interpolated experts (SMAT, Chen et al., ICML 2024).

The config describes the *adapter* (what is stored per targeted tensor and in the router). How the
adapter is meta-trained (episodes, learning rates, distillation) is the business of
:class:`~hf_lowdata.tuners.sparse_expert.objective.SparseExpertObjective`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig
from peft.utils import PeftType

MASK_FORMATS = ("relaxed", "binary")


#: Task types whose PEFT wrapper sets ``modules_to_save`` after the adapter is injected, and the heads it sets.
HEADS_PEFT_ADDS_LATER = {"TOKEN_CLS": ("classifier", "score"), "QUESTION_ANS": ("qa_outputs",)}


@dataclass
class SparseExpertConfig(PeftConfig):
    """Configuration of a :class:`~hf_lowdata.tuners.sparse_expert.SparseExpertModel`.

    Each targeted weight ``W0`` gets a dense delta ``d`` (initialised at zero) and ``num_experts``
    hard-concrete masks ``z_m``; for a task with expert weights ``w`` (from the router) the layer uses
    ``W0 + (sum_m w_m z_m) * d``, which merges into a plain dense weight.

    Args:
        target_modules: names (or a regex) of the modules to adapt. ``None`` (default) takes every
            ``nn.Linear``, ``nn.Conv2d`` and transformers ``Conv1D`` inside the model's ``encoder`` module
            (for models without one, such as DistilBERT, Llama or GPT-2: every such layer), never a pooler, a head
            (``classifier``, ``pre_classifier``, ``score``, ...) or a ``modules_to_save`` module, so
            embeddings, pooler and head are left alone, as the spec asks. The resolved names go into
            the adapter's own copy of the config (the one it saves), not into this object.
        exclude_modules: names (or a regex) of modules never to adapt.
        num_experts: number of sparse experts (masks) M per targeted tensor. The paper's default is 8
            (8 beat 4 and matched 16).
        target_sparsity: fraction of zeros each expert mask must reach (tau): 0.9 for ViT-S in the
            paper, 0.95 for ViT-B. Meta-training enforces it with a Lagrange multiplier per expert.
        mask_init_std: standard deviation of the normal initialisation of the mask logits
            ``log_alpha`` (mean 0), 0.5 in the authors' code.
        mask_temperature: temperature ``beta`` of the hard-concrete masks during meta-training (2/3 as
            in the authors' code); the adapted model always uses ``beta = 1``.
        stretch_limits: the interval ``(gamma, zeta)`` the hard-concrete sigmoid is stretched to before
            clamping to [0, 1]; (-0.1, 1.1) as in L0 regularisation.
        mask_logit_bound: mask logits are kept in ``[-bound, bound]``; log(100) in the authors' code.
            At the bound the hard-concrete mask is exactly 0 or 1.
        masks: ``"relaxed"`` stores trainable float mask logits (meta-training); ``"binary"`` stores
            the thresholded masks bit-packed (1 bit per entry, not trainable). Set by
            ``SparseExpertModel.binarize_masks()``; a saved adapter records which one it holds.
        feature_dim: size of the backbone features the router reads (class prototypes). ``None``
            takes ``hidden_size`` (text encoders) or ``hidden_dim`` (EfficientNet) from the model
            config; plain torch models need it set.
        num_skill_tokens: learned "skill" tokens that join the class prototypes in the router (4).
        router_heads: attention heads of the router's transformer block (4).
        router_mlp_ratio: width of the router block's MLP relative to ``feature_dim`` (2).
        router_spectral_norm: spectral normalisation on the router block's Linear layers (as in the
            authors' code; it keeps the router's logits well conditioned).
        modules_to_save: modules besides the adapter layers to train and save (the classifier head
            of a sequence-classification model). With ``task_type`` "TOKEN_CLS" or "QUESTION_ANS" and
            no value, the head PEFT would add (``classifier``/``score``, ``qa_outputs``) is set here:
            each adapter keeps its own copy of this config, and PEFT adds those heads to the user's
            object only after the adapter is built.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "names (or a regex) of the modules to adapt. None (default) takes every nn.Linear, "
            "nn.Conv2d and transformers Conv1D inside the model's encoder module (for models without one: every such "
            "layer), never a "
            "pooler, a head (classifier, pre_classifier, score, ...) or a modules_to_save module, so embeddings, "
            "pooler and head are left alone, as the spec asks."
        },
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "names (or a regex) of modules never to adapt."}
    )
    num_experts: int = field(
        default=8,
        metadata={
            "help": "number of sparse experts (masks) M per targeted tensor. The paper's default is 8 (8 beat 4 "
            "and matched 16)."
        },
    )
    target_sparsity: float = field(
        default=0.9,
        metadata={
            "help": "fraction of zeros each expert mask must reach (tau): 0.9 for ViT-S in the paper, 0.95 for "
            "ViT-B. Meta-training enforces it with a Lagrange multiplier per expert."
        },
    )
    mask_init_std: float = field(
        default=0.5,
        metadata={
            "help": "standard deviation of the normal initialisation of the mask logits log_alpha (mean 0), 0.5 "
            "in the authors' code."
        },
    )
    mask_temperature: float = field(
        default=2.0 / 3.0,
        metadata={
            "help": "temperature beta of the hard-concrete masks during meta-training (2/3 as in the authors' "
            "code); the adapted model always uses beta = 1."
        },
    )
    stretch_limits: tuple[float, float] = field(
        default=(-0.1, 1.1),
        metadata={
            "help": "the interval (gamma, zeta) the hard-concrete sigmoid is stretched to before clamping to "
            "[0, 1]; (-0.1, 1.1) as in L0 regularisation."
        },
    )
    mask_logit_bound: float = field(
        default=math.log(100.0),
        metadata={
            "help": "mask logits are kept in [-bound, bound]; log(100) in the authors' code. At the bound the "
            "hard-concrete mask is exactly 0 or 1."
        },
    )
    masks: Literal["relaxed", "binary"] = field(
        default="relaxed",
        metadata={
            "help": "'relaxed' stores trainable float mask logits (meta-training); 'binary' stores the "
            "thresholded masks bit-packed (1 bit per entry, not trainable). Set by "
            "SparseExpertModel.binarize_masks(); a saved adapter records which one it holds."
        },
    )
    feature_dim: int | None = field(
        default=None,
        metadata={
            "help": "size of the backbone features the router reads (class prototypes). None takes hidden_size "
            "(text encoders) or hidden_dim (EfficientNet) from the model config; plain torch models need it set."
        },
    )
    num_skill_tokens: int = field(
        default=4, metadata={"help": "learned 'skill' tokens that join the class prototypes in the router (4)."}
    )
    router_heads: int = field(default=4, metadata={"help": "attention heads of the router's transformer block (4)."})
    router_mlp_ratio: float = field(
        default=2.0, metadata={"help": "width of the router block's MLP relative to feature_dim (2)."}
    )
    router_spectral_norm: bool = field(
        default=True,
        metadata={
            "help": "spectral normalisation on the router block's Linear layers (as in the authors' code; it "
            "keeps the router's logits well conditioned)."
        },
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "modules besides the adapter layers to train and save (the classifier head of a "
            "sequence-classification model)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.SPARSE_EXPERT
        if self.modules_to_save is None and self.task_type in HEADS_PEFT_ADDS_LATER:
            self.modules_to_save = list(HEADS_PEFT_ADDS_LATER[self.task_type])
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if isinstance(self.target_modules, set) and not self.target_modules:
            raise ValueError("target_modules is empty: name at least one module, or leave it None for the default.")
        if not isinstance(self.num_experts, int) or self.num_experts < 1:
            raise ValueError(f"num_experts must be a positive integer (8 in the paper), got {self.num_experts!r}.")
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(
                f"target_sparsity is the fraction of zeros per expert mask and must be in [0, 1), got "
                f"{self.target_sparsity}; the paper uses 0.9 (ViT-S) or 0.95 (ViT-B)."
            )
        gamma, zeta = (float(v) for v in self.stretch_limits)
        self.stretch_limits = (gamma, zeta)
        if not (gamma < 0.0 and zeta > 1.0):
            raise ValueError(
                f"stretch_limits (gamma, zeta) must satisfy gamma < 0 < 1 < zeta so that masks can be exactly 0 "
                f"and 1, got {self.stretch_limits}; the usual choice is (-0.1, 1.1)."
            )
        if self.mask_temperature <= 0:
            raise ValueError(f"mask_temperature must be positive (2/3 in the paper), got {self.mask_temperature}.")
        if self.mask_init_std < 0:
            raise ValueError(f"mask_init_std must be >= 0, got {self.mask_init_std}.")
        if self.mask_logit_bound <= 0:
            raise ValueError(f"mask_logit_bound must be positive (log(100) in the paper), got {self.mask_logit_bound}.")
        if self.masks not in MASK_FORMATS:
            raise ValueError(f"masks must be one of {MASK_FORMATS}, got {self.masks!r}.")
        if self.feature_dim is not None and self.feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive integer or None, got {self.feature_dim}.")
        if self.num_skill_tokens < 0:
            raise ValueError(f"num_skill_tokens must be >= 0, got {self.num_skill_tokens}.")
        if self.router_heads < 1 or self.router_mlp_ratio <= 0:
            raise ValueError(
                f"router_heads must be >= 1 and router_mlp_ratio > 0, got {self.router_heads} and "
                f"{self.router_mlp_ratio}."
            )
        if self.feature_dim is not None and self.feature_dim % self.router_heads:
            raise ValueError(
                f"feature_dim ({self.feature_dim}) must be divisible by router_heads ({self.router_heads})."
            )

    @property
    def mask_threshold_logit(self) -> float:
        """Mask logits above this value give a non-zero mask at the meta-training temperature."""
        gamma, zeta = self.stretch_limits
        ratio = -gamma / (zeta - gamma)
        return self.mask_temperature * math.log(ratio / (1.0 - ratio))
