"""Methods the benchmark, the demo and ``hf-lowdata train`` can run, by name.

Importing this package registers the baselines (``probe``, ``full``, ``lora``, ``setfit``) and every
hf_lowdata method whose recipe module is listed below.
"""

from . import finetune, probe, setfit_method  # noqa: F401  (registration side effects)
from .base import (
    METHODS,
    FittedClassifier,
    Method,
    RunCancelled,
    RunContext,
    SharedCache,
    TransformerClassifier,
    TransformerMethod,
    available_methods,
    get_method,
    register_method,
)

__all__ = [
    "METHODS",
    "FittedClassifier",
    "Method",
    "RunCancelled",
    "RunContext",
    "SharedCache",
    "TransformerClassifier",
    "TransformerMethod",
    "available_methods",
    "get_method",
    "register_method",
]
