"""Merging additive weight deltas into a PEFT tuner layer's base weight (FTP, SparseExpert).

Both methods' adapters change a layer as ``W = W0 + delta``, so merging adds the delta and
unmerging subtracts it again; the layer supplies ``get_delta_weight(adapter)`` and says which
adapters it holds.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge


def merge_deltas(layer: BaseTunerLayer, adapter_names: list[str] | None, safe_merge: bool,
                 holds: Callable[[str], bool], method: str) -> None:
    """Add the deltas of ``adapter_names`` (default: the active adapters) to the base weight.

    With ``safe_merge`` the sum is checked for NaN/inf before the base weight is touched.
    """
    adapter_names = check_adapters_to_merge(layer, adapter_names)
    base = layer.get_base_layer()
    for adapter in adapter_names:
        if not holds(adapter):
            continue
        with torch.no_grad():
            delta = layer.get_delta_weight(adapter).detach().to(base.weight.dtype)
            if safe_merge:
                merged = base.weight.data + delta
                if not torch.isfinite(merged).all():
                    raise ValueError(
                        f"Merging {method} adapter {adapter!r} would put NaN/inf into the weights: the adapter is "
                        "broken (check the training loss and learning rate). The base weights were left unchanged."
                    )
                base.weight.data = merged
            else:
                base.weight.data += delta
        layer.merged_adapters.append(adapter)


def unmerge_deltas(layer: BaseTunerLayer, holds: Callable[[str], bool]) -> None:
    """Subtract every merged delta from the base weight again."""
    if not layer.merged:
        warnings.warn("Already unmerged. Nothing to do.", stacklevel=3)
        return
    base = layer.get_base_layer()
    while layer.merged_adapters:
        adapter = layer.merged_adapters.pop()
        if holds(adapter):
            with torch.no_grad():
                base.weight.data -= layer.get_delta_weight(adapter).detach().to(base.weight.dtype)
