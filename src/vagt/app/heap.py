"""The garbage collector's and the C allocator's settings for vagt's long-running processes.

A batch makes tens of thousands of short-lived containers (decoded rows, tuples for COPY,
paho's packets). With CPython's defaults (a young collection every 700 new containers, and
a full one every ~100 young ones) the collector ran thousands of times per backlog, and each
full collection walked everything loaded at start: the fleet's 100,000 devices, the rules,
every module. Measured while a backlog drained (100,000 messages, alternating runs, ratio to
the bare consumer): 0.68 and 0.72 with the defaults, 0.84 and 0.89 with `settle()` in the
engine's process and the receiver's; the engine's CPU per message fell by a quarter.

Nothing here frees less: what start-up loaded lives as long as the process anyway, and
garbage that is not cyclic is freed by reference counting at once, as before.

glibc's malloc gives each thread that allocates an arena of its own, up to 8 a core (16
here), and an arena keeps what was freed in it for the threads attached to it. The
engine's threads (the lanes, the rules' timer, the table upkeep, the metrics' and the API's
servers, the connection pool's workers, libpq and numpy outside the GIL) filled all 16; at
the end of a soak (benchmarks/soak.py --probe, 8 h of the fleet's day in 13.5 min) they
held 75 MB free, 14 arenas of a few MB each nearly all free. With two arenas a process
(`limit_arenas`) the engine ended at 250 MB against 300, the alarm lane at 67 against 76
(352 MB against 412 for the three processes), alarms as fast; a drain's CPU per message
within the hour's noise (157 against 142 ms per 1,000, runs not alternated; see
docs/performance.md, "ninth session").

glibc gives an allocation bigger than its mmap threshold a mapping of its own, returned to
the system when freed; but the threshold rises to the largest such allocation freed so far
(up to 32 MB). So after the first, the fleet-sized arrays that batches and ticks make and
free (800 KB each at 100,000 devices) come from the arenas, and what they leave free there
between longer-lived allocations stays resident. At the end of a soak 39 MB of the engine's
arenas were free (a step of 25 MB after the first forced tick), and `malloc_trim` gave 37
back. The engine's rules timer trims after every tick (`trim`: a few ms every 15 s): 314 MB
at a soak's end against 341. A fixed threshold of 512 KB (MALLOC_MMAP_THRESHOLD_) did as
much, 313 MB, but maps and faults in every such array again (docs/performance.md, "twelfth
session").
"""

from __future__ import annotations

import ctypes
import gc
import os

YOUNG_THRESHOLD = 50_000   # new containers between young collections (CPython: 700)
OLDER_THRESHOLD = 20       # collections of one generation between those of the next (10)
ARENAS = 2                 # glibc malloc's arenas a process (glibc: 8 a core)
_M_ARENA_MAX = -8          # mallopt's parameter (malloc.h)


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Called first in each vagt process (`vagt.app.cli`, `app.child`), before it starts
    threads: its threads share `arenas` of glibc's arenas, and what one frees another uses.
    Left to the environment where it says (MALLOC_ARENA_MAX, or GLIBC_TUNABLES'
    glibc.malloc.arena_max). Whether it was set."""
    if _LIBC is None or _set_by_environment():
        return False
    return bool(_LIBC.mallopt(_M_ARENA_MAX, arenas))


def _set_by_environment() -> bool:
    """glibc took the limit from the environment (a value it accepts: a whole number ≥ 1)."""
    value = os.environ.get("MALLOC_ARENA_MAX", "").strip()
    return (value.isdigit() and int(value) >= 1) \
        or "glibc.malloc.arena_max=" in os.environ.get("GLIBC_TUNABLES", "")


def settle() -> None:
    """Call once start-up has loaded what lasts (the fleet, the rules, the modules): collect
    what start-up left over, keep the rest out of every later collection (`gc.freeze`), and
    collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)


def release() -> None:
    """Call when what start-up loaded has been let go for good (the alarm lane's pipeline
    loaded again): collect it too, though `settle` froze it, freeze what lasts again, and
    give the allocator's free pages back to the system (glibc returns only what is free at
    the top of a heap, and keeps the rest counted in the process's resident memory)."""
    gc.unfreeze()
    settle()
    trim()


def trim() -> None:
    """Give the pages glibc holds free in its arenas back to the system (`malloc_trim`; it
    otherwise gives back only what is free at the top of a heap)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim    # noqa: B018  (glibc only: musl and macOS have none)
        libc.mallopt        # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()
