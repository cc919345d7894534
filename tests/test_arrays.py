"""The column helpers of the hot path (`vagt.arrays`) give what pandas gave."""

from __future__ import annotations

import numpy as np

from vagt.arrays import factorize, positions


def test_factorize_numbers_the_distinct_values_in_order_of_first_appearance() -> None:
    codes, uniques = factorize(np.array(["spo2", "pulse", "spo2", "battery", "pulse"],
                                        dtype=object))
    assert uniques == ["spo2", "pulse", "battery"]
    assert codes.tolist() == [0, 1, 0, 2, 1]
    assert codes.dtype == np.intp


def test_factorize_of_nothing_is_empty() -> None:
    codes, uniques = factorize([])
    assert codes.tolist() == [] and uniques == []


def test_positions_are_minus_one_for_keys_not_held() -> None:
    index = {"OXI-0001": 0, "ALM-0001": 1}
    assert positions(index, ["ALM-0001", "NEW-0001", "OXI-0001"], 3).tolist() == [1, -1, 0]
