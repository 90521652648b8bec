"""The scripts write their result files atomically (hf_lowdata.paths.atomic_write_text): Path.write_text
truncates the last good file first, so a kill during the write left a cut-off JSON file."""

from __future__ import annotations

import pytest

from tests.helpers import REPO_ROOT

WRITERS = [*sorted((REPO_ROOT / "scripts").glob("*.py")), REPO_ROOT / "spaces_demo" / "benchmark_quick.py"]


@pytest.mark.parametrize("path", WRITERS, ids=lambda p: p.name)
def test_no_script_writes_a_file_in_place(path):
    lines = [f"{path.name}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), start=1)
             if ".write_text(" in line]
    assert not lines, "write with hf_lowdata.paths.atomic_write_text instead:\n" + "\n".join(lines)
