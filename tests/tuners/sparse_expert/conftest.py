"""One intra-op thread for these tests: on a shared 2-core machine, two OpenMP threads per process
oversubscribe the cores and make small models ~40x slower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
