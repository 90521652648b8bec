"""hf_lowdata.bench.measure: the scores every record and evaluation uses."""

from __future__ import annotations

import sys

import pytest

from hf_lowdata.bench import measure
from hf_lowdata.bench.measure import accuracy, macro_f1


def test_macro_f1_averages_the_classes_that_occur():
    assert macro_f1([0, 1, 2], [0, 1, 2], 3) == 1.0
    # class 2 is in neither the labels nor the predictions (an evaluation file without it): left out
    assert macro_f1([0, 0, 1, 1], [0, 0, 1, 1], 3) == 1.0
    # a class that occurs but is never predicted right scores 0: (1 + 2/3 + 0) / 3
    assert macro_f1([0, 1, 2], [0, 1, 1], 3) == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert accuracy([0, 1, 2], [0, 1, 1]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="outside 0..1"):
        macro_f1([0, 2], [0, 1], 2)


@pytest.mark.parametrize(("platform", "ru_maxrss"), [("darwin", 300 * 2**20), ("linux", 300 * 2**10)],
                         ids=["macos-bytes", "linux-kilobytes"])
def test_peak_memory_without_proc_reads_ru_maxrss_in_the_platform_unit(monkeypatch, platform, ru_maxrss):
    """Where /proc is missing, ``ru_maxrss`` is the peak: bytes on macOS, kilobytes on Linux (getrusage(2))."""
    import types

    import torch  # noqa: F401 - imported by PeakMemory; imported here, before sys.platform is changed

    usage = types.SimpleNamespace(ru_maxrss=ru_maxrss)
    monkeypatch.setattr(measure, "_rss_bytes", lambda: None)  # no /proc/self/statm
    monkeypatch.setattr(measure, "resource", types.SimpleNamespace(getrusage=lambda who: usage, RUSAGE_SELF=0))
    monkeypatch.setattr(sys, "platform", platform)
    with measure.PeakMemory() as memory:
        pass
    assert memory.peak_rss == 300 * 2**20  # a 300 MiB process on either platform


def test_accuracy_never_broadcasts_predictions_against_the_labels():
    """numpy broadcast a column of predictions (shape (n, 1)) against the labels, comparing every pair, and a single
    prediction against every label: both gave a wrong accuracy (0.5 for four right answers) without an error."""
    import numpy as np

    labels = [0, 1, 1, 0]
    assert accuracy(labels, np.array(labels)[:, None]) == 1.0  # a column: one prediction per example
    for predictions in ([0], [0, 1, 1], np.zeros((4, 2), dtype=int)):
        with pytest.raises(ValueError, match="for 4 labels"):
            accuracy(labels, predictions)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap (malloc_trim): Linux only")
def test_peak_memory_does_not_count_the_heap_an_earlier_block_freed():
    """Every run after SparseExpert's meta-training was recorded at its 5.3 GB: glibc kept the freed heap."""
    import torch

    tensors = [torch.empty(256) for _ in range(150_000)]  # 1 KiB each, from malloc's heap (not mmap)
    kept = tensors[::16]  # a few live ones in between: the heap's top cannot simply shrink
    del tensors
    before = measure._rss_bytes()
    with measure.PeakMemory() as memory:
        pass
    assert memory.peak_rss < before - 80 * 2**20, (memory.peak_rss, before)
    assert len(kept) == 150_000 // 16
