"""The SQL the rules need, in small named functions: stored history for rate rules, bad
readings, open alerts to seed rule state, when the fleet was last heard and the sweep's lock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg

from vagt.app import db
from vagt.app.rule_state import BEGAN_MARGIN_S
from vagt.arrays import F64, I64
from vagt.devices.fleet import SILENT_FROM, Fleet
from vagt.ingest.units import METRICS
from vagt.rules import Batch

# pg_try_advisory_lock key of the absence sweep: "vagt" "swp" in ASCII, one holder at a time
SWEEP_LOCK_KEY = 0x76616774_737770
LAST_HEARD_PART = 10_000    # devices' rows a round trip, in the absence sweep's read


def reading_history(conn: psycopg.Connection, fleet: Fleet, metric: str, devices: I64,
                    since: float, until: float, since_deployed: bool = True
                    ) -> tuple[I64, F64, F64]:
    """Stored readings of `metric` of these devices in [since, until), bad ones left out;
    with `since_deployed`, also those from more than BEGAN_MARGIN_S before the device's rule
    state began (its deployment to the citizen it is with, migration 0010), as the rules
    skip them when they come (`rule_state.without_last_citizens`)."""
    ids = [fleet.ids[int(d)] for d in devices]
    rows = conn.execute(
        "SELECT r.device_id, extract(epoch FROM r.time)::float8, r.value FROM readings r "
        "LEFT JOIN rule_state s ON s.device_id = r.device_id "
        "WHERE r.device_id = ANY(%s) AND r.metric = %s "
        "AND r.time >= to_timestamp(%s) AND r.time < to_timestamp(%s) "
        "AND (NOT %s OR r.time >= coalesce(s.began - make_interval(secs => %s), "
        "'-infinity')) "
        "AND NOT EXISTS (SELECT 1 FROM bad_readings b WHERE b.device_id = r.device_id "
        "AND b.metric = r.metric AND b.time = r.time)",
        (ids, metric, since, until, since_deployed, BEGAN_MARGIN_S)).fetchall()
    return rows_by_device(fleet, rows)


def rows_by_device(fleet: Fleet, rows: Sequence[Sequence[Any]]) -> tuple[I64, F64, F64]:
    """Rows (device id, a, b) of two numbers (a device time, a value, when it reached us)
    as columns: (device index, a, b); rows of devices the fleet does not know are left
    out."""
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty(0), np.empty(0)
    idx = fleet.lookup([str(r[0]) for r in rows])
    a = np.array([r[1] for r in rows], dtype=np.float64)
    b = np.array([r[2] for r in rows], dtype=np.float64)
    ok = idx >= 0
    return idx[ok], a[ok], b[ok]


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


def unresolved(conn: psycopg.Connection, fingerprints: Sequence[str]) -> set[str]:
    """Of `fingerprints`, those with an alert not resolved."""
    if not fingerprints:
        return set()
    return {str(r[0]) for r in conn.execute(
        "SELECT fingerprint FROM alerts WHERE fingerprint = ANY(%s) AND status <> 'resolved'",
        (list(fingerprints),))}


def last_heard(conn: psycopg.Connection, fleet: Fleet) -> tuple[F64, F64]:
    """Per device index, as committed by any engine: the device time of its latest message
    and when the broker received it, by our clock (migration 0020); each the time its
    deployment began instead if that is later (`fleet.SILENT_FROM`): a device given to
    another citizen is silent from its deployment on, not from its last message to the
    citizen before (migration 0010). The absence sweep judges silence by the second: a
    device's clock may be wrong. A deployed device never heard has no device time (NaN)
    and is heard, for the sweep, when it was deployed: installed at a citizen's home and
    never connected, it is silent once its limit has passed since. NaN for both: never
    heard and not deployed (it may be on a shelf). Never before the first: an engine of
    the release before migration 0020, sharing the subscription while the engines are
    upgraded one by one, moves `last_seen` and not `last_heard`, and its devices would seem
    silent.

    Read in parts of LAST_HEARD_PART through a cursor on the server (in the caller's
    transaction): the whole fleet at once, its rows as Python tuples and libpq's copy of
    them, left a process a few MB larger at each of its first sweeps at 100,000 devices
    (freed, and kept by the allocators; docs/performance.md, "tenth session"). It is not
    the engine's step in memory in a soak, which is the rules' state arrays ("eleventh
    session")."""
    seen, heard = np.full(len(fleet), np.nan), np.full(len(fleet), np.nan)
    query = ("SELECT d.device_id, extract(epoch FROM CASE WHEN d.last_seen IS NOT NULL "
             f"THEN greatest(d.last_seen, {SILENT_FROM}) END)::float8, "
             f"extract(epoch FROM greatest(d.last_heard, d.last_seen, {SILENT_FROM}))::float8 "
             "FROM devices d LEFT JOIN rule_state s ON s.device_id = d.device_id "
             "WHERE d.last_seen IS NOT NULL OR d.status = 'deployed'")
    with db.in_parts(conn, "vagt_last_heard", query, part=LAST_HEARD_PART) as parts:
        for rows in parts:
            idx = fleet.lookup([str(r[0]) for r in rows])
            ok = (idx >= 0) & (idx < len(seen))
            seen[idx[ok]] = np.array([r[1] for r in rows], dtype=np.float64)[ok]
            heard[idx[ok]] = np.array([r[2] for r in rows], dtype=np.float64)[ok]
    return seen, heard


def try_sweep_lock(conn: psycopg.Connection) -> bool:
    """Take the sweep's session lock on this connection if nobody holds it (kept until the
    connection closes, so a process that dies hands the sweep to another)."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (SWEEP_LOCK_KEY,)).fetchone()
    return bool(row and row[0])


def rows_batch(conn: psycopg.Connection, fleet: Fleet, readings: Sequence[Sequence[Any]],
               events: Sequence[Sequence[Any]]) -> Batch:
    """Stored rows as a batch for the rules: readings (device id, metric, value, time) and
    events (device id, code, time), each row a message; rows of unregistered devices are
    left out."""
    r_dev = fleet.resolve(conn, [str(x[0]) for x in readings])
    e_dev = fleet.resolve(conn, [str(x[0]) for x in events])
    rk, ek = r_dev >= 0, e_dev >= 0
    r_time = np.array([x[3] for x in readings], dtype=np.float64)[rk] if readings \
        else np.empty(0)
    e_time = np.array([x[2] for x in events], dtype=np.float64)[ek] if events else np.empty(0)
    return Batch(
        r_device=r_dev[rk], r_metric=np.array([x[1] for x in readings], dtype=object)[rk],
        r_value=np.array([x[2] for x in readings], dtype=np.float64)[rk] if readings
        else np.empty(0),
        r_time=r_time, e_device=e_dev[ek],
        e_code=np.array([x[1] for x in events], dtype=object)[ek], e_time=e_time,
        m_device=np.concatenate([r_dev[rk], e_dev[ek]]),
        m_time=np.concatenate([r_time, e_time]))


# A device's readings by the primary key (device, metric, time), each metric's from `since`
# on: the key's prefix alone (device) read a device's whole history and left the time to a
# filter, and with 20 late devices the planner hashed a scan of the whole table instead
# (265 ms at 2.8M rows, in the batch's transaction, holding its devices' rows). Readings
# hold only the metrics vagt knows (`units.METRICS`; any other is a dead letter).
_STORED_READINGS = """
SELECT r.device_id, r.metric, r.value, extract(epoch FROM r.time)::float8
FROM unnest(%s::text[], %s::float8[]) AS x(device_id, since)
CROSS JOIN unnest(%s::text[]) AS m(metric)
JOIN readings r ON r.device_id = x.device_id AND r.metric = m.metric
                   AND r.time > to_timestamp(x.since)
LIMIT %s
"""
# Event codes are any the devices send: the index on (device, time) of migration 0018.
_STORED_EVENTS = """
SELECT e.device_id, e.code, extract(epoch FROM e.time)::float8
FROM unnest(%s::text[], %s::float8[]) AS x(device_id, since)
JOIN events e ON e.device_id = x.device_id AND e.time > to_timestamp(x.since)
LIMIT %s
"""


def stored_batch(conn: psycopg.Connection, fleet: Fleet, devices: I64, since: F64,
                 limit: int) -> Batch | None:
    """Every stored reading and event of each device newer than its `since`, as a batch, for
    evaluating them again in order; None if there are `limit` or more of either."""
    ids = [fleet.ids[int(d)] for d in devices]
    since_list = since.tolist()
    with db.by_key_index(conn):
        readings = conn.execute(_STORED_READINGS,
                                (ids, since_list, list(METRICS), limit)).fetchall()
        events = conn.execute(_STORED_EVENTS, (ids, since_list, limit)).fetchall()
    if len(readings) >= limit or len(events) >= limit:
        return None
    return rows_batch(conn, fleet, readings, events)
