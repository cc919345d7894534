"""The collector's settings for vagt's processes (vagt.app.heap)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref

import pytest

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


ARENAS_OF_EIGHT_THREADS = """
import ctypes, sys, tempfile, threading
from vagt.app import heap

print(heap.limit_arenas())
both = threading.Barrier(9)


def work():
    held = [bytearray(4096) for _ in range(10)]   # malloc's, in this thread
    both.wait()                                   # all eight alive at once
    both.wait()


threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
both.wait()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile() as f:
    out = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, out)
    libc.fclose(out)
    print(open(f.name).read().count("<heap nr="))
both.wait()
"""


def arenas_of_eight_threads(**env: str) -> tuple[bool, int]:
    """In a process of its own (glibc's allocator as a process starts): whether
    `limit_arenas` set the limit, and how many arenas eight threads allocating at once used."""
    environment = {k: v for k, v in os.environ.items()   # glibc's malloc, as it comes
                   if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES", "LD_PRELOAD")} | env
    out = subprocess.run([sys.executable, "-c", ARENAS_OF_EIGHT_THREADS], env=environment,
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(heap._LIBC is None, reason="glibc's allocator only (Linux with glibc)")
def test_the_threads_of_a_process_share_two_of_glibcs_arenas():
    # the engine's many threads each held free memory of its own arena: 75 MB at a soak's end
    assert arenas_of_eight_threads() == (True, heap.ARENAS)
    # what it would be without: an arena a thread (and the main thread's)
    assert arenas_of_eight_threads(MALLOC_ARENA_MAX="16") == (False, 9)


@pytest.mark.skipif(heap._LIBC is None, reason="glibc's allocator only (Linux with glibc)")
def test_an_operators_own_arena_setting_is_left_as_it_is():
    assert arenas_of_eight_threads(MALLOC_ARENA_MAX="4") == (False, 4)
    assert arenas_of_eight_threads(GLIBC_TUNABLES="glibc.malloc.arena_max=3") == (False, 3)
    # one glibc refuses (its least is 1): its default would apply, so vagt's does
    assert arenas_of_eight_threads(MALLOC_ARENA_MAX="0") == (True, heap.ARENAS)


FREED_BETWEEN_KEPT = """
import numpy as np
from vagt.app import heap


def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20


big = np.ones(2**20)
del big               # 8 MB freed: glibc serves anything up to that size from its arenas now
kept, freed = [], []
for _ in range(100):
    freed.append(np.ones(100_000))     # 800 KB: a fleet-sized array of a batch or a tick
    kept.append(np.ones(1_000))        # and something that lasts, after it
before = resident_mb()
del freed[:]
after_free = resident_mb()
heap.trim()
print(before, after_free, resident_mb())
"""


@pytest.mark.skipif(heap._LIBC is None, reason="glibc's allocator only (Linux with glibc)")
def test_memory_freed_between_what_lasts_goes_back_to_the_system_once_trimmed():
    environment = {k: v for k, v in os.environ.items()   # glibc's malloc, as it comes
                   if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", FREED_BETWEEN_KEPT], env=environment,
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    before, after_free, trimmed = map(float, out)
    assert before - after_free < 10      # freed, but held by glibc: still resident
    assert after_free - trimmed > 60     # of the 80 MB, given back by the trim
