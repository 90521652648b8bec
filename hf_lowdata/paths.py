"""Where hf_lowdata keeps what it computes once and reuses: ``$HF_LOWDATA_CACHE`` or ``~/.cache/hf_lowdata``.

Converted vision models, cached token states, meta-trained SparseExpert adapters and model-folder
digests live in sub-folders of this one root.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that moves the cache root.
CACHE_ENV = "HF_LOWDATA_CACHE"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a kill at any moment leaves the old
    file or the new one, never a cut-off mix. Each call stages in a file of its own (``<name>.<random>.tmp<pid>``,
    which :mod:`hf_lowdata.leftovers` sweeps after a kill), so concurrent writers never share one."""
    import tempfile

    target = Path(path)
    handle, staged = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=f".tmp{os.getpid()}")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(staged, target)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """``override``, else ``$HF_LOWDATA_CACHE`` (when set and not empty), else ``~/.cache/hf_lowdata``."""
    base = override or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hf_lowdata"
    return Path(base).expanduser()
