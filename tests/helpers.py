"""Helpers shared by the tests (data builders, fresh-process and two-process runners)."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HF_LOWDATA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

POSITIVE = ["good", "great", "wonderful", "excellent", "lovely", "superb", "fine", "brilliant"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "boring", "dreadful", "weak", "horrible"]
NOUNS = ["movie", "film", "plot", "cast", "story", "ending", "script", "music"]


def load_script(name: str):
    """``scripts/<name>.py`` imported as a module (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    _fail_unless_ok(proc, "subprocess")
    return proc


def run_torchrun(worker: Path, *args: str, processes: int = 2, timeout: int = 600) -> str:
    """Run ``worker`` under torchrun with ``processes`` CPU processes (gloo) on a free port; return its stdout.

    The port is asked from the OS, so the test does not collide with anything else listening on the
    machine; the failure message carries both output streams.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1", "--master_port", str(port),
         str(worker), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"},
    )
    _fail_unless_ok(proc, "torchrun")
    return proc.stdout


def _fail_unless_ok(proc: subprocess.CompletedProcess, what: str) -> None:
    """Fail the test with both output streams when ``proc`` exited non-zero."""
    if proc.returncode != 0:
        pytest.fail(f"{what} failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}")
