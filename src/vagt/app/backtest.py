"""Backtest: replay stored readings and events through rules, in device-time order and in
batches, with the same engine the live pipeline uses, and count per rule and municipality
how many alerts would have opened and cleared. Nothing is written.

Timers run as they would live: after each batch the engine ticks at the batch's latest
device time, and the absence sweep judges silence from the replayed messages.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import psycopg

from vagt.app import rule_queries
from vagt.devices.fleet import Fleet
from vagt.rules import Batch, Rule, RuleEngine
from vagt.rules.book import AlertBook


@dataclass
class BacktestResult:
    start: float
    end: float
    readings: int = 0
    events: int = 0
    batches: int = 0
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
                 end: float, batch_rows: int = 5000) -> BacktestResult:
    engine = RuleEngine(rules, fleet, fleet.catalogue)
    book = AlertBook()
    result = BacktestResult(start, end)
    last_seen = np.full(len(fleet), np.nan)

    def history(metric: str, devices: np.ndarray, since: float, until: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # the whole history: a backtest's period may lie before the device's deployment
        # (its rules do not begin anew at each deployment within the period, as live ones do)
        return rule_queries.reading_history(conn, fleet, metric, devices, since, until,
                                            since_deployed=False)

    cursor = start
    while cursor < end:
        upper = _batch_end(conn, cursor, end, batch_rows)
        batch = _load(conn, fleet, cursor, upper)
        cursor = upper
        if batch is None:
            continue
        result.batches += 1
        result.readings += len(batch.r_device)
        result.events += len(batch.e_device)
        ev = engine.evaluate(batch, history=history)
        book.record(ev)
        engine.apply(ev)
        np.fmax.at(last_seen, batch.m_device, batch.m_time)
        now = float(batch.m_time.max())
        ev = engine.tick(now)
        book.record(ev)
        engine.apply(ev)
        ev = engine.sweep_absence(now, last_seen, list(book.open_))
        book.record(ev)
        engine.apply(ev)
    muni = fleet.municipality
    for (rule, d), n in book.opened.items():
        result.opened[(rule, muni[d])] += n
    for (rule, d), n in book.cleared.items():
        result.cleared[(rule, muni[d])] += n
    for rule, d in book.open_:
        result.still_open[(rule, muni[d])] += 1
    return result


def _batch_end(conn: psycopg.Connection, cursor: float, end: float, batch_rows: int) -> float:
    """The device time that closes a batch of about `batch_rows` readings and events."""
    bounds = []
    for table in ("readings", "events"):
        row = conn.execute(
            f"SELECT extract(epoch FROM time)::float8 FROM {table} "  # table names are ours
            "WHERE time >= to_timestamp(%s) AND time < to_timestamp(%s) "
            "ORDER BY time OFFSET %s LIMIT 1", (cursor, end, batch_rows)).fetchone()
        if row is not None:
            bounds.append(float(row[0]))
    upper = min(bounds) if bounds else end
    if upper <= cursor:  # more than batch_rows rows at one instant: take them all
        upper = np.nextafter(cursor, np.inf)
    return float(min(upper, end))


def _load(conn: psycopg.Connection, fleet: Fleet, lo: float, hi: float) -> Batch | None:
    r = conn.execute(
        "SELECT device_id, metric, value, extract(epoch FROM time)::float8 FROM readings "
        "WHERE time >= to_timestamp(%s) AND time < to_timestamp(%s) ORDER BY time",
        (lo, hi)).fetchall()
    e = conn.execute(
        "SELECT device_id, code, extract(epoch FROM time)::float8 FROM events "
        "WHERE time >= to_timestamp(%s) AND time < to_timestamp(%s) ORDER BY time",
        (lo, hi)).fetchall()
    if not r and not e:
        return None
    return rule_queries.rows_batch(conn, fleet, r, e)
