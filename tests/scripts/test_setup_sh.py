"""scripts/setup.sh, run in a scratch copy with a fake python (it records every call; nothing is installed).

The fake keeps its state in the venv it "creates": ``pip-ok`` (pip runs), ``torch-version`` (the torch
``pip install torch==X`` put there), ``constraints`` (the constraints file of each install).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "python $*" >> "$FAKE_LOG"
here=$(cd "$(dirname "$0")/.." && pwd)
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    dir="${@: -1}"; rm -rf "$dir"; mkdir -p "$dir/bin"; cp "$0" "$dir/bin/python"; touch "$dir/pip-ok"; exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
    [ -f "$here/pip-ok" ] || exit 1
    [ "$3" = "--version" ] && { echo "pip 24.0"; exit 0; }
    prev=""
    for arg in "$@"; do
        case "$arg" in torch==*) echo "${arg#torch==}" > "$here/torch-version";; esac
        [ "$prev" = "-c" ] && cat "$arg" >> "$here/constraints"
        prev="$arg"
    done
    exit 0
fi
if [ "$1" = "-c" ]; then
    case "$2" in *torch*) [ -f "$here/torch-version" ] || exit 1;; esac
    case "$2" in *__version__.split*) cut -d+ -f1 "$here/torch-version";; esac
    exit 0
fi
exit 0
"""


def _fake_python(folder: Path) -> Path:
    path = folder / "python3"
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return path


def _venv(clone: Path, python: Path, pip: bool = True, torch: str | None = None) -> Path:
    """An existing .venv: the fake python, with or without pip, with or without a torch."""
    venv = clone / ".venv"
    (venv / "bin").mkdir(parents=True)
    shutil.copy(python, venv / "bin" / "python")
    if pip:
        (venv / "pip-ok").touch()
    if torch:
        (venv / "torch-version").write_text(torch + "\n")
    return venv


@pytest.fixture
def clone(tmp_path):
    """A scratch copy of the repository's setup script (pyproject is not read: pip is fake)."""
    (tmp_path / "repo" / "scripts").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "scripts" / "setup.sh", tmp_path / "repo" / "scripts" / "setup.sh")
    return tmp_path / "repo"


def _setup(clone: Path, python: Path, *args: str) -> list[str]:
    log = clone.parent / "calls.log"
    log.unlink(missing_ok=True)
    subprocess.run(["bash", str(clone / "scripts" / "setup.sh"), *args], check=True, capture_output=True, text=True,
                   env={**os.environ, "PYTHON": str(python), "FAKE_LOG": str(log)}, timeout=60)
    return log.read_text().splitlines()


def test_a_venv_without_pip_is_recreated(clone, tmp_path):
    """``python3 -m venv --without-pip .venv`` left a python that setup.sh kept (and whose pip errors it hid)."""
    python = _fake_python(tmp_path)
    _venv(clone, python, pip=False)
    calls = _setup(clone, python)
    assert any(c.startswith("python -m venv --clear") for c in calls)
    assert (clone / ".venv" / "torch-version").read_text().strip() == "2.13.0"


@pytest.mark.parametrize("installed", [None, "2.5.0", "2.14.1"])
def test_any_torch_but_the_pinned_one_is_replaced_by_it(clone, tmp_path, installed):
    """An importable torch of another version used to skip the pin (and 'pip install -e .' then upgraded an
    old one to the newest release on the index)."""
    python = _fake_python(tmp_path)
    _venv(clone, python, torch=installed)
    calls = _setup(clone, python)
    assert any("torch==2.13.0" in c and "-c " not in c for c in calls)
    assert (clone / ".venv" / "torch-version").read_text().strip() == "2.13.0"


def test_the_pinned_torch_with_a_local_suffix_is_kept(clone, tmp_path):
    python = _fake_python(tmp_path)
    _venv(clone, python, torch="2.13.0+cpu")
    calls = _setup(clone, python)
    assert not any("torch==2.13.0" in c for c in calls if " -c " not in c)


@pytest.mark.parametrize("args, target", [((), "-e ."), (("--dev",), "-e .[dev,setfit]")])
def test_the_package_is_installed_under_a_torch_constraint(clone, tmp_path, args, target):
    python = _fake_python(tmp_path)
    calls = _setup(clone, python, *args)
    installs = [c for c in calls if c.endswith(target)]
    assert len(installs) == 1 and " -c " in installs[0]
    assert (clone / ".venv" / "constraints").read_text().split() == ["torch==2.13.0"]
    assert calls.index(installs[0]) > next(i for i, c in enumerate(calls) if c.endswith("torch==2.13.0"))
