"""scripts/dev_sweep.py: its grid and the budget a method variant is swept with."""

from __future__ import annotations

import pytest

from tests.helpers import load_script


def _sweep():
    return load_script("dev_sweep")


def test_variants_sweep_with_their_family_budget():
    sweep = _sweep()
    assert sweep.budget_family("ftp") == "ftp"
    assert sweep.budget_family("ftp_lora") == "ftp_lora"  # its own budget, not ftp's
    assert sweep.budget_family("sparse_expert_dense") == "sparse_expert"
    assert sweep.budget_family("twin_turbo_ce") == "twin_turbo"
    with pytest.raises(SystemExit, match="No budget for method 'nope'"):
        sweep.budget_family("nope")


def test_grid_is_the_cross_product_with_numbers_parsed():
    grid = _sweep().parse_grid(["lr=1e-4,5e-5", "finetune=none,lora"])
    assert grid == [{"lr": 1e-4, "finetune": "none"}, {"lr": 1e-4, "finetune": "lora"},
                    {"lr": 5e-5, "finetune": "none"}, {"lr": 5e-5, "finetune": "lora"}]
