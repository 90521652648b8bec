"""Training: the LowDataTrainer, the per-method objective interface, and few-shot TrainingArguments."""

from .arguments import few_shot_training_args
from .batchnorm import batchnorm_statistics_frozen, frozen_batchnorm_in_eval
from .class_weights import balanced_class_weights, weighted_cross_entropy
from .objectives import (
    AuxiliaryOptimizer,
    TrainingObjective,
    default_objective_for,
    module_parameter_ids,
    register_default_objective,
)
from .trainer import LowDataTrainer, NonFiniteLossError, last_complete_checkpoint

__all__ = [
    "AuxiliaryOptimizer",
    "LowDataTrainer",
    "NonFiniteLossError",
    "TrainingObjective",
    "balanced_class_weights",
    "default_objective_for",
    "few_shot_training_args",
    "batchnorm_statistics_frozen",
    "frozen_batchnorm_in_eval",
    "last_complete_checkpoint",
    "module_parameter_ids",
    "register_default_objective",
    "weighted_cross_entropy",
]
