"""Where hf_lowdata keeps what it computes once and reuses: ``$HF_LOWDATA_CACHE`` or ``~/.cache/hf_lowdata``.

Converted vision models, cached token states, meta-trained SparseExpert adapters and model-folder
digests live in sub-folders of this one root.
"""

from __future__ import annotations

import os
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
