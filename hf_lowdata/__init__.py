"""hf_lowdata: fine-tune pretrained models when labels are scarce, the PEFT way.

``import hf_lowdata`` registers the package's PEFT methods next to LoRA, so ``get_peft_model``,
``PeftModel.from_pretrained`` and transformers' ``load_adapter`` know them. The configs and the
trainer are exported here: ``from hf_lowdata import FTPConfig, LowDataTrainer``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .registration import ensure_peft_types

__version__ = "0.1.0"

ensure_peft_types()

from . import tuners  # noqa: E402,F401  (registers the tuners with PEFT)

# Public names and the module that defines each; resolved on first use (PEP 562).
_EXPORTS = {
    "TwinTurboConfig": "hf_lowdata.tuners.twin_turbo",
    "TwinTurboModel": "hf_lowdata.tuners.twin_turbo",
    "MixupBLOConfig": "hf_lowdata.tuners.mixup_blo",
    "MixupBLOModel": "hf_lowdata.tuners.mixup_blo",
    "SparseExpertConfig": "hf_lowdata.tuners.sparse_expert",
    "SparseExpertModel": "hf_lowdata.tuners.sparse_expert",
    "FTPConfig": "hf_lowdata.tuners.ftp",
    "FTPModel": "hf_lowdata.tuners.ftp",
    "PlainTrainerWarning": "hf_lowdata.tuners.base",
    "LowDataTrainer": "hf_lowdata.training",
    "TrainingObjective": "hf_lowdata.training",
    "load_data": "hf_lowdata.data",
    "make_few_shot_task": "hf_lowdata.data",
    "get_method": "hf_lowdata.methods",
    "RunContext": "hf_lowdata.methods",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_lowdata' has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise AttributeError(f"hf_lowdata.{name} is not available: {err}") from err


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["__version__", *_EXPORTS]
