"""``FTPConfig``: a trainable delta on pretrained layers, kept near zero by Fast Trainable Projection.

FTP (Tian et al., "Fast Trainable Projection for Robust Fine-Tuning", NeurIPS 2023) keeps every
fine-tuned tensor within a learned distance of its pretrained value. As a PEFT method the targeted
layers get a trainable delta (the pretrained weight stays frozen), so the distance to the pretrained
model *is* the delta's norm and the anchor need not be copied. The projection itself happens in the
optimizer (:mod:`.optimizer`); the optimizer settings live here so that an adapter carries them and
``LowDataTrainer`` trains it with FTP without being told.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig
from peft.utils import PeftType

DELTA_KINDS = ("full", "lora")
NORMS = ("mars", "l2")
BASE_OPTIMIZERS = ("adam", "sgd")


@dataclass
class FTPConfig(PeftConfig):
    """Configuration of an FTP adapter (:class:`~hf_lowdata.tuners.ftp.FTPModel`).

    Args:
        target_modules: Names of the ``nn.Linear`` / ``nn.Conv2d`` / transformers ``Conv1D`` modules that get a delta: a list
            (exact names or name suffixes) or a regex matched against the full module name. ``None``
            picks the defaults for the model type (BERT-style encoders: query, key, value, attention
            output, intermediate and output dense; MPNet; DistilBERT; Llama-style decoders: the
            attention and MLP projections; GPT-2: c_attn, c_proj, c_fc; EfficientNet: every convolution).
        exclude_modules: Names (list) or regex of modules never to adapt.
        delta: ``"full"``: a dense trainable delta of the weight's shape, initialised at zero (FTP's
            full fine-tuning, with the pretrained weights frozen); ``"lora"``: delta = (lora_alpha / r) B A
            with B initialised at zero (parameter-efficient; the projection then scales rows of B).
        r: Rank of B A when ``delta="lora"``.
        lora_alpha: Scale numerator of B A when ``delta="lora"`` (the delta is multiplied by lora_alpha / r).
        mu: Learning rate of the Adam step on each tensor's projection radius gamma (the paper's 1e-2).
        kappa: Damping in [0, 1] of positive hyper-gradients (those that shrink gamma); 1 is no damping,
            0 lets gamma only grow.
        norm: Distance used for the projection: ``"mars"`` (the paper): L1 norm per output row, whole-vector
            L1 for 1-D tensors; ``"l2"``: one Frobenius norm per tensor.
        base_optimizer: The update that FTP projects: ``"adam"`` (AdamP, decoupled weight decay) or
            ``"sgd"`` (SGDP: SGD with Nesterov momentum 0.9, decoupled weight decay).
        modules_to_save: Modules besides the adapted ones that are trained and saved in full (the new
            classification head). They have no pretrained value, so FTP gives them the plain update.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Names of the nn.Linear / nn.Conv2d / transformers Conv1D modules that get a delta: a list (exact names or name "
            "suffixes) or a regex matched against the full module name. None picks the defaults for the model "
            "type (BERT-style encoders: query, key, value, attention output, intermediate and output dense; "
            "MPNet; DistilBERT; Llama-style decoders: the attention and MLP projections; GPT-2: c_attn, c_proj, c_fc; "
            "EfficientNet: every "
            "convolution)."
        },
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Names (list) or regex of modules never to adapt."}
    )
    delta: Literal["full", "lora"] = field(
        default="full",
        metadata={
            "help": "'full': a dense trainable delta of the weight's shape, initialised at zero (FTP's full "
            "fine-tuning, with the pretrained weights frozen); 'lora': delta = (lora_alpha / r) B A with B "
            "initialised at zero (parameter-efficient; the projection then scales rows of B)."
        },
    )
    r: int = field(default=8, metadata={"help": "Rank of B A when delta='lora'."})
    lora_alpha: int = field(
        default=8,
        metadata={"help": "Scale numerator of B A when delta='lora' (the delta is multiplied by lora_alpha / r)."},
    )
    mu: float = field(
        default=1e-2,
        metadata={"help": "Learning rate of the Adam step on each tensor's projection radius gamma (the paper's 1e-2)."},
    )
    kappa: float = field(
        default=1.0,
        metadata={
            "help": "Damping in [0, 1] of positive hyper-gradients (those that shrink gamma); 1 is no damping, 0 "
            "lets gamma only grow."
        },
    )
    norm: Literal["mars", "l2"] = field(
        default="mars",
        metadata={
            "help": "Distance used for the projection: 'mars' (the paper): L1 norm per output row, whole-vector "
            "L1 for 1-D tensors; 'l2': one Frobenius norm per tensor."
        },
    )
    base_optimizer: Literal["adam", "sgd"] = field(
        default="adam",
        metadata={
            "help": "The update that FTP projects: 'adam' (AdamP, decoupled weight decay) or 'sgd' (SGDP: SGD "
            "with Nesterov momentum 0.9, decoupled weight decay)."
        },
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules besides the adapted ones that are trained and saved in full (the new classification "
            "head). They have no pretrained value, so FTP gives them the plain update."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.FTP
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if self.delta not in DELTA_KINDS:
            raise ValueError(f"FTPConfig.delta must be one of {DELTA_KINDS}, got {self.delta!r}.")
        if self.delta == "lora" and (not isinstance(self.r, int) or self.r <= 0):
            raise ValueError(f"FTPConfig.r must be a positive integer when delta='lora', got {self.r!r}.")
        if self.delta == "lora" and not self.lora_alpha > 0:
            raise ValueError(f"FTPConfig.lora_alpha must be positive, got {self.lora_alpha!r}.")
        if not self.mu > 0:
            raise ValueError(f"FTPConfig.mu (the learning rate of the projection radius) must be > 0, got {self.mu!r}.")
        if not 0.0 <= self.kappa <= 1.0:
            raise ValueError(f"FTPConfig.kappa must lie in [0, 1] (1 = no damping), got {self.kappa!r}.")
        if self.norm not in NORMS:
            raise ValueError(f"FTPConfig.norm must be one of {NORMS} ('mars' is the paper's), got {self.norm!r}.")
        if self.base_optimizer not in BASE_OPTIMIZERS:
            raise ValueError(f"FTPConfig.base_optimizer must be one of {BASE_OPTIMIZERS}, got {self.base_optimizer!r}.")
