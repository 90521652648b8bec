"""Methods the benchmark, the demo and ``hf-lowdata train`` can run, by name.

Every module in this package registers its methods with :func:`register_method` on import; the
package imports them all, so a new method is one new module here (no list to edit).
"""

import importlib
import pkgutil

from .base import (
    METHODS,
    FittedClassifier,
    Method,
    MethodConfigError,
    RunCancelled,
    RunContext,
    SharedCache,
    TransformerClassifier,
    TransformerMethod,
    available_methods,
    get_method,
    register_method,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "METHODS",
    "FittedClassifier",
    "Method",
    "MethodConfigError",
    "RunCancelled",
    "RunContext",
    "SharedCache",
    "TransformerClassifier",
    "TransformerMethod",
    "available_methods",
    "get_method",
    "register_method",
]
