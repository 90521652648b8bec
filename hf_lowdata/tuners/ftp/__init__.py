"""FTP: Fast Trainable Projection (Tian et al., NeurIPS 2023) as a PEFT method and a drop-in optimizer.

``get_peft_model(model, FTPConfig())`` adds a trainable delta to the pretrained layers;
``LowDataTrainer`` then trains it with :class:`FTPOptimizer`, which keeps each delta within a
learned radius of zero (of the pretrained weights). For plain full fine-tuning use the optimizer
directly: ``FTPOptimizer(ftp_param_groups(model), lr=1e-4)``. :class:`TPGMObjective` is the
predecessor method, for comparison.
"""

from ...registration import register_method
from ...training.objectives import register_default_objective
from .config import FTPConfig
from .layer import FTPConv1D, FTPConv2d, FTPLayer, FTPLinear
from .model import FTPModel
from .objective import FTPObjective, TPGMObjective
from .optimizer import FTPOptimizer, ftp_param_groups, projection_units

__all__ = [
    "FTPConfig",
    "FTPConv1D",
    "FTPConv2d",
    "FTPLayer",
    "FTPLinear",
    "FTPModel",
    "FTPObjective",
    "FTPOptimizer",
    "TPGMObjective",
    "ftp_param_groups",
    "projection_units",
]

register_method("ftp", FTPConfig, FTPModel)
register_default_objective("FTP", lambda model, config: FTPObjective.from_config(config))
