"""MixupBLO: attention-guided weight mixup with bi-level optimisation (Somayajula et al., NAACL 2024).

Importing this package registers the method with PEFT (``get_peft_model(model, MixupBLOConfig())``,
``PeftModel.from_pretrained``, transformers' ``load_adapter``) and makes
:class:`~hf_lowdata.training.LowDataTrainer` train such models with the bi-level objective
(:class:`~hf_lowdata.training.bilevel.MixupBLOObjective`).
"""

from ...registration import register_method
from .config import MixupBLOConfig
from .layer import Linear, MixupBLOLayer
from .model import MixupBLOModel

register_method("mixup_blo", MixupBLOConfig, MixupBLOModel)

from ...training import bilevel as _bilevel  # noqa: E402,F401  (registers the default objective)

__all__ = ["Linear", "MixupBLOConfig", "MixupBLOLayer", "MixupBLOModel"]
