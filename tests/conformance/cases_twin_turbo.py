"""TwinTurbo rows of the conformance matrix.

The adapter replaces the classification head (it cannot be merged, and it is not the identity at
initialisation: a new head). On the toy MLP the "backbone" is ``lin1``, whose (B, 32) output is one
token, so the generic checks run there too. Small projectors keep the matrix fast.
"""

from __future__ import annotations

from peft import PeftConfig

from tests.conformance.cases import Case

MERGE_ERROR = "TwinTurbo adapters cannot be merged"


def _config(kind: str, **extra) -> PeftConfig:
    from hf_lowdata import TwinTurboConfig

    small = dict(projector_dim=32, projector_heads=4, projector_layers=2, **extra)
    if kind == "mlp":
        return TwinTurboConfig(target_modules=["classifier"], backbone_module="lin1", **small)
    return TwinTurboConfig(task_type="SEQ_CLS", **small)


def _variant(kind: str) -> PeftConfig:
    return _config(kind, aggregation="mean", head="infonce")


CASES = [
    Case("twin_turbo", _config, mergeable=False, merge_error=MERGE_ERROR, identity_at_init=False),
    # Another aggregation and head variant; token-level options need token states, so BERT only.
    Case("twin_turbo_mean_infonce", _variant, mergeable=False, merge_error=MERGE_ERROR, identity_at_init=False,
         kinds=("tiny_bert",)),
]
