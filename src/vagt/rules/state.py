"""What a rule kind sees and keeps: the batch as columns, the fleet, and per-device state in
numpy arrays indexed by the dense device index.

State changes are staged (`Update`) and applied only after the batch's transaction commits,
so a batch that fails and is retried is evaluated against the same state again.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from types import MappingProxyType
from typing import Protocol

import numpy as np
import numpy.typing as npt

from vagt.arrays import factorize
from vagt.rules._columns import F64, I64, Bools, Obj, sort_rows

# (metric, device indexes, since, until) -> rows (device, time, value): stored readings of
# those devices in [since, until), sorted or not. The application answers it from SQL.
HistorySource = Callable[[str, I64, float, float], tuple[I64, F64, F64]]


class FleetView(Protocol):
    """What rules read of the fleet: per dense device index, in the same order as `ids`."""

    ids: list[str]
    vendor: list[str]
    model: list[str]
    type: list[str]
    municipality: list[str]
    status: list[str]
    # changes whenever a device's vendor, model, type or municipality does
    registry_version: int

    def __len__(self) -> int: ...


@dataclass
class ListFleet:
    """A FleetView of plain lists, for tests and benchmarks that build a fleet by hand."""

    ids: list[str] = field(default_factory=list)
    vendor: list[str] = field(default_factory=list)
    model: list[str] = field(default_factory=list)
    type: list[str] = field(default_factory=list)
    municipality: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    registry_version: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def move(self, device_id: str, municipality: str) -> None:
        """The device redeployed to another municipality."""
        self.municipality[self.ids.index(device_id)] = municipality
        self.registry_version += 1

    def add(self, device_id: str, vendor: str, model: str, type_: str, municipality: str,
            status: str = "deployed") -> None:
        for column, value in ((self.ids, device_id), (self.vendor, vendor),
                              (self.model, model), (self.type, type_),
                              (self.municipality, municipality), (self.status, status)):
            column.append(value)


@dataclass
class Batch:
    """The rows a batch brought, with their dense device index; times are device time."""

    r_device: I64
    r_metric: Obj
    r_value: F64
    r_time: F64
    e_device: I64
    e_code: Obj
    e_time: F64
    # every usable message: its device and its latest device time (status-only ones too)
    m_device: I64 = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    m_time: F64 = field(default_factory=lambda: np.empty(0, dtype=np.float64))

    @cached_property
    def rows_by_metric(self) -> dict[str, I64]:
        """Reading rows per metric: hashed once per batch, not compared once per rule."""
        if len(self.r_metric) == 0:
            return {}
        codes, uniques = factorize(self.r_metric)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
        return {str(m): order[bounds[k]:bounds[k + 1]].astype(np.int64)
                for k, m in enumerate(uniques)}

    @cached_property
    def event_codes(self) -> tuple[npt.NDArray[np.intp], list[str]]:
        """Per event row the index of its code in a list of the batch's distinct codes."""
        if len(self.e_code) == 0:
            return np.empty(0, dtype=np.intp), []
        codes, uniques = factorize(self.e_code)
        return codes, [str(c) for c in uniques]

    def code_mask(self, patterns: Sequence[str]) -> Bools:
        """Which event rows have a code matching any of the glob patterns."""
        codes, uniques = self.event_codes
        if not patterns or not uniques:
            return np.zeros(len(self.e_code), dtype=bool)
        hit = np.array([any(fnmatch.fnmatchcase(c, p) for p in patterns) for c in uniques],
                       dtype=bool)
        return hit[codes]

    @classmethod
    def empty(cls) -> Batch:
        i, f = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        o = np.empty(0, dtype=object)
        return cls(i, o, f, f, i, o, f, i, f)

    def without(self, devices: I64) -> Batch:
        """The rows (readings, events, messages) of every device but `devices`."""
        return self._where(lambda dev, _time: ~np.isin(dev, devices))

    def newer_than(self, devices: I64, since: F64, events: Bools | None = None) -> Batch:
        """The rows of `devices` (sorted) newer than their `since`, and every other device's;
        also the event rows `events` says yes to, however old."""
        if len(devices) == 0:
            return self

        def keep(dev: I64, time: F64) -> Bools:
            at = places_in(devices, dev)
            kept: Bools = (at < 0) | (time > since[np.maximum(at, 0)])
            return kept
        return self._where(keep, events)

    def split(self, devices: I64, since: F64) -> tuple[Batch, Batch]:
        """`newer_than(devices, since)`, and the rest: the rows of `devices` (sorted) at or
        before their `since`."""
        def older(dev: I64, time: F64) -> Bools:
            at = places_in(devices, dev)
            kept: Bools = (at >= 0) & ~(time > since[np.maximum(at, 0)])
            return kept
        return self.newer_than(devices, since), self._where(older)

    def _where(self, keep: Callable[[I64, F64], Bools], events: Bools | None = None) -> Batch:
        """The rows (readings, events, messages) `keep` says yes to, by device and time, and
        the event rows `events` says yes to."""
        kept = {p: keep(getattr(self, f"{p}_device"), getattr(self, f"{p}_time")) for p in "rem"}
        if events is not None:
            kept["e"] |= events
        return Batch(*(getattr(self, f.name)[kept[f.name[0]]] for f in fields(Batch)))

    def of_devices(self, rows_of: Callable[[I64], I64], events_only: bool = False
                   ) -> tuple[Batch, I64]:
        """The rows of the devices `rows_of` gives a row (fleet indexes in, -1: none), each
        numbered by it (a rule's rows: `RuleState.devices`); and which of this batch's
        reading rows they are. `events_only`: its event rows only (for rules that read
        nothing else)."""
        kept, places = {}, {}
        for p in "rem":
            device = getattr(self, f"{p}_device")
            if events_only and p != "e":
                kept[p], places[p] = np.zeros(len(device), dtype=bool), device[:0]
                continue
            at = rows_of(device)
            kept[p] = at >= 0
            places[p] = at[kept[p]]
        out = Batch(*(getattr(self, f.name)[kept[f.name[0]]] for f in fields(Batch)))
        out.r_device, out.e_device, out.m_device = places["r"], places["e"], places["m"]
        # what a batch works out once for all rules, taken along, not worked out again
        r_kept = kept["r"]
        local = {}
        if r_kept.any():   # (none for a rule that reads events only)
            renumber = np.cumsum(r_kept) - 1
            local = {m: renumber[rows[r_kept[rows]]] for m, rows in self.rows_by_metric.items()}
        out.__dict__["rows_by_metric"] = {m: rows for m, rows in local.items() if len(rows)}
        codes, uniques = self.event_codes
        out.__dict__["event_codes"] = (codes[kept["e"]], uniques)
        return out, np.flatnonzero(r_kept).astype(np.int64)

    def plus(self, other: Batch) -> Batch:
        """These rows and `other`'s, as one batch."""
        return Batch(*(np.concatenate([getattr(self, f.name), getattr(other, f.name)])
                       for f in fields(Batch)))


class RuleState:
    """Named per-device arrays of one rule; rows grow with the fleet.

    A rule's state has a row only for the devices it keeps (`devices`, sorted fleet
    indexes): those its filters match (of a rule judged by event codes, those that sent it
    one), and any device it was given state for since (an alert open in the queue, a device
    that moved out of the rule's municipality). A rule of every device keeps a row per
    device of the fleet, numbered by the device's fleet index (`devices` is None). The rule
    kinds see only rows, numbered 0..n-1 (the engine hands them a batch and a `Context`
    numbered so); what reads the state from outside by the fleet's indexes goes through
    `rows_of`, `values` and `at`.

    A rule may keep some arrays in parts with rows of their own (`part`): validity's per
    metric, for the devices whose model measures the metric. From outside (`arrays`, `at`,
    `values`, `put_at`: what is stored and read back) a part's array is `<key>.<name>`;
    a name with a dot is always a part's.

    `watermarks`: the arrays that only say which rows are new (`last_t` of most kinds): a
    change of those alone changes nothing the rule decides (see `Update.moved`). A part's
    arrays are one if their `name` is."""

    def __init__(self, watermarks: Iterable[str] = (), every_device: bool = True) -> None:
        self._arrays: dict[str, npt.NDArray[np.generic]] = {}
        self._fills: dict[str, tuple[object, npt.DTypeLike, int]] = {}
        self._parts: dict[str, RuleState] = {}
        self.watermarks = frozenset(watermarks)
        self.devices: I64 | None = None if every_device else np.empty(0, dtype=np.int64)

    def is_watermark(self, name: str) -> bool:
        return name.rpartition(".")[2] in self.watermarks

    # -- parts: arrays with rows of their own ---------------------------------------------

    def part(self, key: str) -> RuleState:
        """The arrays kept under `key`, with rows only for the devices it is given (`cover`,
        by fleet index, whatever rows the rule itself has); made empty if need be."""
        p = self._parts.get(key)
        if p is None:
            p = self._parts[key] = RuleState(self.watermarks, every_device=False)
        return p

    @property
    def parts(self) -> Mapping[str, RuleState]:
        """The parts by key (made by `part` only)."""
        return MappingProxyType(self._parts)

    def _owner(self, name: str, make: bool = False) -> tuple[RuleState | None, str]:
        """The state that holds the array `name` as named from outside, and its name there
        (None: a part not made, and `make` is false)."""
        key, dot, rest = name.rpartition(".")
        if not dot:
            return self, name
        return (self.part(key) if make else self._parts.get(key)), rest

    # -- rows and the fleet's device indexes ----------------------------------------------

    def size(self, n: int) -> int:
        """How many rows the state has with `n` devices in the fleet."""
        return n if self.devices is None else len(self.devices)

    def rows_of(self, devices: I64) -> I64:
        """The rows of `devices` (fleet indexes); -1 for a device the state has no row for."""
        if self.devices is None:
            return np.asarray(devices, dtype=np.int64)
        return places_in(self.devices, devices)

    def cover(self, devices: I64) -> None:
        """Rows for `devices` (fleet indexes) too; every row keeps its values. Devices after
        all those kept (the fleet grew) only extend the rows; others move rows along."""
        if self.devices is None or len(devices) == 0:
            return
        old = self.devices
        if len(devices) == len(old) and np.array_equal(devices, old):
            return   # the rules' filters again, with nothing changed in them
        after = len(old) == 0 or int(np.min(devices)) > int(old[-1])
        new = np.unique(devices) if after else np.setdiff1d(devices, old)
        if len(new) == 0:
            return
        if after:
            self.devices = np.concatenate([old, new]).astype(np.int64)
        else:
            self.devices = np.union1d(old, new).astype(np.int64)
            for name, a in self._arrays.items():
                fill, dtype, width = self._fills[name]
                moved = np.full((len(self.devices), width) if width else len(self.devices),
                                fill, dtype=dtype)
                moved[np.searchsorted(self.devices, old[:len(a)])] = a[:len(old)]
                self._arrays[name] = moved

    # -- arrays, by row ------------------------------------------------------------------------

    def array(self, name: str, n: int, fill: object, dtype: npt.DTypeLike,
              width: int = 0) -> npt.NDArray[np.generic]:
        """The array `name` with at least `n` rows (`width` columns if > 0)."""
        a = self._arrays.get(name)
        if a is None or len(a) < n:
            shape = (n, width) if width else (n,)
            grown = np.full(shape, fill, dtype=dtype)
            if a is not None:
                grown[:len(a)] = a
            self._arrays[name] = a = grown
            self._fills[name] = (fill, dtype, width)
        return a

    def f64(self, name: str, n: int, fill: float = np.nan, width: int = 0) -> F64:
        return self.array(name, n, fill, np.float64, width)  # type: ignore[return-value]

    def i64(self, name: str, n: int, fill: int = 0) -> I64:
        return self.array(name, n, fill, np.int64)  # type: ignore[return-value]

    def flag(self, name: str, n: int) -> Bools:
        return self.array(name, n, False, np.bool_)  # type: ignore[return-value]

    def arrays(self) -> list[tuple[str, npt.NDArray[np.generic], object, int]]:
        """(name, array, fill, width) of every array, the parts' too, in name order; by
        row (of its part, for a part's)."""
        out = [(name, a, self._fills[name][0], self._fills[name][2])
               for name, a in self._arrays.items()]
        out += [(f"{key}.{name}", a, fill, width) for key, p in self._parts.items()
                for name, a, fill, width in p.arrays()]
        return sorted(out, key=lambda e: e[0])

    def differs(self, name: str, rows: I64, values: npt.NDArray[np.generic]) -> Bools:
        """Per row: `values` differ from what `name` holds there (NaN equals NaN; an array
        not made yet differs everywhere)."""
        a = self._arrays.get(name)
        if a is None:
            return np.ones(len(rows), dtype=bool)
        inside = rows < len(a)
        now = a[np.where(inside, rows, 0)]
        now[~inside] = self._fills[name][0]  # type: ignore[assignment]
        new = np.asarray(values)
        same: Bools = now == new
        if now.dtype.kind == "f":
            same |= np.isnan(now) & np.isnan(new)
        if same.ndim > 1:
            same = np.all(same, axis=1)
        return ~same

    def put(self, name: str, rows: I64, values: npt.NDArray[np.generic]) -> None:
        a = self._arrays[name]
        need = int(rows.max()) + 1 if len(rows) else 0
        if need > len(a):
            fill, dtype, width = self._fills[name]
            a = self.array(name, need, fill, dtype, width)
        a[rows] = values

    # -- arrays, by the fleet's device index ------------------------------------------------

    def at(self, name: str, devices: I64) -> npt.NDArray[np.generic]:
        """The values of the existing array `name` for `devices` (fleet indexes), its fill
        where the state has no row for one."""
        owner, own = self._owner(name)
        if owner is None:
            raise KeyError(name)   # the whole name: which part is missing
        if owner is not self:
            return owner.at(own, devices)
        a = self._arrays[name]
        fill, dtype, width = self._fills[name]
        rows = self.rows_of(devices)
        out = np.full((len(rows), width) if width else len(rows), fill, dtype=dtype)
        inside = (rows >= 0) & (rows < len(a))
        out[inside] = a[rows[inside]]
        return out

    def values(self, name: str, devices: I64, fill: object) -> npt.NDArray[np.generic]:
        """`at`, and `fill` everywhere if the array is not made yet; creates nothing."""
        owner, own = self._owner(name)
        if owner is None or own not in owner._arrays:
            return np.full(len(devices), fill)
        return owner.at(own, devices)

    def put_at(self, name: str, devices: I64, values: npt.NDArray[np.generic], given: Bools,
               fill: object, dtype: npt.DTypeLike, width: int = 0) -> None:
        """Set `name` (made with `fill` if it is not yet, if need be with no rows) for
        `devices` (fleet indexes); a device the state has no row for gets one if `given`
        says its value is not the fill, and is left out otherwise."""
        owner, name = self._owner(name, make=True)
        if owner is not self:
            assert owner is not None
            owner.put_at(name, devices, values, given, fill, dtype, width)
            return
        rows = self.rows_of(devices)
        if (more := (rows < 0) & given).any():
            self.cover(np.unique(devices[more]))
            rows = self.rows_of(devices)
        kept = rows >= 0
        a = self.array(name, int(rows[kept].max()) + 1 if kept.any() else 0, fill, dtype, width)
        a[rows[kept]] = values[kept]


def places_in(sorted_: I64, keys: I64) -> I64:
    """Each key's place in `sorted_` (sorted, unique); -1 for a key it does not hold."""
    keys = np.asarray(keys, dtype=np.int64)
    if len(sorted_) == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(sorted_, keys), len(sorted_) - 1)
    return np.where(sorted_[at] == keys, at, -1).astype(np.int64)


@dataclass
class Update:
    """New values for some devices' state of one rule, applied after the commit.

    `rows` are the state's as they were when it was staged: rows the state has moved since
    (`RuleState.cover`) are found again by their devices."""

    state: RuleState
    rows: I64
    values: dict[str, npt.NDArray[np.generic]]
    # the state's devices when it was staged (None: rows are the fleet's indexes)
    staged_for: I64 | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.staged_for = self.state.devices

    def devices(self) -> I64:
        """The devices it changes the state of, by fleet index."""
        return self.rows if self.staged_for is None else self.staged_for[self.rows]

    def apply(self, devices: I64 | None = None) -> None:
        """Write the values (of `devices` only, if given: fleet indexes)."""
        keep, rows = self._kept(devices)
        every = bool(keep.all())
        for name, v in self.values.items():
            self.state.put(name, rows if every else rows[keep], v if every else v[keep])

    def moved(self) -> I64:
        """The devices (fleet indexes) whose state it changes in more than its watermarks."""
        keep, rows = self._kept(None)
        moved = np.zeros(len(rows), dtype=bool)
        for name, v in self.values.items():
            if not self.state.is_watermark(name):
                moved[keep] |= self.state.differs(name, rows[keep], v[keep])
        return self.devices()[moved]

    def _kept(self, devices: I64 | None) -> tuple[Bools, I64]:
        """Which of its rows to write, and where they are in the state now: of `devices`
        if given, and not where the state has seen a later device time meanwhile (the
        other lane committed a batch of the same device first): the later state stays."""
        rows = self.rows
        ours = self.devices()
        if self.state.devices is not self.staged_for:   # rows added or moved since (cover)
            rows = self.state.rows_of(ours)
        keep = rows >= 0
        if devices is not None:
            keep &= np.isin(ours, devices)
        if "last_t" in self.values and "last_t" in self.state._arrays:
            new_t = np.asarray(self.values["last_t"], dtype=np.float64)
            current = np.asarray(self.state._arrays["last_t"], dtype=np.float64)
            inside = (rows >= 0) & (rows < len(current))
            keep &= ~inside | (new_t >= current[np.where(inside, rows, 0)])
        return keep, rows


@dataclass
class Context:
    """What a kind needs besides its rule, its state and the batch."""

    n: int                     # devices in the fleet
    applies: Bools             # per device: the rule's filters match it
    ranges: dict[str, tuple[F64, F64]]   # metric -> plausible (low, high) per model
    model: I64                 # per device: its (vendor, model)'s place in `ranges`' arrays
    latest_seen: F64           # per device: the latest device time in this batch (-inf: none)
    history: HistorySource | None
    updates: list[Update]
    bad: Bools                 # per reading row: implausible (validity marked it)
    # per device at a timer tick: how far its clock is behind ours, in seconds (0: unknown);
    # see `sequence.tick`
    behind: F64 = field(default_factory=lambda: np.empty(0))

    def stage(self, state: RuleState, rows: I64, **values: npt.NDArray[np.generic]) -> None:
        if len(rows):
            self.updates.append(Update(state, rows, values))

    def device_now(self, now: float) -> F64:
        """Per device, `now` on its own clock (`now` less how far it is behind ours), which
        a tick compares the device times of its state with: see `sequence.tick`."""
        if len(self.behind) == self.n:
            return now - self.behind
        return np.full(self.n, now)


def reading_rows(ctx: Context, b: Batch, metrics: Sequence[str]) -> I64:
    """Indexes of the batch's readings of `metrics` on devices the rule applies to, not bad."""
    by_metric = b.rows_by_metric
    parts = [by_metric[m] for m in metrics if m in by_metric]
    if not parts:
        return np.empty(0, dtype=np.int64)
    rows = parts[0] if len(parts) == 1 else np.sort(np.concatenate(parts))
    keep = ctx.applies[b.r_device[rows]] & ~ctx.bad[rows]
    return rows[keep]


def new_readings(ctx: Context, b: Batch, st: RuleState, metric: str
                 ) -> tuple[I64, F64, F64, F64] | None:
    """The batch's readings of `metric` this rule has not seen yet, sorted by device and
    time: (device, time, value) and the rule's `last_t` array; None when there are none."""
    rows = reading_rows(ctx, b, [metric])
    if len(rows) == 0:
        return None
    d, t, v = b.r_device[rows], b.r_time[rows], b.r_value[rows]
    order = sort_rows(d, t)
    d, t, v = d[order], t[order], v[order]
    last_t = st.f64("last_t", ctx.n, -np.inf)
    keep = fresh(d, t, last_t)
    if not keep.any():
        return None
    return d[keep], t[keep], v[keep], last_t


def fresh(dev: I64, time: F64, last_t: F64, dedupe: bool = True) -> Bools:
    """Rows newer than what the rule already saw of their device (sorted by device, time).

    An older row must not flip the state; a row repeated within the batch counts once.
    """
    keep = time > last_t[dev]
    if dedupe and len(dev) > 1:
        dup = np.r_[False, (dev[1:] == dev[:-1]) & (time[1:] == time[:-1])]
        keep &= ~dup
    return keep
