"""Bulk writes of one batch: readings, events, dead letters and device state.

Rows are COPYed into per-connection staging tables, then inserted with ON CONFLICT DO NOTHING
(COPY has no ON CONFLICT), so a redelivered message inserts nothing; a reading that brings
another value than the one stored is told apart from it (`insert_readings`). Binary COPY: half
the Python time per row of the text format (measured with psycopg's C build).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from vagt.app import db
from vagt.ingest.model import DeadLetter

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_readings (
    t float8, device_id text, metric text, value float8, unit text, received float8
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_events (
    t float8, device_id text, code text, severity text, details text, received float8, i int4
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_device_state (
    device_id text, seen float8, heard float8, battery float8, battery_t float8, signal float8,
    signal_t float8, firmware text, firmware_t float8, seq int8, seq_min int8, seq_n int8,
    seq_bits int8, seq_all int8[], first float8, registry text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_dead (
    received float8, topic text, payload bytea, reason text, detail text, device_id text,
    digest bytea
) ON COMMIT DELETE ROWS;
"""

# In key order: the primary key's index takes them 7-10 % faster than in arrival order. Two
# values of one key in a batch (two messages): the one that came first is stored.
_INSERT_READINGS = """
INSERT INTO readings (time, device_id, metric, value, unit, received_at)
SELECT to_timestamp(t), device_id, metric, value, unit, to_timestamp(received)
FROM stage_readings ORDER BY device_id, metric, t, received
"""

_INSERT_EVENTS = """
INSERT INTO events (time, device_id, code, severity, details, received_at)
SELECT to_timestamp(t), device_id, code, severity, details::jsonb, to_timestamp(received)
FROM stage_events ORDER BY device_id, code, t, i
"""

# A reading stored before (a redelivery): per device, how many of its readings were new
_INSERT_READINGS_NEW = """
WITH stored AS (
""" + _INSERT_READINGS + """ON CONFLICT DO NOTHING
RETURNING device_id
)
SELECT device_id, count(*) FROM stored GROUP BY device_id
"""

# After a reading was stored before: the readings of the devices given (those with a reading
# not stored now) that another value of their device, metric and time was stored before (by
# an earlier message, or one earlier in the batch), and that value. One that was stored now
# is its own row, of the same value.
_CONFLICTING_READINGS = """
SELECT s.device_id, s.metric, s.t, r.value
FROM stage_readings s
JOIN readings r ON r.device_id = s.device_id AND r.metric = s.metric
               AND r.time = to_timestamp(s.t)
WHERE s.device_id = ANY(%s) AND r.value <> s.value
"""

# An event stored before (a redelivery) or twice in the batch: the staging rows that were
# stored now, each event's first (see `insert_events`)
_INSERT_EVENTS_NEW = """
WITH stored AS (
""" + _INSERT_EVENTS + """ON CONFLICT DO NOTHING
RETURNING device_id, code, time
)
SELECT min(s.i) FROM stage_events s
JOIN stored USING (device_id, code) WHERE stored.time = to_timestamp(s.t)
GROUP BY s.device_id, s.code, s.t
"""

# After an event was stored before: those of the staging rows given (the ones not stored
# now) whose severity or details differ from the event stored for their device, code and
# time (by an earlier message, or one earlier in the batch), and what is stored (the details
# as JSON text of one form, the stored and the staged).
_CLASHING_EVENTS = """
SELECT s.i, e.severity, e.details::text, s.details::jsonb::text
FROM stage_events s
JOIN events e ON e.device_id = s.device_id AND e.code = s.code AND e.time = to_timestamp(s.t)
WHERE s.i = ANY(%s) AND (e.severity <> s.severity OR e.details <> s.details::jsonb)
"""

_INSERT_DEAD = """
INSERT INTO dead_letters (received_at, topic, payload, reason, detail, device_id, digest)
SELECT to_timestamp(received), topic, payload, reason, detail, device_id, digest FROM stage_dead
ON CONFLICT (digest) DO NOTHING
RETURNING digest
"""

# Returns the devices whose rows in the batch begin at or before the latest the rules had
# seen (`seen_before`, the old `last_seen`: RETURNING has only new values): late rows; and
# those whose registry fields are not what the engine took them for (`registry`, see
# `Fleet.registry_key`, fields joined by chr(31)): deployed, returned or retired since it
# last read them.
_UPDATE_DEVICES = """
WITH moved AS (
UPDATE devices d SET
    seen_before = d.last_seen,
    last_seen = GREATEST(d.last_seen, to_timestamp(v.seen)),
    last_heard = GREATEST(d.last_heard, to_timestamp(v.heard)),
    battery = CASE WHEN v.battery_t IS NOT NULL
                    AND (d.battery_at IS NULL OR to_timestamp(v.battery_t) >= d.battery_at)
                   THEN v.battery ELSE d.battery END,
    battery_at = GREATEST(d.battery_at, to_timestamp(v.battery_t)),
    signal = CASE WHEN v.signal_t IS NOT NULL
                   AND (d.signal_at IS NULL OR to_timestamp(v.signal_t) >= d.signal_at)
                  THEN v.signal ELSE d.signal END,
    signal_at = GREATEST(d.signal_at, to_timestamp(v.signal_t)),
    firmware = CASE WHEN v.firmware_t IS NOT NULL
                     AND (d.firmware_at IS NULL OR to_timestamp(v.firmware_t) >= d.firmware_at)
                    THEN v.firmware ELSE d.firmware END,
    firmware_at = GREATEST(d.firmware_at, to_timestamp(v.firmware_t)),
    last_seq = GREATEST(d.last_seq, v.seq),
    seq_window = vagt_seq_window(d.last_seq, d.seq_window, v.seq, v.seq_min, v.seq_bits),
    seq_gaps = vagt_seq_gaps(d.seq_gaps, d.last_seq, d.seq_window, v.seq, v.seq_min,
                             v.seq_n, v.seq_bits, v.seq_all)
FROM stage_device_state v
WHERE d.device_id = v.device_id
RETURNING d.device_id, d.seen_before, v.first, v.registry,
          concat_ws(chr(31), d.vendor, d.model, d.type, d.municipality, d.status) AS now,
          d.vendor, d.model, d.type, d.municipality, d.status
)
SELECT device_id, CASE WHEN seen_before >= to_timestamp(first)
                       THEN extract(epoch FROM seen_before)::float8 END,
       CASE WHEN registry IS DISTINCT FROM now THEN ARRAY[vendor, model, type, municipality,
                                                          status] END
FROM moved
WHERE seen_before >= to_timestamp(first) OR registry IS DISTINCT FROM now
"""



def prepare_connection(conn: psycopg.Connection) -> None:
    """Create this connection's staging tables (the pool calls it for every new connection)."""
    conn.execute(_STAGING)
    conn.commit()


def insert_readings(
    conn: psycopg.Connection,
    device: Sequence[str], metric: Sequence[str], value: npt.NDArray[np.float64],
    unit: Sequence[str], time: npt.NDArray[np.float64], received: npt.NDArray[np.float64],
) -> tuple[int, set[str] | None, list[tuple[str, str, float, float]]]:
    """Insert readings; returns how many were new (not stored before), the devices that had
    new ones (None: every device; known only when a reading was stored before), and the
    readings that were not stored because another value of their device, metric and time
    was: (device, metric, time, the value stored). A redelivery stores nothing and is none
    of them. Looked for only when a reading was stored before (the INSERT failed on the
    key), among the readings of the devices that had one not stored now: a batch without
    one pays nothing, and one with a reading sent again little."""
    if len(device) == 0:
        return 0, None, []
    with conn.cursor() as cur:
        with cur.copy("COPY stage_readings (t, device_id, metric, value, unit, received) "
                      "FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["float8", "text", "text", "float8", "text", "float8"])
            write = copy.write_row
            for row in zip(time.tolist(), device, metric, value.tolist(), unit,
                           received.tolist()):
                write(row)
        inserted, per_device = _insert_new(cur, _INSERT_READINGS, _INSERT_READINGS_NEW)
        if per_device is None:
            return inserted, None, []
        new = {str(d): int(n) for d, n in per_device}
        short = [d for d, n in Counter(device).items() if new.get(d, 0) < n]
        conflicting = []
        if short:
            with db.by_key_index(conn, scans=True):   # no hash join reading all readings
                conflicting = [(str(d), str(m), float(t), float(v)) for d, m, t, v in
                               cur.execute(_CONFLICTING_READINGS, (short,)).fetchall()]
    return sum(new.values()), set(new), conflicting


@dataclass(frozen=True, slots=True)
class Clash:
    """An event not stored: another with the same device, code and time was, with the
    severity and details given (`insert_events`); `details`, the event's own, as JSON text
    of the same form."""

    index: int
    stored_severity: str
    stored_details: str
    details: str


def insert_events(
    conn: psycopg.Connection,
    device: Sequence[str], code: Sequence[str], severity: Sequence[str],
    details: Sequence[str], time: npt.NDArray[np.float64], received: npt.NDArray[np.float64],
) -> tuple[int, npt.NDArray[np.bool_] | None, list[Clash]]:
    """Insert events; returns how many were new, which were (None: every one), and those not
    stored because an event of their device, code and time with another severity or other
    details was (`Clash`). Of one key twice in the batch, the first is stored.

    An event stored before was evaluated by the rules when it came first: a message delivered
    again (the engine stopped between its commit and the broker's acknowledgement) or sent
    twice must not count twice in its alert. Told apart from another event at a stored key
    only when an event was stored before (as `insert_readings`)."""
    if len(device) == 0:
        return 0, None, []
    with conn.cursor() as cur:
        with cur.copy("COPY stage_events (t, device_id, code, severity, details, received, i) "
                      "FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["float8", "text", "text", "text", "text", "float8", "int4"])
            for row in zip(time.tolist(), device, code, severity, details, received.tolist(),
                           range(len(device))):
                copy.write_row(row)
        inserted, firsts = _insert_new(cur, _INSERT_EVENTS, _INSERT_EVENTS_NEW)
        if firsts is None:
            return inserted, None, []
        new = np.zeros(len(device), dtype=bool)
        new[[int(r[0]) for r in firsts]] = True
        with db.by_key_index(conn, scans=True):   # no hash join reading all events
            clashing = [Clash(int(i), str(sev), str(det), str(came)) for i, sev, det, came
                        in cur.execute(_CLASHING_EVENTS,
                                       (np.flatnonzero(~new).tolist(),)).fetchall()]
    return inserted, new, clashing


def _insert_new(cur: psycopg.Cursor[Any], insert: str,
                again: str | None = None) -> tuple[int, list[tuple[Any, ...]] | None]:
    """Run `insert` (of a staging table's rows); returns how many rows were new, and, if a
    row was stored before, what `again` returned.

    A plain INSERT first, in a savepoint: with ON CONFLICT DO NOTHING, PostgreSQL looks each
    row up in the key's index before it inserts it (a speculative insertion), and that cost
    a third of the time of a batch's readings. If a row was stored before (a batch delivered
    again after a crash, or a device that sent one reading twice), the INSERT fails on the
    key, and goes again as `again` (by default `insert` with ON CONFLICT DO NOTHING): only
    the new rows are stored (the server's log shows the first attempt as a duplicate key
    error).
    """
    cur.execute("SAVEPOINT vagt_insert")
    rows = None
    try:
        cur.execute(insert)
    except psycopg.errors.UniqueViolation:
        cur.execute("ROLLBACK TO SAVEPOINT vagt_insert")
        if again is None:
            cur.execute(insert + " ON CONFLICT DO NOTHING")
        else:
            rows = cur.execute(again).fetchall()
    inserted = cur.rowcount
    cur.execute("RELEASE SAVEPOINT vagt_insert")
    return inserted, rows


def insert_dead_letters(conn: psycopg.Connection, dead: Sequence[DeadLetter]) -> list[bool]:
    """Keep every dead letter with its raw bytes and reason; the same bytes are kept once.
    Returns, for each, whether it was kept now: False for bytes on the same topic kept
    before (a broker's redelivery, a retained copy sent again at a subscribe, a device
    sending them again) or earlier in `dead`."""
    if not dead:
        return []
    digests = [dead_letter_digest(d.topic, d.payload) for d in dead]
    with conn.cursor() as cur:
        with cur.copy("COPY stage_dead (received, topic, payload, reason, detail, device_id, "
                      "digest) FROM STDIN") as copy:
            for d, digest in zip(dead, digests):
                copy.write_row((d.received_at, d.topic, d.payload, d.reason.value, d.detail,
                                d.device_id, digest))
        fresh = {bytes(r[0]) for r in cur.execute(_INSERT_DEAD).fetchall()}
    kept = []
    for digest in digests:
        kept.append(digest in fresh)
        fresh.discard(digest)   # a second one in the batch was not kept
    return kept


def registered_in_other_case(conn: psycopg.Connection, device_ids: Sequence[str]
                             ) -> dict[str, str]:
    """For ids the registry does not have, a registered id differing from each only in case
    (device ids are case-sensitive; one a person reads as the same is worth naming). A scan
    of `devices`, only for batches with unknown devices."""
    if not device_ids:
        return {}
    rows = conn.execute(
        "SELECT DISTINCT ON (lower(device_id)) lower(device_id), device_id FROM devices "
        "WHERE lower(device_id) = ANY(%s) ORDER BY lower(device_id), device_id",
        ([d.lower() for d in device_ids],)).fetchall()
    by_lower: dict[str, str] = dict(rows)
    return {d: by_lower[d.lower()] for d in device_ids if d.lower() in by_lower}


def dead_letter_digest(topic: str, payload: bytes) -> bytes:
    return hashlib.sha256(topic.encode("utf-8", "replace") + b"\0" + payload).digest()


def update_device_state(
    conn: psycopg.Connection, device_id: Sequence[str], seen: Sequence[float],
    heard: Sequence[float],
    battery: Sequence[float | None], battery_t: Sequence[float | None],
    signal: Sequence[float | None], signal_t: Sequence[float | None],
    firmware: Sequence[str | None], firmware_t: Sequence[float | None],
    seq: Sequence[int | None], seq_min: Sequence[int | None], seq_n: Sequence[int | None],
    seq_bits: Sequence[int | None], seq_all: Sequence[list[int] | None],
    first: Sequence[float], registry: Sequence[str],
) -> tuple[list[tuple[str, float]], list[tuple[str, ...]]]:
    """Fleet state per device: last seen (device time), last heard (the broker's receipt
    time, by our clock: silence is judged from it, migration 0020), battery, signal,
    firmware, message counter, gaps (from the batch's counters: highest, lowest, how many,
    which came; migrations 0013-14).
    `first`: the device time the device's rows in the batch begin at; `registry`: the
    registry fields the engine took each device for (`Fleet.registry_key`). Returns (device id,
    last seen before) of the devices whose rows begin at or before their last seen: late
    rows (see `Pipeline._evaluate_locked`); and the registry rows (device id, vendor, model,
    type, municipality, status) of those whose fields are others now."""
    if not device_id:
        return [], []
    with conn.cursor() as cur:
        with cur.copy("COPY stage_device_state FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["text", "float8", "float8", "float8", "float8", "float8",
                            "float8", "text", "float8", "int8", "int8", "int8", "int8",
                            "int8[]", "float8", "text"])
            for row in zip(device_id, seen, heard, battery, battery_t, signal, signal_t, firmware,
                           firmware_t, seq, seq_min, seq_n, seq_bits, seq_all, first, registry):
                copy.write_row(row)
        with db.by_key_index(conn, scans=True):
            rows = cur.execute(_UPDATE_DEVICES).fetchall()
    return ([(str(d), float(t)) for d, t, _ in rows if t is not None],
            [(str(d), *fields) for d, _, fields in rows if fields is not None])
