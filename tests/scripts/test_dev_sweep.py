"""scripts/dev_sweep.py: its grid."""

from __future__ import annotations

from tests.helpers import load_script


def _sweep():
    return load_script("dev_sweep")


def test_grid_is_the_cross_product_with_numbers_parsed():
    grid = _sweep().parse_grid(["lr=1e-4,5e-5", "finetune=none,lora"])
    assert grid == [{"lr": 1e-4, "finetune": "none"}, {"lr": 1e-4, "finetune": "lora"},
                    {"lr": 5e-5, "finetune": "none"}, {"lr": 5e-5, "finetune": "lora"}]


def test_grid_keeps_integers_integers():
    """Integer options (projector_layers) must reach configs as int, not 2.0."""
    grid = _sweep().parse_grid(["projector_layers=0,2", "lr=1e-3"])
    assert grid == [{"projector_layers": 0, "lr": 1e-3}, {"projector_layers": 2, "lr": 1e-3}]
    assert all(type(row["projector_layers"]) is int for row in grid)
