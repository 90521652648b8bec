"""``TwinTurboConfig``: a trainable projector + head over a frozen backbone's token states."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig
from peft.utils import SAFETENSORS_WEIGHTS_NAME, PeftType

AGGREGATIONS = ("attention", "cls", "mean")
HEADS = ("categorical", "binary", "infonce")
LABEL_PRIORS = ("estimated", "labelled", "uniform")


@dataclass
class TwinTurboConfig(PeftConfig):
    """Configuration of a [`TwinTurboModel`] (TwinTURBO, Quétant et al., arXiv:2503.07851).

    The backbone stays frozen; the adapter replaces the model's classification head with a small
    transformer "projector" over the backbone's last token states, a token aggregation and a class
    head. Training (:class:`~hf_lowdata.tuners.twin_turbo.objectives.TwinTurboObjective`) optimises
    two mutual-information lower bounds on labelled and unlabelled batches. The paper has no public
    code: the architecture, the exact form of each loss term and the defaults are reconstructions
    ([recon] in ``shared/specs/methods.md``); see ``docs`` in the objectives module for each term.
    One prediction per sequence or image: ``task_type`` is "SEQ_CLS" or ``None``; per-token models
    (token classification, question answering) are refused.

    Args:
        target_modules: the classification head to replace (one module). ``None`` picks the model's
            ``classifier``, ``score`` or ``classification_head`` module.
        exclude_modules: module names never to adapt.
        backbone_module: name of the module whose first output holds the token states ((B, T, d)
            text states, a (B, C, H, W) feature map, or (B, d) features as one token). ``None`` takes
            the transformers model's ``base_model_prefix`` (``bert``, ``efficientnet``, ...).
        token_dim: width d of the token states; ``None`` reads it from the head (its first Linear's
            ``in_features``), which equals the backbone width for transformers' heads.
        num_labels: number of classes; ``None`` reads it from the head (its last Linear's
            ``out_features``).
        projector_dim: width d_p of the projector.
        projector_layers: pre-LN transformer encoder layers of the projector (0: no token mixing).
        projector_heads: attention heads of the projector and of the attention pooling.
        mlp_ratio: width of the projector's MLP as a multiple of ``projector_dim``.
        dropout: dropout inside the projector and before the head (training only).
        aggregation: how token states become one vector: "attention" (one learned query
            cross-attending the unpadded tokens; it starts as mean pooling), "cls" (the first real token)
            or "mean" (mean over unpadded tokens).
        head: "categorical" (linear logits, softmax cross-entropy), "binary" (linear one-vs-rest
            logits, sigmoid cross-entropy) or "infonce" (cosine similarity to learned class
            embeddings divided by ``head_temperature``, InfoNCE over classes).
        head_temperature: temperature of the "infonce" head.
        marginal_weight: weight b_m of the marginal cross-entropy (class balance of the
            predictions on unlabelled batches); 0 turns it off.
        adversarial_weight: weight b_adv of the adversarial KL term (a discriminator tells one-hot
            labels drawn from the prior from predictions); 0 turns it and the discriminator off.
        latent_weight: weight b_z of the latent-space bound (InfoNCE + alignment between the
            projector output and the frozen pooled backbone state); 0 turns it off. The default
            0.03 is below the spec's reconstructed range 0.1..1 [recon]: it was chosen on dev
            splits (text: sst2/sst5 dev, k = 8; images: 2,000 held-out Fashion-MNIST training
            images, k = 1/4/10): 0.03 was best on text (0 the worst there) and within a standard
            deviation of 0 (best there; 0.1 the worst) on images (BENCHMARKS.md, TwinTurbo).
        label_prior: p(y) of the task-space bound, which the marginal and adversarial terms pull the
            predictions on unlabelled data towards: "estimated" (the default; not in the paper) counts the
            classes a linear probe on the labelled examples predicts for the unlabelled pool (classify and
            count); "labelled" takes the labelled set's class frequencies (uniform for a k-shot set, whatever
            the pool holds) and "uniform" a uniform prior. Without an unlabelled pool "estimated" is
            "labelled". On a pool whose classes are uneven (a 3-class task at 9 / 45 / 46 %) the labelled
            prior cost 10 points of dev accuracy against the cross-entropy projector, the estimate none
            (BENCHMARKS.md, "Beyond the shared datasets").
        contrastive_temperature: temperature tau_c of the latent InfoNCE.
        critic_dim: output width of the latent critics (training only, never saved).
        discriminator_hidden: hidden width of the label-simplex discriminator (training only).
        discriminator_lr: Adam learning rate of the discriminator (betas 0.5, 0.999).
        critic_lr: AdamW learning rate of the latent critics; ``None`` uses the projector's.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "The classification head to replace (one module). None picks the model's `classifier`, "
                          "`score` or `classification_head` module."},
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names never to adapt."}
    )
    backbone_module: str | None = field(
        default=None,
        metadata={"help": "Name of the module whose first output holds the token states ((B, T, d) text states, a "
                          "(B, C, H, W) feature map, or (B, d) features as one token). None takes the transformers "
                          "model's `base_model_prefix` (`bert`, `efficientnet`, ...)."},
    )
    token_dim: int | None = field(
        default=None,
        metadata={"help": "Width d of the token states; None reads it from the head (its first Linear's in_features), "
                          "which equals the backbone width for transformers' heads."},
    )
    num_labels: int | None = field(
        default=None,
        metadata={"help": "Number of classes; None reads it from the head (its last Linear's out_features)."},
    )
    projector_dim: int = field(default=256, metadata={"help": "Width d_p of the projector."})
    projector_layers: int = field(
        default=2, metadata={"help": "Pre-LN transformer encoder layers of the projector (0: no token mixing)."}
    )
    projector_heads: int = field(
        default=4, metadata={"help": "Attention heads of the projector and of the attention pooling."}
    )
    mlp_ratio: int = field(
        default=4, metadata={"help": "Width of the projector's MLP as a multiple of `projector_dim`."}
    )
    dropout: float = field(
        default=0.1, metadata={"help": "Dropout inside the projector and before the head (training only)."}
    )
    aggregation: Literal["attention", "cls", "mean"] = field(
        default="attention",
        metadata={"help": "How token states become one vector: 'attention' (one learned query cross-attending the "
                          "unpadded tokens; it starts as mean pooling), 'cls' (the first real token) or 'mean' (mean over "
                          "unpadded tokens)."},
    )
    head: Literal["categorical", "binary", "infonce"] = field(
        default="categorical",
        metadata={"help": "'categorical' (linear logits, softmax cross-entropy), 'binary' (linear one-vs-rest "
                          "logits, sigmoid cross-entropy) or 'infonce' (cosine similarity to learned class "
                          "embeddings divided by `head_temperature`, InfoNCE over classes)."},
    )
    head_temperature: float = field(default=0.1, metadata={"help": "Temperature of the 'infonce' head."})
    marginal_weight: float = field(
        default=1.0,
        metadata={"help": "Weight b_m of the marginal cross-entropy (class balance of the predictions on unlabelled "
                          "batches); 0 turns it off."},
    )
    adversarial_weight: float = field(
        default=0.1,
        metadata={"help": "Weight b_adv of the adversarial KL term (a discriminator tells one-hot labels drawn from "
                          "the prior from predictions); 0 turns it and the discriminator off."},
    )
    latent_weight: float = field(
        default=0.03,
        metadata={"help": "Weight b_z of the latent-space bound (InfoNCE + alignment between the projector output and "
                          "the frozen pooled backbone state); 0 turns it off."},
    )
    label_prior: Literal["estimated", "labelled", "uniform"] = field(
        default="estimated",
        metadata={"help": "p(y) of the task-space bound: 'estimated' (the unlabelled pool's classes as a linear probe "
                          "on the labelled examples counts them), 'labelled' (the labelled set's class frequencies) or "
                          "'uniform'."},
    )
    contrastive_temperature: float = field(
        default=0.1, metadata={"help": "Temperature tau_c of the latent InfoNCE."}
    )
    critic_dim: int = field(
        default=128, metadata={"help": "Output width of the latent critics (training only, never saved)."}
    )
    discriminator_hidden: int = field(
        default=128, metadata={"help": "Hidden width of the label-simplex discriminator (training only)."}
    )
    discriminator_lr: float = field(
        default=1e-4, metadata={"help": "Adam learning rate of the discriminator (betas 0.5, 0.999)."}
    )
    critic_lr: float | None = field(
        default=None,
        metadata={"help": "AdamW learning rate of the latent critics; None uses the projector's."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.TWIN_TURBO
        if self.task_type not in (None, "SEQ_CLS"):
            raise ValueError(
                f"TwinTurbo gives one prediction per sequence or image: task_type must be 'SEQ_CLS' or None, got "
                f"{self.task_type!r}. For per-token tasks (TOKEN_CLS, QUESTION_ANS) use LoRA or FTPConfig."
            )
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, (list, tuple)):
            self.exclude_modules = set(self.exclude_modules)
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}.")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}.")
        if self.label_prior not in LABEL_PRIORS:
            raise ValueError(f"label_prior must be one of {LABEL_PRIORS}, got {self.label_prior!r}.")
        for name in ("projector_dim", "projector_heads", "mlp_ratio", "critic_dim", "discriminator_hidden",
                     "projector_layers"):
            value = getattr(self, name)
            smallest = 0 if name == "projector_layers" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
                kind = "a non-negative" if smallest == 0 else "a positive"
                raise ValueError(f"{name} must be {kind} integer, got {value!r}.")
        if self.projector_dim % self.projector_heads:
            raise ValueError(
                f"projector_dim ({self.projector_dim}) must be divisible by projector_heads ({self.projector_heads}); "
                f"e.g. projector_dim={self.projector_heads * max(1, self.projector_dim // self.projector_heads)}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
        for name in ("head_temperature", "contrastive_temperature", "discriminator_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        if self.critic_lr is not None and not self.critic_lr > 0:
            raise ValueError(f"critic_lr must be > 0 or None, got {self.critic_lr}.")
        for name in ("marginal_weight", "adversarial_weight", "latent_weight"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0 (0 turns the term off), got {value}.")
        for name in ("token_dim", "num_labels"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
        if self.num_labels == 1:
            raise ValueError("num_labels must be at least 2: TwinTurbo is a classification method.")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs):
        """PEFT's loader, plus the head sizes of adapters saved without them.

        Adapters saved before ``num_labels`` and ``token_dim`` were recorded (hf_lowdata 0.1.0 before
        2026-11-23) have ``null`` there, so the head would be rebuilt at the fresh base's size and the
        weights would not fit; the sizes are read from the adapter's safetensors header instead.
        """
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        if config.num_labels is None or config.token_dim is None:
            weights = _adapter_weights_file(pretrained_model_name_or_path, subfolder, cls._split_kwargs(kwargs)[0])
            if weights is not None:
                for name, value in head_dims_from_weights(weights).items():
                    if getattr(config, name) is None:
                        setattr(config, name, value)
        return config

    @property
    def reads_label_prior(self) -> bool:
        """Whether a term pulls predictions towards ``label_prior`` (the marginal or the adversarial one)."""
        return bool(self.marginal_weight or self.adversarial_weight)

    @property
    def uses_unlabelled_terms(self) -> bool:
        """Whether any term of the bounds beyond the conditional one is on."""
        return bool(self.marginal_weight or self.adversarial_weight or self.latent_weight)


def _adapter_weights_file(name_or_path: str, subfolder: str | None, hub_kwargs: dict) -> str | None:
    """The adapter's safetensors file: in a local folder, else from the Hub (cache first, as PEFT's
    weight loading would fetch it next anyway); ``None`` when there is none to read."""
    local = os.path.join(name_or_path, subfolder or "", SAFETENSORS_WEIGHTS_NAME)
    if os.path.isfile(local):
        return local
    if os.path.isdir(name_or_path):
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(name_or_path, SAFETENSORS_WEIGHTS_NAME, subfolder=subfolder, **hub_kwargs)
    except (OSError, ValueError, EntryNotFoundError):
        return None  # loading the weights reports it


def head_dims_from_weights(file: str | os.PathLike) -> dict[str, int]:
    """``num_labels`` and ``token_dim`` of a saved TwinTurbo adapter, read from its safetensors header
    (the head's weight or class embeddings, the projector's input layer); empty if unreadable."""
    from safetensors import SafetensorError, safe_open

    dims: dict[str, int] = {}
    try:
        with safe_open(os.fspath(file), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 - a safe_open handle is not iterable
                shape = weights.get_slice(key).get_shape()
                if key.endswith(("twin_turbo_head.linear.weight", "twin_turbo_head.class_embeddings")):
                    dims["num_labels"] = shape[0]
                elif key.endswith("twin_turbo_projector.input.weight"):
                    dims["token_dim"] = shape[1]
    except (SafetensorError, OSError):
        return {}  # a damaged file: loading the weights reports it
    return dims
