"""Conformance rows for FTP: the dense delta (``delta="full"``) and the low-rank one (``delta="lora"``)."""

from __future__ import annotations

from functools import partial

from peft import PeftConfig

from tests.conformance.cases import Case


def _ftp(kind: str, delta: str) -> PeftConfig:
    from peft import TaskType

    from hf_lowdata import FTPConfig

    if kind == "mlp":
        return FTPConfig(target_modules=["lin0", "lin1"], modules_to_save=["classifier"], delta=delta)
    return FTPConfig(task_type=TaskType.SEQ_CLS, delta=delta)


CASES: list[Case] = [
    Case("ftp", partial(_ftp, delta="full"), multiple_active=True),
    Case("ftp_lora", partial(_ftp, delta="lora"), multiple_active=True),
]
