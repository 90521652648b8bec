"""Clean up what a killed process leaves behind: its private temporary files and folders.

Writers here stage into ``<name>.tmp<pid>`` (or ``.tmp-<pid>``) and rename into place, so a kill
never leaves a half-written result, but it does leave the staged copy. A later process removes the
ones whose process is gone and that nothing has touched for an hour: a cache folder shared with
containers or other machines holds staged files of processes whose ids mean nothing here, and a
writer takes seconds, not an hour, between staging and renaming.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

_PID = re.compile(r"\.tmp-?(\d+)$")


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (ours or another user's)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: a number no process id can be (a foreign file)
        return False
    except OSError:  # PermissionError: another user's process; elsewhere: no signal 0, so keep the file
        return True
    return True


def untouched_for(path: Path, seconds: float) -> bool:
    """Whether ``path`` (and, for a folder, everything in it) was last modified over ``seconds`` ago."""
    newest = 0.0
    try:
        for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
            newest = max(newest, item.stat().st_mtime)
    except OSError:  # changing under us: someone is at work on it
        return False
    return time.time() - newest > seconds


def remove_dead_leftovers(folder: str | os.PathLike, prefix: str = "", min_age: float = 3600.0) -> list[Path]:
    """Delete ``folder``'s entries named ``<prefix>...tmp<pid>`` whose process has ended and that were not
    modified for ``min_age`` seconds; return them."""
    path = Path(folder)
    if not path.is_dir():
        return []
    removed = []
    for entry in path.iterdir():
        match = _PID.search(entry.name)
        if (match is None or not entry.name.startswith(prefix) or process_alive(int(match.group(1)))
                or not untouched_for(entry, min_age)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
