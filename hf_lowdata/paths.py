"""Where hf_lowdata keeps what it computes once and reuses: ``$HF_LOWDATA_CACHE`` or ``~/.cache/hf_lowdata``.

Converted vision models, cached token states, meta-trained SparseExpert adapters and model-folder
digests live in sub-folders of this one root. Also here: writing files atomically, and the lock that keeps a
second process out of an output folder one is writing (:func:`locked_folder`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

#: Environment variable that moves the cache root.
CACHE_ENV = "HF_LOWDATA_CACHE"
#: The folder of labelled datasets (``<name>/train.jsonl``, ...) that SparseExpert meta-trains on and the quick
#: benchmark reads, when not given on the command line.
DATA_DIR_ENV = "HF_LOWDATA_DATA_DIR"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, synced to disk, and a rename: a kill (or a crash of
    the machine) at any moment leaves the old file or the new one, never a cut-off mix or an empty file. Each call stages in a file of its own (``<name>.<random>.tmp<pid>``),
    so concurrent writers never share one; the file gets the permissions a plain write would (``0o666`` less the
    umask), and copies staged by killed writers are swept (:mod:`hf_lowdata.leftovers`)."""
    import secrets

    from .leftovers import remove_dead_leftovers

    target = Path(path)
    staged = target.with_name(f"{target.name}.{secrets.token_hex(4)}.tmp{os.getpid()}")
    handle = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename: a crash never leaves the new name on an empty file
        os.replace(staged, target)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    remove_dead_leftovers(target.parent, prefix=target.name + ".")


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """``override``, else ``$HF_LOWDATA_CACHE`` (when set and not empty), else ``~/.cache/hf_lowdata``."""
    base = override or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hf_lowdata"
    return Path(base).expanduser()


class FolderBusyError(RuntimeError):
    """Another live process holds the folder's lock (:func:`locked_folder`)."""


#: The lock file :func:`locked_folder` holds, in the locked folder.
LOCK_FILE = ".lock"


@contextmanager
def locked_folder(folder: str | os.PathLike, advice: str, *, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) while the body runs; a folder another process holds
    is a :class:`FolderBusyError` at once, naming the folder and that process and followed by ``advice``.

    The lock is an OS file lock (``flock``) on ``folder/.lock``, which records the holder's process id: the OS
    releases it when the process ends in any way, so a killed writer never leaves a lock that blocks. The lock is
    not re-entrant: a second ``locked_folder`` on the same folder, in the same process too, is refused.
    ``remove``: leave no trace on release: the lock file is deleted (before the lock is let go; a process that
    opened it meanwhile notices and takes a new one), and the folder too when the lock made it and it is empty.
    A killed holder leaves its lock file, which the next holder takes over. Where ``fcntl`` does not exist
    (Windows) the body runs unlocked.
    """
    path = Path(folder)
    created = not path.is_dir()
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        fcntl = None
    while True:
        path.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover - not POSIX
            handle = None
            break
        try:
            handle = open(path / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - closed on release below
        except FileNotFoundError:  # the folder was removed by a holder letting go meanwhile: make it again
            continue
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise FolderBusyError(f"{path} is being written by {holder}. {advice}") from None
        except BaseException:
            handle.close()
            raise
        try:
            current = os.path.samestat(os.fstat(handle.fileno()), os.stat(path / LOCK_FILE))
        except FileNotFoundError:
            current = False
        if current:
            break
        handle.close()  # deleted by the holder letting go after this process opened it: take the new one
    try:
        if handle is not None:
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()}")
            handle.flush()
        yield
    finally:
        if remove:
            (path / LOCK_FILE).unlink(missing_ok=True)
            if created:
                with suppress(OSError):  # not empty: it holds what the body wrote
                    path.rmdir()
        if handle is not None:
            handle.close()  # (releases the lock)
