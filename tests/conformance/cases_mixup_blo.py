"""Conformance rows for MixupBLO: the paper's full task weight and this project's LoRA task weight."""

from __future__ import annotations

from peft import PeftConfig, TaskType

from tests.conformance.cases import Case


def _config(task_weight: str):
    def make(kind: str) -> PeftConfig:
        from hf_lowdata.tuners.mixup_blo import MixupBLOConfig

        if kind == "mlp":
            return MixupBLOConfig(task_weight=task_weight, target_modules=["lin0", "lin1"],
                                  modules_to_save=["classifier"])
        return MixupBLOConfig(task_type=TaskType.SEQ_CLS, task_weight=task_weight)

    return make


CASES = [
    Case("mixup_blo_full", _config("full"), multiple_active=True),
    Case("mixup_blo_lora", _config("lora"), multiple_active=True),
]
