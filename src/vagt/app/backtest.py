"""Backtest: replay stored readings and events through rules, in device-time order and in
batches, with the same engine the live pipeline uses, and count per rule and municipality
how many alerts would have opened and cleared. Nothing is written.

Timers run as they would live: after each batch the engine ticks at the batch's latest
device time. The sweep's rules (absence, clock) go by our clock, as live: each stored row
is heard at its `received_at`, and after each batch the sweep runs at the time by which
every row that reached us has been read (`_Heard`), in an engine of their own, so that a
device is heard speaking again when it reached us, not when its own clock says. At the
period's end (or now, if earlier) both run once more, as live ones had run by then with no
message coming: a device silent, a dose missed, since the last batch.

The rules begin the period with the state live ones had: the rows dated up to the longest
of the rules' reaches before it (`warm_up_s`, a day at least) are replayed first, their
alerts not counted (those left open count when they clear, or stay open), and the sweep
knows when each device was last heard before, however long ago (`_last_before`).

A device given to another citizen within the period begins anew there, as it does live
(migration 0010): batches end at the deployment, its rule state is emptied, its history reads
and its silence begin at the deployment, rows dated more than an hour before it that reached
us after it (what it kept from the citizen before) are heard and not evaluated, and its
alerts count in the municipality it served when they opened. An alert still open then
counts as cleared: live, a device is deployed only once its alerts are resolved.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import psycopg
from psycopg import sql

from vagt.app import db, rule_queries
from vagt.app.rule_state import BEGAN_MARGIN_S
from vagt.arrays import F64, I64
from vagt.devices.actions import CENTRAL_STOCK
from vagt.devices.fleet import Fleet
from vagt.ingest.units import METRICS
from vagt.rules import Batch, Evaluation, Rule, RuleEngine
from vagt.rules.book import AlertBook
from vagt.rules.engine import SWEPT
from vagt.rules.kinds import sequence
from vagt.rules.persist import layout, unpack


@dataclass
class BacktestResult:
    start: float
    end: float
    state_from: float     # rows dated from here to the start gave the rules their state:
    all_rows_from: float  # every row from here, before it those of the rules reaching further
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
                 end: float, batch_rows: int = 5000, future_skew_s: float = 300.0,
                 clock: Callable[[], float] = time.time) -> BacktestResult:
    """`fleet` is the backtest's own: its devices are put where their assignments had them
    at each time of the period (municipality, deployed or not), as the rules saw them.
    `future_skew_s`: how far ahead of our clock a device time may have been stored
    (`ingest.max_future_skew_s`). `clock`: our time, which the period's end is no later than
    (live timers had run only so far).

    The rows before the period give the rules the state they had at its start, uncounted:
    those of a day before (`ALL_ROWS_S`), and before that, from `warm_up_s` before, those
    the rules that reach further need (`_Needs`). The timers and the sweep run at its start
    and at its end, as live ones had by then."""
    replay = _Replay(conn, fleet, rules, start, end, future_skew_s)
    cursor = replay.result.state_from
    needs = _Needs.of(rules)
    while cursor < replay.result.all_rows_from:
        cursor = replay.rows(cursor, replay.result.all_rows_from, batch_rows, needs)
    while cursor < start:
        cursor = replay.rows(cursor, start, batch_rows)
    replay.catch_up(start, start)
    replay.count_from_now()
    while cursor < end:
        cursor = replay.rows(cursor, end, batch_rows)
    replay.catch_up(min(end, clock()), end)
    return replay.totals()


class _Replay:
    """The rules, their timers and the sweep over the stored rows, and the alerts they made."""

    def __init__(self, conn: psycopg.Connection, fleet: Fleet, rules: list[Rule],
                 start: float, end: float, future_skew_s: float) -> None:
        self.conn, self.fleet, self.future_skew_s = conn, fleet, future_skew_s
        self.engine = RuleEngine([r for r in rules if r.kind not in SWEPT], fleet,
                                 fleet.catalogue)
        self.sweeper = RuleEngine([r for r in rules if r.kind in SWEPT], fleet,
                                  fleet.catalogue)
        self.names = [r.name for r in rules]
        self.batch_ends = _BatchEnds()
        self.book = AlertBook()
        self.result = BacktestResult(start, end, state_from=start - warm_up_s(rules),
                                     all_rows_from=start - ALL_ROWS_S)
        self.assignments = _Assignments(conn, fleet, self.result.state_from, end)
        # the sweep's view begins where every row is read
        first = self.result.all_rows_from
        self.heard = _Heard(first, start, end)
        self.heard.add(*_last_before(conn, fleet, first))
        self.heard.add(*_heard_dated(conn, fleet, first - HEARD_BEFORE_S, first, first, end))
        self.swept = -np.inf
        self.counting = False

    def history(self, metric: str, devices: np.ndarray, since: float, until: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stored readings for rate rules, as live: from the device's deployment on (less
        the margin for a clock behind)."""
        d, t, v = rule_queries.reading_history(self.conn, self.fleet, metric, devices, since,
                                               until, since_deployed=False)
        ok = ~(t < self.assignments.began[d] - BEGAN_MARGIN_S)   # NaN began: all
        return d[ok], t[ok], v[ok]

    def rows(self, cursor: float, until: float, batch_rows: int,
             needs: _Needs | None = None) -> float:
        """The devices' changes of place due by `cursor`, then the next batch of rows dated
        from `cursor` (before `until` and the next change), or only those of them that
        `needs` names (then the sweep, which needs every row, waits); returns where it
        ended."""
        for change in self.assignments.due(cursor):
            self._move(change)
        upper = min(self.batch_ends.end(self.conn, cursor, until, batch_rows, needs),
                    self.assignments.next_after(cursor))
        loaded = _load(self.conn, self.fleet, cursor, upper, needs,
                       self.assignments.kept_from_last_citizen)
        if loaded is not None:
            self._batch(*loaded, upper, every_row=needs is None)
        return upper

    def _move(self, change: _Change) -> None:
        d = change.device
        # its alerts so far count where it was, one still open as cleared: they were about
        # the citizen it leaves (live, it is deployed again only once they are resolved)
        _settle(self.result, self.book, self.names, d, self.fleet.municipality[d])
        self.fleet.place(d, change.municipality,
                         "deployed" if change.deployed else "in_stock")
        if change.deployed:   # and silent from then on, as live (`_Heard.as_live`)
            self.assignments.began[d] = change.at
            for e in (self.engine, self.sweeper):
                unpack(e, np.array([d]), layout(e), [b""], [b""], [None])

    def _batch(self, batch: Batch, rows_heard: tuple[I64, F64, F64], upper: float,
               every_row: bool) -> None:
        if self.counting:
            self.result.batches += 1
            self.result.readings += len(batch.r_device)
            self.result.events += len(batch.e_device)
        # (a batch may hold rows heard alone: those live did not evaluate)
        latest = float(max(batch.m_time.max(initial=-np.inf), rows_heard[1].max(initial=-np.inf)))
        if len(batch.m_time):
            self._record(self.engine, self.engine.evaluate(batch, history=self.history))
        self._record(self.engine, self.engine.tick(latest))
        if not every_row:
            return
        self.heard.add(*rows_heard)
        # by our clock, at the batch's latest time (as its timers) if every row that reached
        # us by then is read: one is dated at most future_skew_s ahead of its arrival
        self._sweep(min(latest, upper - self.future_skew_s))

    def catch_up(self, now: float, read_until: float) -> None:
        """The sweep and the timers at `now` (our clock), where live ones had been by then,
        whether rows came or not: a device silent, or a dose missed, since the last batch.
        The rows are read up to `read_until`: those dated up to future_skew_s later that
        reached us by `now` (a clock ahead) are heard."""
        self.heard.add(*_heard_dated(self.conn, self.fleet, read_until,
                                     read_until + self.future_skew_s,
                                     self.heard.first, now))
        self._sweep(now)
        seen, heard = self.heard.as_live(self.assignments.began, len(self.fleet))
        self._record(self.engine, self.engine.tick(now, behind=heard - seen))

    def _sweep(self, now: float) -> None:
        """What the live engine does by `now` for the sweep's rules: the messages that
        reached us since the last sweep clear the silence of their devices, then the sweep."""
        if not self.sweeper.rules or now <= self.swept:
            return
        self.swept = now
        n = len(self.fleet)
        came = self.heard.take(now, n)
        if came is not None:
            self._record(self.sweeper, self.sweeper.evaluate(came))
        seen, heard = self.heard.as_live(self.assignments.began, n)
        self._record(self.sweeper, self.sweeper.sweep_absence(now, seen, list(self.book.open_),
                                                              heard))

    def _record(self, engine: RuleEngine, ev: Evaluation) -> None:
        self.book.record(ev)
        engine.apply(ev)

    def count_from_now(self) -> None:
        """The period begins: what the rows before it raised and cleared is not counted (the
        alerts they left open are, when they clear or stay open)."""
        self.counting = True
        for counts in (self.book.opened, self.book.cleared, self.result.opened,
                       self.result.cleared):
            counts.clear()

    def totals(self) -> BacktestResult:
        """The counts per rule and municipality, each alert where its device was when it
        opened (`_settle` counted those of devices that moved)."""
        result, muni = self.result, self.fleet.municipality
        result.heard = self.heard.taken
        for (rule, d), n in self.book.opened.items():
            result.opened[(rule, muni[d])] += n
        for (rule, d), n in self.book.cleared.items():
            result.cleared[(rule, muni[d])] += n
        for rule, d in self.book.open_:
            result.still_open[(rule, muni[d])] += 1
        return result


# Rows dated this long before the rows the backtest reads that reached us after (a clock
# behind, a buffer flushed after an outage) are heard too. Rows dated earlier are not read:
# received_at has no index, and finding them would read all history (and a clock restarted
# at 2000-01-01 has its rows pruned within a day: `retention`).
HEARD_BEFORE_S = 86400.0


# Every row dated this long before the period is replayed before it, whatever the rules'
# reach, so that an alert raised within the day before is open in the rules' state at its
# start (and the sweep's rules are judged from here on).
ALL_ROWS_S = 86400.0


def warm_up_s(rules: Sequence[Rule]) -> float:
    """How long before the period the backtest reads rows to give the rules the state they
    had live at its start: the longest of the rules' reaches (`reach_s`), ALL_ROWS_S at
    least."""
    return max([ALL_ROWS_S, *(reach_s(r) for r in rules if r.kind not in SWEPT)])


def reaching_further(rules: Sequence[Rule]) -> list[Rule]:
    """The rules whose state reaches back further than ALL_ROWS_S (the sweep's aside)."""
    return [r for r in rules if r.kind not in SWEPT and reach_s(r) > ALL_ROWS_S]


@dataclass(frozen=True)
class _Needs:
    """The rows the rules that reach back further than ALL_ROWS_S need: readings of some
    metrics, and events or none. Each rule sees all of its rows or none of them."""

    metrics: tuple[str, ...]
    events: bool

    @classmethod
    def of(cls, rules: Sequence[Rule]) -> _Needs:
        far = reaching_further(rules)
        return cls(tuple(sorted({r.metric for r in far if r.uses_readings})),
                   any(not r.uses_readings for r in far))


def reach_s(rule: Rule) -> float:
    """How far back before a time the rows reach that decide what `rule` does after it,
    where that is bounded by time: a condition's `for` (and the gap that still holds it), a
    dose's window (and the tick's grace), a rate's window, flapping's window and quiet time,
    an event's clearing timer. The sweep's (absence, clock) go by when each device was last
    heard and its latest device time, however long ago (`_last_before`); a run of values
    (stuck, validity) and an alert held by hysteresis or a rate's last reading reach back
    as far as they go on, which no time bounds (0 here)."""
    if rule.kind == "threshold":
        return rule.for_s + rule.gap_s
    if rule.kind == "sequence":
        return rule.within_s + sequence.TICK_GRACE_S
    if rule.kind == "flapping":
        return max(rule.window_s, rule.stable_s)
    if rule.kind == "event":
        return rule.clear_after or 0.0
    if rule.kind == "rate":
        return rule.window_s
    return 0.0


class _Heard:
    """The sweep's view of the fleet, by our clock, as `rule_queries.last_heard` gives it
    live: per device the latest device time (`seen`) and receipt time (`heard`) of the rows
    that reached us by the sweep's time. Rows read whose receipt is later (dated ahead of it
    by a clock behind, or come late) wait until then. `taken` counts the rows that reached
    us in the period, from `start`."""

    def __init__(self, first: float, start: float, end: float) -> None:
        self.first, self.start, self.end = first, start, end
        self.seen, self.heard = np.empty(0), np.empty(0)
        self.taken = 0
        self._dev = np.empty(0, dtype=np.int64)
        self._t, self._at = np.empty(0), np.empty(0)

    def add(self, dev: I64, t: F64, at: F64) -> None:
        """Rows read (device, device time, receipt time); those that reached us after the
        period are left out."""
        within = at < self.end
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
        self.taken += int((self._at[due] >= self.start).sum())
        self._dev, self._t, self._at = self._dev[~due], self._t[~due], self._at[~due]
        return dataclasses.replace(Batch.empty(), m_device=dev, m_time=t)

    def as_live(self, began: F64, n: int) -> tuple[F64, F64]:
        """(seen, heard) per device, as live: each no earlier than the deployment it is in
        (`began`: it is silent from then on), and heard no earlier than seen. A device not
        heard yet (no stored row before) has no device time (NaN) and is heard at its
        deployment (NaN: none known, as for a device not deployed), so that it is silent
        from then on, as a device deployed and never heard is live."""
        seen, heard, began = (_padded(a, n) for a in (self.seen, self.heard, began))
        known = ~np.isnan(seen)
        since = np.fmax(seen, began)
        return (np.where(known, since, np.nan),
                np.where(known, np.fmax(heard, since), began))


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
        self._deployed: dict[str, list[float]] = {}   # by device id: times, in order
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
                self._deployed.setdefault(str(fleet.ids[d]), []).append(float(since))
            if until is not None and start < until < end:
                changes.append(_Change(float(until), d, False, CENTRAL_STOCK))
        for d, (place, deployed) in at_start.items():
            fleet.place(d, place, "deployed" if deployed else "in_stock")
        self._coming = sorted(changes, key=lambda c: (c.at, c.deployed))  # a return first
        self._next = 0

    def kept_from_last_citizen(self, device_id: str, t: float, at: float) -> bool:
        """Whether a row dated `t` that reached us at `at` came after a deployment more
        than BEGAN_MARGIN_S later than `t`: live, it was stored and not evaluated
        (`rule_state.without_last_citizens`), what the device kept from the citizen before
        (a buffer flushed at the next one's home)."""
        return any(t + BEGAN_MARGIN_S <= since <= at
                   for since in self._deployed.get(device_id, ()))

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


# The time of a table's row `n` places after `cursor`, among the rows before `until` (of
# some metrics: `_Needs`).
_NTH_TIME = "SELECT extract(epoch FROM time)::float8 FROM {} " \
    "WHERE time >= to_timestamp(%s) AND time < to_timestamp(%s) ORDER BY time OFFSET %s LIMIT 1"
_NTH_TIME_OF = "SELECT extract(epoch FROM time)::float8 FROM readings " \
    "WHERE time >= to_timestamp(%s) AND time < to_timestamp(%s) AND metric = ANY(%s) " \
    "ORDER BY time OFFSET %s LIMIT 1"

# The first window a batch's end is looked for in, before a batch has shown how far a batch
# reaches: doubled until it holds one.
FIRST_WINDOW_S = 60.0
# After that, the span the last batch took with this margin, so that traffic as steady as
# most is one query a batch (a window that has to double is another).
NEXT_WINDOW_MARGIN = 1.5
SMALLEST_WINDOW_S = 1.0


class _BatchEnds:
    """The device times that close the batches of about `batch_rows` readings and events.

    Each is looked for in a window from the cursor that doubles until it holds that many
    rows: asked of the whole rest of the period, every batch sorted all of it (plain
    PostgreSQL's BRIN index cannot give rows in order), 2 s a batch at 2.8M rows; a window
    is read through the index and sorted alone. The first window is sized from the last
    batch of the same query: begun at 60 s every batch, it took about 8 queries to find an
    end. The row found is the same whatever the window: the `n`th of the rows from the
    cursor, of which the window holds the first."""

    def __init__(self) -> None:
        self._width: dict[str, float] = {}   # per query: the window to look in first

    def end(self, conn: psycopg.Connection, cursor: float, end: float, batch_rows: int,
            needs: _Needs | None = None) -> float:
        """The end of the batch from `cursor` (no later than `end`), counting the rows
        `needs` names (the few rows of the rules that reach further take a few batches,
        not as many as every row would)."""
        upper = end
        readings: tuple[str, sql.SQL | sql.Composed, tuple[object, ...]] = (
            ("readings", sql.SQL(_NTH_TIME).format(sql.Identifier("readings")), ())
            if needs is None else ("readings of", sql.SQL(_NTH_TIME_OF), (list(needs.metrics),)))
        events = ("events", sql.SQL(_NTH_TIME).format(sql.Identifier("events")), ())
        for name, query, more in [readings] + ([events] if needs is None or needs.events
                                               else []):
            found = self._nth_time(conn, name, query, cursor, upper, batch_rows, more)
            if found is not None:
                upper = found
        if upper <= cursor:  # more than batch_rows rows at one instant: take them all
            upper = np.nextafter(cursor, np.inf)
        return float(min(upper, end))

    def _nth_time(self, conn: psycopg.Connection, name: str, query: sql.SQL | sql.Composed,
                  cursor: float, until: float, n: int, more: tuple[object, ...]
                  ) -> float | None:
        """The time of the row `n` places after the first at or after `cursor` and before
        `until` that `query` (`_NTH_TIME`, with `more` parameters) finds; None if it finds
        no more than `n`."""
        width = self._width.get(name, FIRST_WINDOW_S)
        while True:
            upper = min(cursor + width, until)
            row = conn.execute(query, (cursor, upper, *more, n)).fetchone()
            if row is not None:
                found = float(row[0])
                self._width[name] = max((found - cursor) * NEXT_WINDOW_MARGIN,
                                        SMALLEST_WINDOW_S)
                return found
            if upper >= until:
                # fewer rows than a batch up to `until` (the events before the readings'
                # end, as a rule): the next batch looks that far at once
                self._width[name] = width
                return None
            width *= 2


# Of the rows of a device-time range: the rules' columns and when each reached us.
_READINGS = "SELECT device_id, metric, value, extract(epoch FROM time)::float8, " \
    "extract(epoch FROM received_at)::float8 FROM readings " \
    "WHERE time >= to_timestamp(%s) AND time < to_timestamp(%s) ORDER BY time"
# ... readings of some metrics only (the rules' that reach back further than ALL_ROWS_S)
_READINGS_OF = "SELECT device_id, metric, value, extract(epoch FROM time)::float8, " \
    "extract(epoch FROM received_at)::float8 FROM readings " \
    "WHERE time >= to_timestamp(%s) AND time < to_timestamp(%s) AND metric = ANY(%s) " \
    "ORDER BY time"
_EVENTS = "SELECT device_id, code, extract(epoch FROM time)::float8, " \
    "extract(epoch FROM received_at)::float8 FROM events " \
    "WHERE time >= to_timestamp(%s) AND time < to_timestamp(%s) ORDER BY time"


def _load(conn: psycopg.Connection, fleet: Fleet, lo: float, hi: float,
          needs: _Needs | None, not_evaluated: Callable[[str, float, float], bool]
          ) -> tuple[Batch, tuple[I64, F64, F64]] | None:
    """The rows dated in [lo, hi) as a batch, but those that live evaluation did not
    evaluate (`not_evaluated`: device id, time, received), and all of them as rows heard
    (device, time, received); with `needs`, only those it names."""
    if needs is None:
        r = conn.execute(_READINGS, (lo, hi)).fetchall()
    else:
        r = conn.execute(_READINGS_OF, (lo, hi, list(needs.metrics))).fetchall()
    e = conn.execute(_EVENTS, (lo, hi)).fetchall() if needs is None or needs.events else []
    if not r and not e:
        return None
    batch = rule_queries.rows_batch(   # takes in devices it did not know
        conn, fleet, [x for x in r if not not_evaluated(str(x[0]), x[3], x[4])],
        [x for x in e if not not_evaluated(str(x[0]), x[2], x[3])])
    return batch, rule_queries.rows_by_device(fleet, [(x[0], x[3], x[4]) for x in r] +
                                              [(x[0], x[2], x[3]) for x in e])


# Rows dated in a range that reached us in another: the index on time finds them.
_HEARD_DATED = """
SELECT device_id, extract(epoch FROM time)::float8, extract(epoch FROM received_at)::float8
FROM {} WHERE time >= to_timestamp(%s) AND time < to_timestamp(%s)
AND received_at >= to_timestamp(%s) AND received_at < to_timestamp(%s)
"""


def _heard_dated(conn: psycopg.Connection, fleet: Fleet, lo: float, hi: float,
                 since: float, until: float) -> tuple[I64, F64, F64]:
    """Rows dated in [lo, hi) that reached us in [since, until): before the rows read, those
    of a clock behind or a buffer flushed late; after the period, those of a clock ahead."""
    rows: list[tuple[object, ...]] = []
    for table in ("readings", "events"):
        rows += conn.execute(sql.SQL(_HEARD_DATED).format(sql.Identifier(table)),
                             (lo, hi, since, until)).fetchall()
    fleet.resolve(conn, sorted({str(x[0]) for x in rows}))
    return rule_queries.rows_by_device(fleet, rows)


# Per device its latest stored row dated before a time, and when it reached us: for
# readings a probe of the primary key (device, metric, time) per metric (`units.METRICS`),
# for events one of the index (device, time), each from the end.
_LAST_BEFORE = """
SELECT d.device_id, extract(epoch FROM last.time)::float8,
       extract(epoch FROM last.received_at)::float8
FROM devices d
CROSS JOIN LATERAL (
    (SELECT r.time, r.received_at FROM unnest(%(metrics)s::text[]) AS m(metric)
     CROSS JOIN LATERAL (SELECT time, received_at FROM readings
                         WHERE device_id = d.device_id AND metric = m.metric
                         AND time < to_timestamp(%(before)s)
                         ORDER BY time DESC LIMIT 1) r)
    UNION ALL
    (SELECT time, received_at FROM events
     WHERE device_id = d.device_id AND time < to_timestamp(%(before)s)
     ORDER BY time DESC LIMIT 1)
    ORDER BY 1 DESC LIMIT 1) last
"""


def _last_before(conn: psycopg.Connection, fleet: Fleet, before: float
                 ) -> tuple[I64, F64, F64]:
    """Per device, its latest stored row dated before `before` (device time, received): as
    far as the store goes, when we last heard it then, however long ago (a device silent
    for weeks is silent at the start). One that reached us later is heard then."""
    with db.by_key_index(conn):
        rows = conn.execute(_LAST_BEFORE, {"metrics": list(METRICS),
                                           "before": before}).fetchall()
    return rule_queries.rows_by_device(fleet, rows)
