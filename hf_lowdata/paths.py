"""Where hf_lowdata keeps what it computes once and reuses: ``$HF_LOWDATA_CACHE`` or ``~/.cache/hf_lowdata``.

Converted vision models, cached token states, meta-trained SparseExpert adapters and model-folder
digests live in sub-folders of this one root.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that moves the cache root.
CACHE_ENV = "HF_LOWDATA_CACHE"


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """``override``, else ``$HF_LOWDATA_CACHE`` (when set and not empty), else ``~/.cache/hf_lowdata``."""
    base = override or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hf_lowdata"
    return Path(base).expanduser()
