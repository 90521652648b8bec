"""Conformance rows of SparseExpert (SMAT): relaxed (trainable) masks and bit-packed binary masks.

On the real MiniLM the relaxed row uses 2 experts instead of 8: 8 float mask logits per encoder weight
are 340 MB per model copy, and the matrix builds dozens of copies on a shared CPU machine. The binary
row (1 bit per mask entry) runs the default 8 experts everywhere.
"""

from __future__ import annotations

from peft import PeftConfig, TaskType

from tests.conformance.cases import Case


def _config(kind: str, **kwargs) -> PeftConfig:
    from hf_lowdata import SparseExpertConfig

    if kind == "mlp":
        return SparseExpertConfig(target_modules=["lin0", "lin1"], modules_to_save=["classifier"], feature_dim=32,
                                  **kwargs)
    return SparseExpertConfig(task_type=TaskType.SEQ_CLS, **kwargs)


def _relaxed(kind: str) -> PeftConfig:
    return _config(kind, num_experts=2) if kind == "minilm" else _config(kind)


def _binary(kind: str) -> PeftConfig:
    return _config(kind, masks="binary")


CASES = [
    Case("sparse_expert", _relaxed, multiple_active=True),
    Case("sparse_expert_binary", _binary, multiple_active=True),
]
