"""A memory probe around a module run as a program (the engine: `vagt.app.cli run`), for
benchmarks/memory.py; nothing of it is in vagt itself.

    python -m benchmarks.memtrace DIR FRAMES -m MODULE [ARGS...]

runs MODULE as `python -m MODULE ARGS...` would, with a thread that answers requests written
to DIR/request (a label, one line): it writes DIR/LABEL.json with the process's resident
memory, glibc's allocator totals (`mallinfo2`: what its arenas hold in use and free) and its
heaps (`malloc_info`), pymalloc's (`sys._debugmallocstats`), its TCP connections by the
port at their other end, the rules' state arrays (bytes, and the rules holding most), and
with FRAMES > 0 (tracemalloc on from the start, FRAMES frames a trace) the largest
allocation sites then. A label that
begins with `gc` also runs a full collection and counts what it found unreachable and what
is alive after it, by type; one that begins with `trim` calls glibc's `malloc_trim(0)`;
one that begins with `pools` first closes and opens again every psycopg pool's connections;
`tracestart-N` turns tracemalloc on, N frames a trace (the engine at its own speed before).
With FRAMES > 0 it also reports by itself each time the traced memory grows 10 % past the
last report (DIR/peak.json): what was held near the peak.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import gc
import json
import os
import re
import runpy
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TOP = 40                 # allocation sites kept per report
PEAK_STEP = 1.10         # a new peak report when the traced memory is 10 % over the last one


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2
_libc.open_memstream.restype = ctypes.c_void_p
_libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p),
                                 ctypes.POINTER(ctypes.c_size_t)]
_libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
_libc.fclose.argtypes = [ctypes.c_void_p]


def _status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, VmHWM in kB."""
    text = Path("/proc/self/status").read_text()
    return {k: int(v) for k, v in re.findall(r"^(VmRSS|RssAnon|RssFile|VmHWM):\s+(\d+) kB",
                                              text, re.M)}


def _malloc() -> dict[str, Any]:
    m = _libc.mallinfo2()
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    stream = _libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    _libc.malloc_info(0, stream)
    _libc.fclose(stream)
    xml = ctypes.string_at(buf, size.value).decode()
    heaps = re.findall(r'<heap nr="(\d+)">(.*?)</heap>', xml, re.S)
    return {
        "arena_bytes": m.arena, "mmap_bytes": m.hblkhd, "in_use_bytes": m.uordblks,
        "free_bytes": m.fordblks, "top_releasable_bytes": m.keepcost,
        # per heap (arena): the memory it holds from the system now, and what of it is free
        "heaps": [{"nr": int(nr),
                   "system": int(re.search(r'<system type="current" size="(\d+)"', body)[1]),
                   "free": sum(int(x) for x in re.findall(
                       r'<total type="(?:fast|rest)" count="\d+" size="(\d+)"', body))}
                  for nr, body in heaps],
    }


def _sockets() -> dict[str, int]:
    """The process's TCP connections by the port at their other end (PostgreSQL's, the
    broker's): a pool that grew keeps each connection's libpq buffers as large as the
    largest message it carried."""
    mine = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                mine.add(target[8:-1])
    ports: collections.Counter[str] = collections.Counter()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]:
                f = line.split()
                if f[9] in mine and f[3] == "01":      # established
                    ports[str(int(f[2].rsplit(":", 1)[1], 16))] += 1
    return dict(ports)


def _pymalloc() -> dict[str, int]:
    """pymalloc's own totals (`sys._debugmallocstats`, which writes to the C stderr: caught
    in a file for the moment, a log line of another thread then is lost)."""
    with tempfile_fd() as (fd, path):
        saved = os.dup(2)
        try:
            os.dup2(fd, 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        text = Path(path).read_text()
    def number(name: str) -> int:
        m = re.search(rf"^# {re.escape(name)}\s+=\s+([\d,]+)", text, re.M)
        return int(m.group(1).replace(",", "")) if m else -1
    unused = re.search(r"^(\d+) unused pools \* (\d+) bytes", text, re.M)
    return {"arenas_now": number("arenas allocated current"),
            "arenas_bytes": number("arenas allocated current") * 2**20,  # 1 MiB in 3.11
            "used_bytes": number("bytes in allocated blocks"),
            "free_in_pools_bytes": number("bytes in available blocks"),
            "free_pools_bytes": int(unused[1]) * int(unused[2]) if unused else -1}


@contextlib.contextmanager
def tempfile_fd() -> Iterator[tuple[int, str]]:
    fd, path = tempfile.mkstemp()
    try:
        yield fd, path
    finally:
        os.close(fd)
        os.unlink(path)


def _garbage() -> dict[str, Any]:
    """What a full collection finds unreachable (cycles that reference counting leaves),
    by type, and how much that frees."""
    before = _status()["VmRSS"]
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        found = gc.collect()
        kinds = collections.Counter(type(o).__name__ for o in gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
    gc.collect()
    objects = gc.get_objects()
    live = collections.Counter(type(o).__name__ for o in objects)
    # messages the bulk lane's receiver holds, not yet taken (vagt.app.receiver)
    waiting = [o.waiting for o in objects if type(o).__name__ == "ReceiverProcess"]
    del objects
    return {"unreachable": found, "types": kinds.most_common(25),
            "live": live.most_common(25), "waiting": waiting,
            "rss_before_kb": before, "rss_after_kb": _status()["VmRSS"]}


def _sites(limit: int = TOP) -> dict[str, Any]:
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)])
    key = "traceback" if tracemalloc.get_traceback_limit() > 1 else "lineno"
    stats = snapshot.statistics(key)
    total = sum(s.size for s in stats)
    by_file: dict[str, int] = {}
    for s in snapshot.statistics("filename"):
        by_file[s.traceback[0].filename] = s.size
    del snapshot
    return {
        "traced_bytes": total,
        "files": sorted(by_file.items(), key=lambda kv: -kv[1])[:limit],
        "sites": [{"size": s.size, "count": s.count,
                   "where": [f"{f.filename}:{f.lineno}" for f in s.traceback]}
                  for s in stats[:limit]],
    }


@contextlib.contextmanager
def _all_objects() -> Iterator[list[Any]]:
    """Every object the collector tracks, those vagt.app.heap froze at start-up too (which
    `gc.get_objects` leaves out while they are frozen). Frozen again after, with what was
    made since: the engine's objects are freed by their counts, not by the collector (a
    full collection at the end of a soak finds a few dozen unreachable)."""
    frozen = gc.get_freeze_count() > 0
    gc.unfreeze()
    objects = gc.get_objects()
    try:
        yield objects
    finally:
        del objects[:]
        if frozen:
            gc.freeze()


def _rule_arrays() -> dict[str, Any]:
    """The rules' per-device state arrays (vagt.rules.state.RuleState) of each rules engine
    in the process: their bytes in all, and the rules holding most; how many rules keep
    rows only for some devices (those they apply to), and what rows only where a value is
    not the array's fill would take (what any sparser keeping needs at least); and the
    arrays of their rows (`RuleState.devices`, of their parts too), apart."""
    import numpy as np

    with _all_objects() as objects:
        engines = [o for o in objects if type(o).__name__ == "RuleEngine"]
    by_rule: collections.Counter[str] = collections.Counter()
    arrays: collections.Counter[str] = collections.Counter()
    rules = some = 0
    held = 0.0
    rows: dict[int, int] = {}   # the arrays of rows (`devices`), once each (rules share them)
    for engine in engines:
        for rule, state in engine.rule_states():
            name = rule.name
            rules += 1
            some += state.devices is not None
            for s in (state, *state.parts.values()):
                if s.devices is not None:
                    rows[id(s.devices)] = s.devices.nbytes
            for _, a, fill, _ in state.arrays():
                by_rule[name] += a.nbytes
                arrays[name] += 1
                row = a.nbytes / max(len(a), 1)
                other = a != fill
                if a.dtype.kind == "f" and fill != fill:     # NaN: not equal to itself
                    other = ~np.isnan(a)
                if other.ndim > 1:
                    other = other.any(axis=1)
                held += row * int(np.count_nonzero(other))
    return {"engines": len(engines), "bytes": sum(by_rule.values()),
            "arrays": sum(arrays.values()), "rules": rules, "rules_by_device": some,
            "held_bytes": held, "rows_bytes": sum(rows.values()),
            "by_rule": [(name, size, arrays[name]) for name, size in by_rule.most_common(8)]}


def _renew_pools() -> dict[str, int]:
    """Every psycopg pool's connections closed and opened again (`drain`): what libpq and
    psycopg held for the connections that lived until now, given back."""
    from psycopg_pool import ConnectionPool

    with _all_objects() as objects:
        pools = [o for o in objects if isinstance(o, ConnectionPool)]

    def held() -> int:     # in use, in the arenas and in chunks of their own (mmap)
        m = _libc.mallinfo2()
        return int(m.uordblks + m.hblkhd)

    before = held()
    for pool in pools:
        pool.drain()
    time.sleep(2)     # a connection out of the pool closes when it is given back
    return {"pools": len(pools), "in_use_before_bytes": before, "in_use_after_bytes": held()}


def report(directory: Path, label: str) -> None:
    renewed = _renew_pools() if label.startswith("pools") else None
    if label.startswith("tracestart-"):   # from now on: what is allocated after it
        tracemalloc.start(int(label.removeprefix("tracestart-")))
    out: dict[str, Any] = {"label": label, "time": time.time(), "status_kb": _status(),
                           "malloc": _malloc(), "pymalloc": _pymalloc(),
                           "connections": _sockets(), "rule_arrays": _rule_arrays(),
                           "gc_counts": gc.get_count()}
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        out["traced_now"], out["traced_peak"] = current, peak
        out.update(_sites())
    if renewed is not None:
        out["renewed"] = renewed
    if label.startswith("gc"):   # last: it changes what the others would see
        out["garbage"] = _garbage()
    if label.startswith("trim"):   # what glibc's free pages would give back (malloc_trim)
        before = _status()["VmRSS"]
        _libc.malloc_trim(0)
        out["trimmed_kb"] = (before, _status()["VmRSS"])
    tmp = directory / f".{label}.json"
    tmp.write_text(json.dumps(out, indent=1))
    tmp.rename(directory / f"{label}.json")


def _serve(directory: Path) -> None:
    request = directory / "request"
    done: set[str] = set()
    last_peak = 0
    while True:
        time.sleep(0.05)
        try:
            label = request.read_text().strip()
        except FileNotFoundError:
            label = ""
        if label and label not in done:
            done.add(label)
            report(directory, label)
        if tracemalloc.is_tracing():
            current, _ = tracemalloc.get_traced_memory()
            if current > last_peak * PEAK_STEP:
                report(directory, "peak")
                last_peak = current


def main() -> None:
    directory, frames, dash_m, module, *args = sys.argv[1:]
    assert dash_m == "-m", "usage: python -m benchmarks.memtrace DIR FRAMES -m MODULE [ARGS...]"
    if int(frames):
        tracemalloc.start(int(frames))
    threading.Thread(target=_serve, args=(Path(directory),), daemon=True,
                     name="bench-memtrace").start()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
