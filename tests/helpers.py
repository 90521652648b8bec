"""Helpers shared by the tests (data builders, fresh-process runner)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HF_LOWDATA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

POSITIVE = ["good", "great", "wonderful", "excellent", "lovely", "superb", "fine", "brilliant"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "boring", "dreadful", "weak", "horrible"]
NOUNS = ["movie", "film", "plot", "cast", "story", "ending", "script", "music"]


def toy_sentences(n: int, seed: int) -> list[dict]:
    """Two-class toy sentiment data a tiny model can fit: the adjective decides the label."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        adj = rng.choice(POSITIVE if label else NEGATIVE)
        rows.append({"text": f"the {rng.choice(NOUNS)} was {adj} and {rng.choice(NOUNS)} {i}", "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_python(code: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (the same venv); fail with its output if it fails."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"subprocess failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}")
    return proc
