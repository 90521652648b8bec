"""hf_lowdata's PEFT tuners, one package per method; each registers itself with PEFT on import.

All sub-packages are imported here, so ``import hf_lowdata`` is enough for ``get_peft_model``,
``PeftModel.from_pretrained`` and transformers' ``load_adapter`` to know every method.
"""

import importlib
import pkgutil

for _package in pkgutil.iter_modules(__path__):
    if _package.ispkg:
        importlib.import_module(f"{__name__}.{_package.name}")
