"""Backtest: replay stored readings and events through rules, in device-time order and in
batches, with the same engine the live pipeline uses, and count per rule and municipality
how many alerts would have opened and cleared. Nothing is written.

Timers run as they would live: after each batch the engine ticks at the batch's latest
device time. The sweep's rules (absence, clock) go by our clock, as live: each stored row
is heard at its `received_at`, and after each batch the sweep runs at the time by which
every row that reached us has been read (`_Heard`), in an engine of their own, so that a
device is heard speaking again when it reached us, not when its own clock says.

A device given to another citizen within the period begins anew there, as it does live
(migration 0010): batches end at the deployment, its rule state is emptied, its history reads
and its silence begin at the deployment, and its alerts count in the municipality it served
when they opened. An alert still open then counts as cleared: live, a device is deployed only
once its alerts are resolved.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql

from vagt.app import rule_queries
from vagt.app.rule_state import BEGAN_MARGIN_S
from vagt.devices.actions import CENTRAL_STOCK
from vagt.devices.fleet import Fleet
from vagt.rules import Batch, Rule, RuleEngine
from vagt.rules.book import AlertBook
from vagt.rules.engine import SWEPT
from vagt.rules.persist import layout, unpack

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


@dataclass
class BacktestResult:
    start: float
    end: float
    readings: int = 0
    events: int = 0
    batches: int = 0
    heard: int = 0        # rows that reached us within the period, which the sweep judged by
    opened: Counter[tuple[str, str]] = field(default_factory=Counter)   # (rule, municipality)
    cleared: Counter[tuple[str, str]] = field(default_factory=Counter)
    still_open: Counter[tuple[str, str]] = field(default_factory=Counter)

    def rows(self) -> list[dict[str, object]]:
        keys = sorted(set(self.opened) | set(self.cleared) | set(self.still_open))
        return [{"rule": r, "municipality": m, "opened": self.opened[(r, m)],
                 "cleared": self.cleared[(r, m)], "open_at_end": self.still_open[(r, m)]}
                for r, m in keys]


def parse_time(text: str) -> float:
    """Epoch seconds from ISO 8601 ("2026-11-01", "2026-11-01T06:00:00+01:00") or a number.
    A time without a zone is UTC."""
    try:
        return float(text)
    except ValueError:
        pass
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:

        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def run_backtest(conn: psycopg.Connection, fleet: Fleet, rules: list[Rule], start: float,
                 end: float, batch_rows: int = 5000, future_skew_s: float = 300.0
                 ) -> BacktestResult:
    """`fleet` is the backtest's own: its devices are put where their assignments had them
    at each time of the period (municipality, deployed or not), as the rules saw them.
    `future_skew_s`: how far ahead of our clock a device time may have been stored
    (`ingest.max_future_skew_s`)."""
    engine = RuleEngine([r for r in rules if r.kind not in SWEPT], fleet, fleet.catalogue)
    sweeper = RuleEngine([r for r in rules if r.kind in SWEPT], fleet, fleet.catalogue)
    book = AlertBook()
    result = BacktestResult(start, end)
    assignments = _Assignments(conn, fleet, start, end)
    heard = _Heard(start, end, _spoke_before(conn, fleet, start))
    heard.add(*_heard_before(conn, fleet, start, end, HEARD_BEFORE_S))
    names = [r.name for r in rules]
    swept = -np.inf

    def history(metric: str, devices: np.ndarray, since: float, until: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # as live: from the device's deployment on (less the margin for a clock behind)
        d, t, v = rule_queries.reading_history(conn, fleet, metric, devices, since, until,
                                               since_deployed=False)
        ok = ~(t < assignments.began[d] - BEGAN_MARGIN_S)   # NaN began: all
        return d[ok], t[ok], v[ok]

    cursor = start
    while cursor < end:
        for change in assignments.due(cursor):
            d = change.device
            # its alerts so far count where it was, one still open as cleared: they were
            # about the citizen it leaves (live, it is deployed again only once they are
            # resolved)
            _settle(result, book, names, d, fleet.municipality[d])
            fleet.place(d, change.municipality, "deployed" if change.deployed else "in_stock")
            if change.deployed:   # and silent from then on, as live (`_Heard.as_live`)
                assignments.began[d] = change.at
                for e in (engine, sweeper):
                    unpack(e, np.array([d]), layout(e), [b""], [b""], [None])
        upper = min(_batch_end(conn, cursor, end, batch_rows), assignments.next_after(cursor))
        loaded = _load(conn, fleet, cursor, upper)
        cursor = upper
        if loaded is None:
            continue
        batch, rows_heard = loaded
        result.batches += 1
        result.readings += len(batch.r_device)
        result.events += len(batch.e_device)
        ev = engine.evaluate(batch, history=history)
        book.record(ev)
        engine.apply(ev)
        latest = float(batch.m_time.max())
        ev = engine.tick(latest)
        book.record(ev)
        engine.apply(ev)
        heard.add(*rows_heard)
        # by our clock, at the batch's latest time (as its timers) if every row that reached
        # us by then is read: one is dated at most future_skew_s ahead of its arrival
        now = min(latest, upper - future_skew_s)
        if sweeper.rules and now > swept:
            swept = now
            _sweep(sweeper, book, heard, assignments.began, now, len(fleet))
    result.heard = heard.taken
    muni = fleet.municipality
    for (rule, d), n in book.opened.items():
        result.opened[(rule, muni[d])] += n
    for (rule, d), n in book.cleared.items():
        result.cleared[(rule, muni[d])] += n
    for rule, d in book.open_:
        result.still_open[(rule, muni[d])] += 1
    return result


def _sweep(sweeper: RuleEngine, book: AlertBook, heard: _Heard, began: F64, now: float,
           n: int) -> None:
    """What the live engine does by `now` for the sweep's rules: the messages that reached
    us since the last sweep clear the silence of their devices, then the sweep."""
    came = heard.take(now, n)
    if came is not None:
        ev = sweeper.evaluate(came)
        book.record(ev)
        sweeper.apply(ev)
    seen, last_heard = heard.as_live(began, n)
    ev = sweeper.sweep_absence(now, seen, list(book.open_), last_heard)
    book.record(ev)
    sweeper.apply(ev)


# Rows dated this long before the period that reached us within it are heard too (a clock
# behind, a buffer flushed after an outage). Rows dated earlier are not read: received_at
# has no index, and finding them would read all history (and a clock restarted at
# 2000-01-01 has its rows pruned within a day: `retention`).
HEARD_BEFORE_S = 86400.0


class _Heard:
    """The sweep's view of the fleet, by our clock, as `rule_queries.last_heard` gives it
    live: per device the latest device time (`seen`) and receipt time (`heard`) of the rows
    that reached us within the period by the sweep's time. Rows read whose receipt is later
    (dated ahead of it by a clock behind, or come late) wait until then."""

    def __init__(self, start: float, end: float, spoke_before: Bools) -> None:
        self.start, self.end = start, end
        self.spoke_before = spoke_before
        self.seen, self.heard = np.empty(0), np.empty(0)
        self.taken = 0
        self._dev = np.empty(0, dtype=np.int64)
        self._t, self._at = np.empty(0), np.empty(0)

    def add(self, dev: I64, t: F64, at: F64) -> None:
        """Rows read (device, device time, receipt time); those received outside the period
        are left out."""
        within = (at >= self.start) & (at < self.end)
        self._dev = np.concatenate([self._dev, dev[within]])
        self._t = np.concatenate([self._t, t[within]])
        self._at = np.concatenate([self._at, at[within]])

    def take(self, now: float, n: int) -> Batch | None:
        """The rows received by `now` not taken before, as messages (rows of `n` devices)."""
        self.seen, self.heard = _padded(self.seen, n), _padded(self.heard, n)
        due = self._at <= now
        if not due.any():
            return None
        dev, t = self._dev[due], self._t[due]
        np.fmax.at(self.seen, dev, t)
        np.fmax.at(self.heard, dev, self._at[due])
        self._dev, self._t, self._at = self._dev[~due], self._t[~due], self._at[~due]
        self.taken += len(dev)
        return dataclasses.replace(Batch.empty(), m_device=dev, m_time=t)

    def as_live(self, began: F64, n: int) -> tuple[F64, F64]:
        """(seen, heard) per device, as live: each no earlier than the deployment it is in
        (`began`: it is silent from then on), and heard no earlier than seen. A device not
        heard yet has no device time (NaN); if it never spoke before its deployment or the
        period, whichever is later, it is heard at its deployment (NaN: none known, as for a
        device not deployed), so that it is silent from then on, as a device deployed and
        never heard is live. One that spoke before the period and not in it yet is not
        judged (NaN): when we heard it last is not read."""
        seen, heard, began = (_padded(a, n) for a in (self.seen, self.heard, began))
        before = np.zeros(n, dtype=bool)
        before[:min(n, len(self.spoke_before))] = self.spoke_before[:n]
        known = ~np.isnan(seen)
        since = np.fmax(seen, began)
        with np.errstate(invalid="ignore"):
            fresh = ~before | (began >= self.start)
        return (np.where(known, since, np.nan),
                np.where(known, np.fmax(heard, since), np.where(fresh, began, np.nan)))


def _padded(a: F64, n: int) -> F64:
    """`a` lengthened to `n` with NaN (devices the fleet took in since)."""
    return a if len(a) >= n else np.concatenate([a, np.full(n - len(a), np.nan)])


@dataclass(frozen=True)
class _Change:
    at: float
    device: int
    deployed: bool        # deployed to a citizen, or back to the centre (returned, lost)
    municipality: str


class _Assignments:
    """The devices' assignments (`device_assignments`) over the period: `began` per device,
    the time of the deployment it is in at the cursor (NaN: none known), and the changes
    still to come, in time order. At the start each device with assignments is put where
    they had it: deployed in the municipality of the one in force, else in the centre's
    stock; one with none stays as the registry has it."""

    def __init__(self, conn: psycopg.Connection, fleet: Fleet, start: float, end: float
                 ) -> None:
        self.began = np.full(len(fleet), np.nan)
        rows = conn.execute(
            "SELECT device_id, extract(epoch FROM since)::float8, "
            "extract(epoch FROM until)::float8, municipality FROM device_assignments "
            "WHERE since < to_timestamp(%s) ORDER BY since, device_id", (end,)).fetchall()
        idx = fleet.lookup([str(r[0]) for r in rows])
        at_start: dict[int, tuple[str, bool]] = {}
        changes: list[_Change] = []
        for (_, since, until, place), d in zip(rows, idx.tolist()):
            if d < 0:
                continue
            ended = until is not None and until <= start
            if since <= start:   # in time order: the last one before the period stays
                at_start[d] = (CENTRAL_STOCK, False) if ended else (str(place), True)
                if not ended:
                    self.began[d] = since
            else:
                changes.append(_Change(float(since), d, True, str(place)))
            if until is not None and start < until < end:
                changes.append(_Change(float(until), d, False, CENTRAL_STOCK))
        for d, (place, deployed) in at_start.items():
            fleet.place(d, place, "deployed" if deployed else "in_stock")
        self._coming = sorted(changes, key=lambda c: (c.at, c.deployed))  # a return first
        self._next = 0

    def next_after(self, cursor: float) -> float:
        """The time of the next change after `cursor` (inf: none)."""
        k = self._next
        while k < len(self._coming) and self._coming[k].at <= cursor:
            k += 1
        return self._coming[k].at if k < len(self._coming) else np.inf

    def due(self, cursor: float) -> list[_Change]:
        """The changes at or before `cursor` not yet taken, in time order."""
        k = self._next
        while self._next < len(self._coming) and self._coming[self._next].at <= cursor:
            self._next += 1
        return self._coming[k:self._next]


def _settle(result: BacktestResult, book: AlertBook, rules: list[str], d: int,
            municipality: str) -> None:
    """Device `d` changes place: count its alerts so far in `municipality` (where it was)
    and take them out of the book, one still open as cleared."""
    for rule in rules:
        key, here = (rule, d), (rule, municipality)
        fired = book.open_.pop(key, None)
        if fired is not None:
            book.resolved[key] = max(book.resolved.get(key, -np.inf), fired)
            book.cleared[key] += 1
        if key in book.opened:
            result.opened[here] += book.opened.pop(key)
        if key in book.cleared:
            result.cleared[here] += book.cleared.pop(key)


# The time of a table's row `n` places after `cursor`, among the rows before `until`.
_NTH_TIME = "SELECT extract(epoch FROM time)::float8 FROM {} " \
    "WHERE time >= to_timestamp(%s) AND time < to_timestamp(%s) ORDER BY time OFFSET %s LIMIT 1"

# The first window `_batch_end` looks in, doubled until it holds a batch.
FIRST_WINDOW_S = 60.0


def _batch_end(conn: psycopg.Connection, cursor: float, end: float, batch_rows: int) -> float:
    """The device time that closes a batch of about `batch_rows` readings and events.

    Looked for in a window from `cursor` that doubles until it holds that many rows: asked of
    the whole rest of the period, every batch sorted all of it (plain PostgreSQL's BRIN
    index cannot give rows in order), 2 s a batch at 2.8M rows; a window is read through the
    index and sorted alone."""
    upper = end
    for table in ("readings", "events"):
        found = _nth_time(conn, table, cursor, upper, batch_rows)
        if found is not None:
            upper = found
    if upper <= cursor:  # more than batch_rows rows at one instant: take them all
        upper = np.nextafter(cursor, np.inf)
    return float(min(upper, end))


def _nth_time(conn: psycopg.Connection, table: str, cursor: float, until: float,
              n: int) -> float | None:
    """The time of `table`'s row `n` places after the first at or after `cursor` and before
    `until`; None if it has no more than `n` such rows."""
    query = sql.SQL(_NTH_TIME).format(sql.Identifier(table))
    width = FIRST_WINDOW_S
    while True:
        upper = min(cursor + width, until)
        row = conn.execute(query, (cursor, upper, n)).fetchone()
        if row is not None:
            return float(row[0])
        if upper >= until:
            return None
        width *= 2


# Of the rows of a device-time range: the rules' columns and when each reached us.
_READINGS = "SELECT device_id, metric, value, extract(epoch FROM time)::float8, " \
    "extract(epoch FROM received_at)::float8 FROM readings " \
    "WHERE time >= to_timestamp(%s) AND time < to_timestamp(%s) ORDER BY time"
_EVENTS = "SELECT device_id, code, extract(epoch FROM time)::float8, " \
    "extract(epoch FROM received_at)::float8 FROM events " \
    "WHERE time >= to_timestamp(%s) AND time < to_timestamp(%s) ORDER BY time"


def _load(conn: psycopg.Connection, fleet: Fleet, lo: float, hi: float
          ) -> tuple[Batch, tuple[I64, F64, F64]] | None:
    """The rows dated in [lo, hi) as a batch, and as rows heard (device, time, received)."""
    r = conn.execute(_READINGS, (lo, hi)).fetchall()
    e = conn.execute(_EVENTS, (lo, hi)).fetchall()
    if not r and not e:
        return None
    batch = rule_queries.rows_batch(conn, fleet, r, e)   # takes in devices it did not know
    return batch, rule_queries.rows_by_device(fleet, [(x[0], x[3], x[4]) for x in r] +
                                              [(x[0], x[2], x[3]) for x in e])


# Rows dated before the period that reached us within it: the index on time finds them.
_HEARD_BEFORE = """
SELECT device_id, extract(epoch FROM time)::float8, extract(epoch FROM received_at)::float8
FROM {} WHERE time >= to_timestamp(%s) AND time < to_timestamp(%s)
AND received_at >= to_timestamp(%s) AND received_at < to_timestamp(%s)
"""


def _heard_before(conn: psycopg.Connection, fleet: Fleet, start: float, end: float,
                  before_s: float) -> tuple[I64, F64, F64]:
    """Rows dated up to `before_s` before `start` that reached us in [start, end)."""
    rows: list[tuple[object, ...]] = []
    for table in ("readings", "events"):
        rows += conn.execute(sql.SQL(_HEARD_BEFORE).format(sql.Identifier(table)),
                             (start - before_s, start, start, end)).fetchall()
    fleet.resolve(conn, sorted({str(x[0]) for x in rows}))
    return rule_queries.rows_by_device(fleet, rows)


# Whether a device has a stored row dated before the period: a probe of the primary key of
# readings (device, metric, time) and the index of events (device, time) per device.
_SPOKE_BEFORE = """
SELECT d.device_id FROM devices d
WHERE EXISTS (SELECT 1 FROM readings r WHERE r.device_id = d.device_id
              AND r.time < to_timestamp(%(start)s))
   OR EXISTS (SELECT 1 FROM events e WHERE e.device_id = d.device_id
              AND e.time < to_timestamp(%(start)s))
"""


def _spoke_before(conn: psycopg.Connection, fleet: Fleet, start: float) -> Bools:
    """Per device, whether it has stored rows dated before `start`: a device with none that
    is deployed and not heard in the period was never heard, as far as the period goes."""
    spoke = np.zeros(len(fleet), dtype=bool)
    rows = conn.execute(_SPOKE_BEFORE, {"start": start}).fetchall()
    idx = fleet.lookup([str(r[0]) for r in rows])
    spoke[idx[idx >= 0]] = True
    return spoke
