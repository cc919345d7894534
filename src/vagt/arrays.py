"""Column helpers the engine's hot path shares, in numpy and plain Python.

Not pandas: it would cost each of the engine's processes 42 MB of resident memory (numpy
alone is 24), and memory is one of the performance targets. pandas stays for the reports.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Hashable, Iterable, Mapping
from typing import TypeVar

import numpy as np
import numpy.typing as npt

K = TypeVar("K", bound=Hashable)

# The column types the stages pass each other: one spelling, so a signature reads the same in
# every module.
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
Objs = npt.NDArray[np.object_]


def factorize(values: Collection[K]) -> tuple[npt.NDArray[np.intp], list[K]]:
    """Per value the index of its first appearance among the distinct values, and those
    values in that order (what `pandas.factorize` gives)."""
    uniques = list(dict.fromkeys(values))      # the loops in C: map, not a generator
    code = {v: k for k, v in enumerate(uniques)}
    return np.fromiter(map(code.__getitem__, values), dtype=np.intp, count=len(values)), uniques


def positions(index: Mapping[K, int], keys: Iterable[K], count: int) -> npt.NDArray[np.int64]:
    """Each key's position in `index`; -1 for a key it does not hold."""
    return np.fromiter(map(index.get, keys, itertools.repeat(-1)), dtype=np.int64, count=count)
