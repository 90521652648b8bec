"""Measurements the benchmark records: metrics, peak memory, versions."""

from __future__ import annotations

import os
import platform
import resource
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Fraction of ``predictions`` equal to ``labels``, one prediction per label.

    A column of predictions (shape ``(n, 1)``) counts as ``n`` predictions; any other shape or count that
    differs from the labels' raises, since numpy would broadcast it (a column against the labels compares every
    pair, one prediction is compared with every label) and return a wrong score without a word.
    """
    y, p = np.asarray(labels), np.asarray(predictions)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if y.ndim != 1 or p.ndim != 1 or len(y) != len(p):
        raise ValueError(f"{p.shape[0] if p.ndim else 1} predictions (shape {p.shape}) for {len(y)} labels "
                         f"(shape {y.shape}): one class id per example is needed.")
    return float((y == p).mean())


def macro_f1(labels: Sequence[int], predictions: Sequence[int], num_labels: int) -> float:
    """Macro-averaged F1 over the classes that occur among ``labels`` or ``predictions``.

    A class that occurs but is never predicted correctly scores 0; a class absent from both (an
    evaluation file without it) is left out rather than counted as 0 (scikit-learn's default).
    ``num_labels`` bounds the ids.
    """
    from sklearn.metrics import f1_score

    present = sorted({int(v) for v in labels} | {int(v) for v in predictions})
    if present and not 0 <= present[0] <= present[-1] < num_labels:
        raise ValueError(f"Class ids {present} outside 0..{num_labels - 1}.")
    return float(f1_score(labels, predictions, labels=present, average="macro", zero_division=0))


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _lifetime_peak_rss_bytes() -> int:
    """This process's lifetime peak RSS from ``getrusage``, in bytes: ``ru_maxrss`` is in bytes on macOS
    and in kilobytes on Linux and the BSDs (getrusage(2) differs between them)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def release_freed_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing
    more where there is no glibc).

    glibc keeps memory that tensors freed in the middle of its heap: after SparseExpert's meta-training a
    benchmark process stayed at 5.3 GB resident, and every later run (the probe too) was recorded with that
    peak. Measured on SST-2 k = 8: 995 -> 594 MB after SetFit, 1,104 -> 736 MB after TwinTurbo.
    """
    import contextlib
    import ctypes
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # a libc other than glibc (musl): nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak resident memory (and peak CUDA memory) of this process while the block runs.

    Samples ``/proc/self/statm`` every 20 ms in a thread (``ru_maxrss`` is a lifetime peak, useless
    for one run among many); falls back to ``ru_maxrss`` where /proc is missing. Memory that earlier
    blocks freed is handed back first (:func:`release_freed_memory`), so the figure is this block's
    peak plus what the process really holds (models and caches shared between runs), not the heap
    an earlier run left behind.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_rss = 0
        self.peak_cuda = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        release_freed_memory()
        self.peak_rss = _rss_bytes() or 0
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        except Exception:  # noqa: BLE001
            pass
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _rss_bytes()
            if rss is not None:
                self.peak_rss = max(self.peak_rss, rss)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        rss = _rss_bytes()
        if rss is None:
            self.peak_rss = _lifetime_peak_rss_bytes()
        else:
            self.peak_rss = max(self.peak_rss, rss)
        try:
            import torch

            if torch.cuda.is_available():
                self.peak_cuda = int(torch.cuda.max_memory_allocated())
        except Exception:  # noqa: BLE001
            pass


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def environment() -> dict[str, Any]:
    """Versions and machine, recorded with every run."""
    import accelerate
    import peft
    import torch
    import transformers

    from .. import __version__

    return {
        "hf_lowdata": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
