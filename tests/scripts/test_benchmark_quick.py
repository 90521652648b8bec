"""spaces_demo/benchmark_quick.py: where it finds the shared data."""

from __future__ import annotations

import importlib.util

from hf_lowdata.methods.sparse_expert import DATA_DIR_ENV
from tests.helpers import REPO_ROOT


def _module():
    spec = importlib.util.spec_from_file_location("benchmark_quick", REPO_ROOT / "spaces_demo" / "benchmark_quick.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_data_dir_defaults_to_the_environment_variable(monkeypatch, tmp_path):
    """The default was always shared/data beside the repository, whatever $HF_LOWDATA_DATA_DIR said."""
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert _module().build_parser().parse_args([]).data_dir == tmp_path


def test_without_the_variable_the_data_dir_is_beside_the_repository(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert _module().build_parser().parse_args([]).data_dir == REPO_ROOT.parent / "shared" / "data"
