"""The collector's settings for vagt's processes (vagt.app.heap)."""

from __future__ import annotations

import gc
import weakref

from vagt.app import heap


def test_what_start_up_loaded_is_left_out_of_later_collections_and_young_ones_come_less_often():
    before = gc.get_threshold()
    loaded = [{"device": i} for i in range(1000)]     # the fleet, say: lives on
    try:
        heap.settle()
        assert gc.get_freeze_count() >= len(loaded)
        collected = {id(o) for o in gc.get_objects()}  # the generations a collection walks
        assert not any(id(x) in collected for x in loaded)
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, heap.OLDER_THRESHOLD,
                                      heap.OLDER_THRESHOLD)
        cycle: list[object] = []
        cycle.append(cycle)                            # garbage made after start-up
        del cycle
        assert gc.collect() >= 1                       # is still collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


class _Loaded:
    """Something start-up loaded that refers back to itself (a pipeline and its parts)."""

    def __init__(self) -> None:
        self.me = self


def test_what_start_up_loaded_and_later_let_go_is_collected_and_what_lasts_frozen_again():
    before = gc.get_threshold()
    old, lasting = _Loaded(), [{"module": i} for i in range(100)]
    gone = weakref.ref(old)
    try:
        heap.settle()
        del old                     # frozen, and a cycle: no collection finds it
        gc.collect()
        assert gone() is not None
        heap.release()              # the alarm lane's pipeline loaded again
        assert gone() is None
        collected = {id(o) for o in gc.get_objects()}
        assert not any(id(x) in collected for x in lasting)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
