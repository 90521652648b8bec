"""hf_lowdata: fine-tune pretrained models when labels are scarce, the PEFT way.

``import hf_lowdata`` registers the package's PEFT methods next to LoRA, so ``get_peft_model``,
``PeftModel.from_pretrained`` and transformers' ``load_adapter`` know them.
"""

from __future__ import annotations

from .registration import ensure_peft_types

ensure_peft_types()

from . import tuners  # noqa: E402,F401  (registers the tuners with PEFT)

__version__ = "0.1.0"

__all__ = ["__version__"]
