"""``MixupBLOConfig``: attention-guided weight mixup learned by bi-level optimisation.

Somayajula et al., "Generalizable and Stable Finetuning of Pretrained Language Models on
Low-Resource Texts", NAACL 2024 (arXiv:2403.12918). Spec: section 2 of ``shared/specs/methods.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig
from peft.utils import PeftType

TASK_WEIGHTS = ("full", "lora")
HYPERGRADIENTS = ("darts", "first_order", "none")
MIXING_SCHEDULERS = ("cosine", "linear", "constant")


@dataclass
class MixupBLOConfig(PeftConfig):
    """Configuration of a :class:`~hf_lowdata.tuners.mixup_blo.MixupBLOModel`.

    Each targeted Linear keeps its pretrained weight W0 frozen and gets a trainable task weight W and
    rank-1 mixing factors a (out x 1), b (1 x in), clamped to [0, 1]:
    ``W_eff = (a b^T) * W + ((1 - a)(1 - b)^T) * W0`` (the authors' code; the paper prints the simpler
    ``1 - a b^T`` for the pretrained coefficient). W and the bias are the inner variables, a and b the
    outer ones of a bi-level problem solved by :class:`~hf_lowdata.training.bilevel.MixupBLOObjective`.
    After training the layer merges into a plain Linear (or transformers ``Conv1D``, as in GPT-2).

    Args:
        target_modules: Module names (or a regex) to mix. Default for BERT-like encoders: query, key,
            value, the attention output, both FFN Linears and the pooler dense (GPT-2: c_attn, c_proj,
            c_fc); never the classifier.
        exclude_modules: Module names (or a regex) never to mix.
        task_weight: "full": W is a trainable copy of W0, as in the paper (the saved adapter holds a full
            copy of every mixed weight, about the size of the model's Linear layers). "lora": W = W0 + B A
            of rank r, so the adapter is small (this project's extension, not in the paper). Fold averaging
            then averages B and A separately (the adapter stays rank r): every fold starts from the same
            A, so this approximates, but is not exactly, the mean of the folds' W.
        r: Rank of B A when task_weight="lora".
        lora_alpha: Scale of B A when task_weight="lora": W = W0 + (lora_alpha / r) B A.
        init_mean: Mean of the initial mixing factors (the authors: 1.0). Must lie in [0, 1].
        init_std: Standard deviation of the initial mixing factors. The authors draw N(1, 0.005); with
            their coefficient (1-a)(1-b)^T that makes the initial model differ slightly from the
            pretrained one, so the default 0.0 starts exactly at the pretrained model (a = b = 1). Set
            0.005 to reproduce the authors' initialisation.
        train_bias: Train a per-adapter bias offset of every mixed Linear (the authors train the bias of
            the task layer). It starts at 0 and is merged into the bias on merge.
        hypergradient: Outer gradient. "darts": DARTS finite-difference hypergradient with one unrolled
            inner step and roll-back (the paper). "first_order": gradient of the validation loss at the
            current weights only. "none": no bi-level problem; the mixing factors are trained jointly with
            the weights on the training loss (the paper's single-level ablation).
        split_ratio: Fraction of the labelled set used for the inner (training) problem; the rest is the
            validation set of the outer problem (the paper: 0.8, better than 0.5).
        folds: Number of search folds, each with a fresh random split and from the pretrained start (the
            paper: 5). Read by the fold loop, :func:`hf_lowdata.methods.mixup_blo.train_mixup_blo`.
        average_folds: After the folds, set every trainable parameter to its mean over folds (the authors'
            ``total_avg``). If False, only the mixing factors are averaged and the other parameters restart
            from the pretrained model before phase 2.
        mixing_lr: Learning rate of the outer AdamW on the mixing factors (the paper: 2e-3).
        mixing_weight_decay: Weight decay of the outer AdamW (the paper: 0).
        mixing_warmup_ratio: Fraction of the steps with linear warm-up of the outer learning rate (the paper:
            0.1).
        mixing_scheduler: Schedule of the outer learning rate after warm-up: "cosine" (the paper), "linear"
            or "constant".
        darts_radius: Finite-difference radius R of the DARTS hypergradient: the weights move by
            eps = R / ||u|| along the preconditioned validation gradient u (betty's default: 0.01).
        darts_precondition: Multiply the validation gradient by the inner optimizer's own one-step
            Jacobian (learning rate x the Adam scaling) before the finite difference, so the hypergradient
            is that of the unrolled inner step (the authors: preconditioned). False uses the raw gradient.
        modules_to_save: Other modules trained and saved with the adapter (the classifier is added for
            sequence classification). Add "LayerNorm" to train the LayerNorms as the paper does.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Module names (or a regex) to mix. Default for BERT-like encoders: query, key, value, the "
            "attention output, both FFN Linears and the pooler dense; never the classifier."
        },
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names (or a regex) never to mix."}
    )
    task_weight: Literal["full", "lora"] = field(
        default="full",
        metadata={
            "help": "\"full\": W is a trainable copy of W0, as in the paper (the saved adapter holds a full copy of "
            "every mixed weight, about the size of the model's Linear layers). \"lora\": W = W0 + B A of rank r, so "
            "the adapter is small (this project's extension, not in the paper)."
        },
    )
    r: int = field(default=8, metadata={"help": "Rank of B A when task_weight=\"lora\"."})
    lora_alpha: float = field(
        default=8.0, metadata={"help": "Scale of B A when task_weight=\"lora\": W = W0 + (lora_alpha / r) B A."}
    )
    init_mean: float = field(
        default=1.0,
        metadata={"help": "Mean of the initial mixing factors (the authors: 1.0). Must lie in [0, 1]."},
    )
    init_std: float = field(
        default=0.0,
        metadata={
            "help": "Standard deviation of the initial mixing factors. The authors draw N(1, 0.005); with their "
            "coefficient (1-a)(1-b)^T that makes the initial model differ slightly from the pretrained one, so the "
            "default 0.0 starts exactly at the pretrained model (a = b = 1). Set 0.005 to reproduce the authors' "
            "initialisation."
        },
    )
    train_bias: bool = field(
        default=True,
        metadata={
            "help": "Train a per-adapter bias offset of every mixed Linear (the authors train the bias of the task "
            "layer). It starts at 0 and is merged into the bias on merge."
        },
    )
    hypergradient: Literal["darts", "first_order", "none"] = field(
        default="darts",
        metadata={
            "help": "Outer gradient. \"darts\": DARTS finite-difference hypergradient with one unrolled inner step "
            "and roll-back (the paper). \"first_order\": gradient of the validation loss at the current weights "
            "only. \"none\": no bi-level problem; the mixing factors are trained jointly with the weights on the "
            "training loss (the paper's single-level ablation)."
        },
    )
    split_ratio: float = field(
        default=0.8,
        metadata={
            "help": "Fraction of the labelled set used for the inner (training) problem; the rest is the validation "
            "set of the outer problem (the paper: 0.8, better than 0.5)."
        },
    )
    folds: int = field(
        default=5,
        metadata={
            "help": "Number of search folds, each with a fresh random split and from the pretrained start (the "
            "paper: 5). Read by the fold loop, hf_lowdata.methods.mixup_blo.train_mixup_blo."
        },
    )
    average_folds: bool = field(
        default=True,
        metadata={
            "help": "After the folds, set every trainable parameter to its mean over folds (the authors' total_avg). "
            "If False, only the mixing factors are averaged and the other parameters restart from the pretrained "
            "model before phase 2."
        },
    )
    mixing_lr: float = field(
        default=2e-3, metadata={"help": "Learning rate of the outer AdamW on the mixing factors (the paper: 2e-3)."}
    )
    mixing_weight_decay: float = field(
        default=0.0, metadata={"help": "Weight decay of the outer AdamW (the paper: 0)."}
    )
    mixing_warmup_ratio: float = field(
        default=0.1,
        metadata={
            "help": "Fraction of the steps with linear warm-up of the outer learning rate (the paper: 0.1)."
        },
    )
    mixing_scheduler: Literal["cosine", "linear", "constant"] = field(
        default="cosine",
        metadata={
            "help": "Schedule of the outer learning rate after warm-up: \"cosine\" (the paper), \"linear\" or "
            "\"constant\"."
        },
    )
    darts_radius: float = field(
        default=0.01,
        metadata={
            "help": "Finite-difference radius R of the DARTS hypergradient: the weights move by eps = R / ||u|| "
            "along the preconditioned validation gradient u (betty's default: 0.01)."
        },
    )
    darts_precondition: bool = field(
        default=True,
        metadata={
            "help": "Multiply the validation gradient by the inner optimizer's own one-step Jacobian (learning rate "
            "x the Adam scaling) before the finite difference, so the hypergradient is that of the unrolled inner "
            "step (the authors: preconditioned). False uses the raw gradient."
        },
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "Other modules trained and saved with the adapter (the classifier is added for sequence "
            "classification). Add \"LayerNorm\" to train the LayerNorms as the paper does."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType("MIXUP_BLO")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        _check_choice("task_weight", self.task_weight, TASK_WEIGHTS)
        _check_choice("hypergradient", self.hypergradient, HYPERGRADIENTS)
        _check_choice("mixing_scheduler", self.mixing_scheduler, MIXING_SCHEDULERS)
        if self.task_weight == "lora" and (not isinstance(self.r, int) or self.r < 1):
            raise ValueError(f"r must be a positive integer for task_weight='lora', got {self.r!r}.")
        if not 0.0 <= self.init_mean <= 1.0:
            raise ValueError(
                f"init_mean must lie in [0, 1] (the mixing factors are clamped to it), got {self.init_mean}."
            )
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}.")
        if not 0.0 < self.split_ratio < 1.0:
            raise ValueError(
                f"split_ratio must be strictly between 0 and 1 (the inner share of the labelled set; the paper "
                f"uses 0.8), got {self.split_ratio}."
            )
        if not isinstance(self.folds, int) or self.folds < 1:
            raise ValueError(f"folds must be a positive integer (the paper uses 5), got {self.folds!r}.")
        for name in ("mixing_lr", "darts_radius"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        if self.mixing_weight_decay < 0:
            raise ValueError(f"mixing_weight_decay must be >= 0, got {self.mixing_weight_decay}.")
        if not 0.0 <= self.mixing_warmup_ratio < 1.0:
            raise ValueError(f"mixing_warmup_ratio must lie in [0, 1), got {self.mixing_warmup_ratio}.")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
