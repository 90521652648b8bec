"""SMAT (sparse interpolated experts) as a PEFT method: ``get_peft_model(model, SparseExpertConfig())``.

Meta-train with :class:`~hf_lowdata.training.LowDataTrainer` on an
:class:`~hf_lowdata.training.episodes.EpisodeDataset` (the trainer picks
:class:`SparseExpertObjective` for these adapters); adapt to a task with
``model.base_model.route(prototypes)`` and ``merge_and_unload()``.
"""

from ...registration import register_method
from ...training.objectives import register_default_objective
from .config import SparseExpertConfig
from .layer import SparseExpertLayer, SparseExpertModule, pack_bits, unpack_bits
from .model import SparseExpertModel, class_prototypes, cosine_logits, pooled_features
from .objective import GroupedOptimizer, SparseExpertObjective
from .router import SparseExpertRouter

register_method("sparse_expert", SparseExpertConfig, SparseExpertModel)
register_default_objective("SPARSE_EXPERT", lambda model, config: SparseExpertObjective())

__all__ = [
    "SparseExpertConfig",
    "SparseExpertLayer",
    "SparseExpertModel",
    "SparseExpertModule",
    "SparseExpertObjective",
    "GroupedOptimizer",
    "SparseExpertRouter",
    "class_prototypes",
    "cosine_logits",
    "pack_bits",
    "pooled_features",
    "unpack_bits",
]
