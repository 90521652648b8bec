"""hf_lowdata.bench.measure: the scores every record and evaluation uses."""

from __future__ import annotations

import pytest

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
