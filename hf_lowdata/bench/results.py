"""The benchmark's result file: one JSON object per run, appended and fsynced as each run ends.

A kill at any moment loses at most the run in flight: a line is written in one ``write`` call and
flushed to disk before the next run starts; a partial last line (a kill during the write) is
ignored on reading and cut off before the next append. Derived files (summary, plots) are written
to a temporary name and renamed, so a reader never sees half of one. One process at a time writes an
output folder (:func:`locked_output`): two benchmarks appending to one ``runs.jsonl`` would both run
the same pending runs and interleave their reports.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..paths import FolderBusyError, locked_folder


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a JSONL file.

    A truncated last line (a kill mid-write) is skipped silently: its run is redone on ``--resume``.
    Any other unreadable line is skipped with a warning naming it, since no kill writes one.
    """
    file = Path(path)
    if not file.exists():
        return []
    records = []
    text = file.read_text(encoding="utf-8", errors="replace")
    # records end at "\n" only (as repair_tail and append_record count them): str.splitlines also breaks at
    # U+2028, U+0085, ..., which JSON written without ASCII escapes (ensure_ascii=False) keeps raw inside strings
    lines = text.removesuffix("\n").split("\n") if text else []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number < len(lines):
            warnings.warn(f"{file}, line {number} is not a run record (damaged?); it is skipped and its run, if it "
                          "had one, is done again on --resume.", UserWarning, stacklevel=2)
    return records


def repair_tail(path: str | os.PathLike) -> None:
    """Make the file end on a line break so the next append starts on a fresh line.

    A last line without its newline is kept (the newline is added) when it is a whole record, as
    :func:`read_records` reads it so (a file edited by hand or written by another tool may lack the
    final newline); it is cut when it is partial (a kill during the write), as its run is redone.
    """
    file = Path(path)
    if not file.exists() or file.stat().st_size == 0:
        return
    data = file.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    try:
        complete = isinstance(json.loads(data[cut:].decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        complete = False
    with open(file, "r+b") as fh:
        if complete:
            fh.seek(0, os.SEEK_END)
            fh.write(b"\n")
        else:
            fh.truncate(cut)
        fh.flush()
        os.fsync(fh.fileno())


def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record as a line and fsync it."""
    line = json.dumps(record, sort_keys=True, default=jsonable) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def finished_keys(records: Iterable[dict[str, Any]]) -> set[str]:
    """Keys of runs whose latest record is a success (failed runs are retried on resume). The latest, as the
    summary counts each run by its latest record: a run recorded ok, then failed (written twice by an older
    version) is shown as failed there, and is therefore done again rather than skipped as finished."""
    latest: dict[str, Any] = {}
    for r in records:
        if "run_key" in r:
            latest[r["run_key"]] = r.get("status")
    return {key for key, status in latest.items() if status == "ok"}


#: Another live process holds the output folder's lock (the shared folder lock's error, under the benchmark's name).
OutputFolderBusyError = FolderBusyError


@contextmanager
def locked_output(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) while the body runs
    (:func:`~hf_lowdata.paths.locked_folder`: released however the process ends, so a killed benchmark never leaves
    a lock that blocks; the lock file stays)."""
    with locked_folder(folder, "Wait for it to finish (then --resume adds to it) or choose another --out; nothing "
                               "was changed."):
        yield


def jsonable(value: Any) -> Any:
    """``json.dumps``' ``default`` for run records: numpy and torch scalars, sets, tuples and paths."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
