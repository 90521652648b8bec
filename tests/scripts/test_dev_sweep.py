"""scripts/dev_sweep.py: its grid."""

from __future__ import annotations

from tests.helpers import load_script


def _sweep():
    return load_script("dev_sweep")


def test_grid_is_the_cross_product_with_numbers_parsed():
    grid = _sweep().parse_grid(["lr=1e-4,5e-5", "finetune=none,lora"])
    assert grid == [{"lr": 1e-4, "finetune": "none"}, {"lr": 1e-4, "finetune": "lora"},
                    {"lr": 5e-5, "finetune": "none"}, {"lr": 5e-5, "finetune": "lora"}]
