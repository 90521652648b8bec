"""pyproject.toml: package data that exists, and a declared distribution for every third-party import."""

from __future__ import annotations

import ast
import sys
from importlib.metadata import packages_distributions

import pytest
from packaging.requirements import Requirement

from tests.helpers import REPO_ROOT

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_every_package_data_pattern_matches_a_file():
    """``metrics/*/*.py`` and ``bench/*.json`` matched nothing (left from files that were removed)."""
    for package, patterns in PYPROJECT["tool"]["setuptools"]["package-data"].items():
        for pattern in patterns:
            assert list((REPO_ROOT / package.replace(".", "/")).glob(pattern)), f"{package}: {pattern} matches no file"


def test_every_third_party_import_of_the_package_is_declared():
    """hf_lowdata/hub.py imports huggingface_hub, which only came in through transformers."""
    declared = {_canonical(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}
    declared |= {_canonical(Requirement(r).name) for extra in PYPROJECT["project"]["optional-dependencies"].values()
                 for r in extra}
    providers = packages_distributions()
    undeclared = {}
    for path in sorted((REPO_ROOT / "hf_lowdata").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top in sys.stdlib_module_names or top == "hf_lowdata" or top not in providers:
                    continue  # (not installed here: an optional import this test cannot map)
                if not {_canonical(d) for d in providers[top]} & declared:
                    undeclared.setdefault(top, path.relative_to(REPO_ROOT).as_posix())
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
