"""Leftovers of killed processes: removed when their process has ended, never while it runs."""

from __future__ import annotations

import os
import subprocess
import sys

from hf_lowdata.leftovers import process_alive, remove_dead_leftovers


def age(path, seconds=7200):
    """Make ``path`` (and what is in it) look untouched for ``seconds``."""
    import time

    old = time.time() - seconds
    for item in [*path.rglob("*"), path] if path.is_dir() else [path]:
        os.utime(item, (old, old))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_a_dead_process_s_staged_files_are_removed(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    assert not process_alive(dead) and process_alive(alive)
    (tmp_path / f"shard.safetensors.tmp{dead}").write_bytes(b"half")
    (tmp_path / f"key.tmp-{dead}").mkdir()
    (tmp_path / f"key.tmp-{dead}" / "adapter_model.safetensors").write_bytes(b"x")
    (tmp_path / f"shard2.safetensors.tmp{alive}").write_bytes(b"being written")
    (tmp_path / "shard.safetensors").write_bytes(b"final")
    (tmp_path / "other.tmp").write_bytes(b"no pid: not ours to judge")
    for entry in tmp_path.iterdir():
        age(entry)
    (tmp_path / f"fresh.safetensors.tmp{dead}").write_bytes(b"another container's process, writing now")
    removed = remove_dead_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f"shard.safetensors.tmp{dead}", f"key.tmp-{dead}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"shard2.safetensors.tmp{alive}", "shard.safetensors", "other.tmp", f"fresh.safetensors.tmp{dead}"])
    (tmp_path / f"key.tmp-{dead}").mkdir()
    age(tmp_path / f"key.tmp-{dead}")
    assert remove_dead_leftovers(tmp_path, prefix="another") == []  # a prefix limits the sweep


def test_a_number_no_process_id_can_be_is_not_a_live_process():
    """os.kill raised OverflowError (not an OSError) for a foreign file named '*.tmp4000000000', and the sweep,
    and the feature cache's shard write with it, crashed."""
    assert process_alive(4_000_000_000) is False and process_alive(10**30) is False
