"""TwinTurbo (Quétant et al., "TwinTURBO", arXiv:2503.07851): semi-supervised projector on a frozen backbone.

``get_peft_model(model, TwinTurboConfig())`` replaces the model's classification head with a small
transformer projector over the frozen backbone's token states, a token aggregation and a class
head; ``LowDataTrainer`` then trains it with :class:`TwinTurboObjective` (mutual-information bounds
on labelled and unlabelled batches). Much of the method is reconstructed (the paper has no code):
see the config and objectives docstrings, and BENCHMARKS.md for what each part is worth.
"""

from ...registration import register_method
from ...training.objectives import register_default_objective
from .config import TwinTurboConfig
from .layer import ClassHead, TokenProjector, TokenTap, TwinTurboLayer, token_states
from .model import TwinTurboModel, backbone_token_states, twin_turbo_layer
from .objectives import LabelDiscriminator, LatentCritics, TwinTurboObjective

register_method("twin_turbo", TwinTurboConfig, TwinTurboModel)
register_default_objective("TWIN_TURBO", lambda model, config: TwinTurboObjective(config))

__all__ = [
    "ClassHead",
    "LabelDiscriminator",
    "LatentCritics",
    "TokenProjector",
    "TokenTap",
    "TwinTurboConfig",
    "TwinTurboLayer",
    "TwinTurboModel",
    "TwinTurboObjective",
    "backbone_token_states",
    "token_states",
    "twin_turbo_layer",
]
