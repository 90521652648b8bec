"""Clean up what a killed process leaves behind: its private temporary files and folders.

Writers here stage into ``<name>.tmp<pid>`` (or ``.tmp-<pid>``) and rename into place, so a kill
never leaves a half-written result, but it does leave the staged copy. A later process removes the
ones whose process is gone, never one a running process is still writing.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_PID = re.compile(r"\.tmp-?(\d+)$")


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (ours or another user's)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # pragma: no cover - platforms without signal 0: keep the file
        return True
    return True


def remove_dead_leftovers(folder: str | os.PathLike, prefix: str = "") -> list[Path]:
    """Delete ``folder``'s entries named ``<prefix>...tmp<pid>`` whose process has ended; return them."""
    path = Path(folder)
    if not path.is_dir():
        return []
    removed = []
    for entry in path.iterdir():
        match = _PID.search(entry.name)
        if match is None or not entry.name.startswith(prefix) or process_alive(int(match.group(1))):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
