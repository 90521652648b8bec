"""Every test here runs with one intra-op thread (the ``one_torch_thread`` fixture of tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield
