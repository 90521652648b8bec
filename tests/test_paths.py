"""The cache root and the atomic text write every results and config file goes through."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_lowdata.paths import atomic_write_text, cache_root


def test_cache_root_follows_override_then_environment_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_LOWDATA_CACHE", str(tmp_path / "env"))
    assert cache_root(tmp_path / "mine") == tmp_path / "mine"
    assert cache_root() == tmp_path / "env"
    monkeypatch.setenv("HF_LOWDATA_CACHE", "")  # set but empty means unset (it meant the working folder)
    assert cache_root() == Path.home() / ".cache" / "hf_lowdata"


def test_a_write_cut_short_leaves_the_previous_file_whole(monkeypatch, tmp_path):
    target = tmp_path / "summary.md"
    atomic_write_text(target, "old")
    real_write = Path.write_text

    def cut_short(self, text, *args, **kwargs):
        real_write(self, text[:2], *args, **kwargs)  # part of the bytes reach the disk, then the process dies
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", cut_short)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new contents")
    monkeypatch.undo()
    assert target.read_text() == "old"
    atomic_write_text(target, "new contents")
    assert target.read_text() == "new contents" and not list(tmp_path.glob("*.tmp"))
