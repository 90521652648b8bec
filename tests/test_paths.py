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
    import os

    target = tmp_path / "summary.md"
    atomic_write_text(target, "old")
    real_fdopen = os.fdopen

    class CutShort:
        def __init__(self, *args, **kwargs):
            self.file = real_fdopen(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, text):
            self.file.write(text[:2])  # part of the bytes reach the disk, then the write fails
            raise OSError("disk full")

    monkeypatch.setattr(os, "fdopen", CutShort)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new contents")
    monkeypatch.undo()
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.md"]
    atomic_write_text(target, "new contents")
    assert target.read_text() == "new contents" and [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def test_concurrent_writers_stage_in_files_of_their_own(monkeypatch, tmp_path):
    """Two writers of one path shared '<name>.tmp': one renamed the other's half-written file into place and the
    other's rename failed. Each call now stages in its own file, named so that the leftover sweep knows it."""
    import os
    import re

    from hf_lowdata.leftovers import _PID

    staged: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (staged.append(os.path.basename(src)), real_replace(src, dst)))
    for text in ("first", "second", "third"):
        atomic_write_text(tmp_path / "config.json", text)
    assert len(set(staged)) == 3 and all(re.match(r"config\.json\..+\.tmp\d+$", name) for name in staged)
    assert all(int(_PID.search(name).group(1)) == os.getpid() for name in staged)
    assert (tmp_path / "config.json").read_text() == "third" and len(list(tmp_path.iterdir())) == 1


def test_a_written_file_has_the_permissions_of_a_plain_write(tmp_path):
    """Staging through tempfile.mkstemp made every summary.md and config owner-only (0600)."""
    import os
    import stat

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "summary.md", "x")
        (tmp_path / "plain.md").write_text("x")
    finally:
        os.umask(umask)
    mode = stat.S_IMODE((tmp_path / "summary.md").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.md").stat().st_mode) == 0o644


def test_copies_staged_by_killed_writers_are_swept(tmp_path):
    """Each write stages in its own file, so a killed writer's copy is never reused: the next write removes it."""
    from tests.test_leftovers import _dead_pid, age

    dead = tmp_path / f"summary.md.0a1b2c3d.tmp{_dead_pid()}"
    dead.write_text("half")
    age(dead)
    recent = tmp_path / f"summary.md.4e5f6a7b.tmp{_dead_pid()}"  # touched within the hour: may be in use
    recent.write_text("half")
    other = tmp_path / "runs.jsonl.tmp1"  # another file's staging: not this write's to judge
    other.write_text("x")
    age(other)
    atomic_write_text(tmp_path / "summary.md", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["summary.md", recent.name, other.name])


def test_the_staged_text_is_synced_to_disk_before_the_rename(monkeypatch, tmp_path):
    """Without an fsync before the rename, a crash of the machine could leave the new name on an empty file (the
    rename reached the disk, the data did not): a run_config.json or a benchmark's config.json that then reads as
    nothing."""
    import os

    events = []
    fsync, replace = os.fsync, os.replace

    def synced(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd))
        fsync(fd)

    def renamed(src, dst):
        events.append(("replace", str(src)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(os, "replace", renamed)
    atomic_write_text(tmp_path / "config.json", "{}")
    assert [kind for kind, _ in events] == ["fsync", "replace"]
    assert events[0][1] == events[1][1] or not os.path.exists("/proc/self/fd")  # the staged file itself was synced
    assert (tmp_path / "config.json").read_text() == "{}"


def test_a_folder_lock_refuses_a_second_holder_and_can_leave_no_trace(tmp_path):
    """The benchmark's output lock, shared with ``hf-lowdata train``: one holder at a time, named to the refused
    one; with ``remove`` its file goes on release, and the folder too when the lock made it and it stayed empty."""
    import os

    from hf_lowdata.paths import LOCK_FILE, FolderBusyError, locked_folder

    folder = tmp_path / "new" / "out"
    with locked_folder(folder, "Try later."):
        assert (folder / LOCK_FILE).read_text() == f"process {os.getpid()}"
        with pytest.raises(FolderBusyError, match=rf"{folder} is being written by process {os.getpid()}\. Try later\."), \
                locked_folder(folder, "Try later."):
            pass
    assert (folder / LOCK_FILE).is_file()  # kept without remove (the benchmark's)
    with locked_folder(folder, "", remove=True):
        (folder / "result.txt").write_text("kept")
    assert sorted(p.name for p in folder.iterdir()) == ["result.txt"]
    other = tmp_path / "other"
    with pytest.raises(KeyError), locked_folder(other, "", remove=True):
        raise KeyError("failed")
    assert not other.exists()  # made by the lock and left empty
