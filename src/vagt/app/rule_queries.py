"""The SQL the rules need, in small named functions: stored history for rate rules, bad
readings, open alerts to seed rule state, the fleet's last-seen times and the sweep's lock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import psycopg

from vagt.devices.fleet import Fleet

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# pg_try_advisory_lock key of the absence sweep: "vagt" "swp" in ASCII, one holder at a time
SWEEP_LOCK_KEY = 0x76616774_737770


def reading_history(conn: psycopg.Connection, fleet: Fleet, metric: str, devices: I64,
                    since: float, until: float) -> tuple[I64, F64, F64]:
    """Stored readings of `metric` of these devices in [since, until), bad ones left out."""
    ids = [fleet.ids[int(d)] for d in devices]
    rows = conn.execute(
        "SELECT r.device_id, extract(epoch FROM r.time)::float8, r.value FROM readings r "
        "WHERE r.device_id = ANY(%s) AND r.metric = %s "
        "AND r.time >= to_timestamp(%s) AND r.time < to_timestamp(%s) "
        "AND NOT EXISTS (SELECT 1 FROM bad_readings b WHERE b.device_id = r.device_id "
        "AND b.metric = r.metric AND b.time = r.time)",
        (ids, metric, since, until)).fetchall()
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty(0), np.empty(0)
    idx = fleet.lookup([str(r[0]) for r in rows])
    t = np.array([r[1] for r in rows], dtype=np.float64)
    v = np.array([r[2] for r in rows], dtype=np.float64)
    ok = idx >= 0
    return idx[ok], t[ok], v[ok]


def insert_bad_readings(conn: psycopg.Connection, device_id: Sequence[str],
                        metric: Sequence[str], time: Sequence[float], value: Sequence[float],
                        vendor: Sequence[str], model: Sequence[str]
                        ) -> Counter[tuple[str, str, str]]:
    """Mark readings bad; returns how many were new per (vendor, model, metric): a reading
    judged again (a redelivery, or late rows evaluated again in order) is not counted twice."""
    if not device_id:
        return Counter()
    rows = conn.execute(
        "INSERT INTO bad_readings (time, device_id, metric, value, vendor, model) "
        "SELECT to_timestamp(t), d, m, v, ve, mo FROM unnest(%s::float8[], %s::text[], "
        "%s::text[], %s::float8[], %s::text[], %s::text[]) AS x(t, d, m, v, ve, mo) "
        "ON CONFLICT DO NOTHING RETURNING vendor, model, metric",
        (list(time), list(device_id), list(metric), list(value), list(vendor),
         list(model))).fetchall()
    return Counter((str(v), str(m), str(k)) for v, m, k in rows)


def open_rule_alerts(conn: psycopg.Connection,
                     rules: Sequence[str] | None = None) -> list[tuple[str, str, float]]:
    """(rule, device id, last fired) of the alerts not resolved, optionally of some rules."""
    sql = ("SELECT rule, device_id, extract(epoch FROM last_fired_at)::float8 FROM alerts "
           "WHERE status <> 'resolved' AND device_id IS NOT NULL")
    params: tuple[object, ...] = ()
    if rules is not None:
        sql += " AND rule = ANY(%s)"
        params = (list(rules),)
    return [(str(r), str(d), float(t)) for r, d, t in conn.execute(sql, params).fetchall()]


def last_seen(conn: psycopg.Connection, fleet: Fleet) -> F64:
    """Per device index, the device time of its latest message as committed by any engine."""
    rows = conn.execute("SELECT device_id, extract(epoch FROM last_seen)::float8 FROM devices "
                        "WHERE last_seen IS NOT NULL").fetchall()
    seen = np.full(len(fleet), np.nan)
    if rows:
        idx = fleet.lookup([str(r[0]) for r in rows])
        t = np.array([r[1] for r in rows], dtype=np.float64)
        ok = (idx >= 0) & (idx < len(seen))
        seen[idx[ok]] = t[ok]
    return seen


def try_sweep_lock(conn: psycopg.Connection) -> bool:
    """Take the sweep's session lock on this connection if nobody holds it (kept until the
    connection closes, so a process that dies hands the sweep to another)."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (SWEEP_LOCK_KEY,)).fetchone()
    return bool(row and row[0])


def stored_rows(conn: psycopg.Connection, fleet: Fleet, devices: I64, since: F64,
                limit: int) -> tuple[tuple[I64, list[str], F64, F64], tuple[I64, list[str], F64]]:
    """Stored readings (device, metric, value, time) and events (device, code, time) of each
    device newer than its `since`, for evaluating them again in order; at most `limit` of
    each (the caller checks: a limit reached is not all of them)."""
    ids = [fleet.ids[int(d)] for d in devices]
    since_list = since.tolist()
    readings = conn.execute(
        "SELECT r.device_id, r.metric, r.value, extract(epoch FROM r.time)::float8 "
        "FROM unnest(%s::text[], %s::float8[]) AS x(device_id, since) "
        "JOIN readings r ON r.device_id = x.device_id AND r.time > to_timestamp(x.since) "
        "LIMIT %s", (ids, since_list, limit)).fetchall()
    events = conn.execute(
        "SELECT e.device_id, e.code, extract(epoch FROM e.time)::float8 "
        "FROM unnest(%s::text[], %s::float8[]) AS x(device_id, since) "
        "JOIN events e ON e.device_id = x.device_id AND e.time > to_timestamp(x.since) "
        "LIMIT %s", (ids, since_list, limit)).fetchall()
    r_dev = fleet.lookup([str(r[0]) for r in readings])
    e_dev = fleet.lookup([str(e[0]) for e in events])
    return ((r_dev, [str(r[1]) for r in readings],
             np.array([r[2] for r in readings], dtype=np.float64),
             np.array([r[3] for r in readings], dtype=np.float64)),
            (e_dev, [str(e[1]) for e in events],
             np.array([e[2] for e in events], dtype=np.float64)))
