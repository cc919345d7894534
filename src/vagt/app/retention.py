"""How long stored rows are kept, and the prune that drops older ones (`vagt db prune`, and
the engine's daily `Pruner`).

Readings and events are kept READINGS_RETENTION, on either schema: on TimescaleDB the
retention policies of migration 0002 drop whole chunks, on plain PostgreSQL `prune` deletes
the rows, in short batches of their own transactions so that no lock is held long (a batch's
devices are locked by the lanes meanwhile, never by this). The marks of bad readings go with
their readings; dead letters (the raw bytes of messages that were not stored) are kept
DEAD_LETTER_RETENTION. The vendor report's hourly counts of days older than HOURS_KEPT are
folded into per-day arrays and deleted (plain PostgreSQL, `hours_fold`); their days and
weeks, and the folded hours, are kept. Alerts and their audit trail are never pruned: they
are the record of what the centre was told and did, and no retention rule for them is
written down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg.types.json import Jsonb

from vagt.app import db, hours_fold
from vagt.errors import first_line

log = logging.getLogger("vagt.retention")

# As 0002_timeseries.timescale.sql's add_retention_policy: change both together.
READINGS_RETENTION = "3 years"
# A dead letter is kept to find out why a device's messages were refused, and to replay
# them once the device or vagt is mended: that is done within days or weeks. Its payload is
# a citizen's measurement all the same, with no report to serve, so it is kept far less long
# than readings (data minimisation): 90 days covers a quarter's vendor follow-up.
DEAD_LETTER_RETENTION = "90 days"

# The vendor report's hours are kept this long before they are folded into their days
# (`hours_fold`, migration 0026): whole UTC days, older than this. The refresh and a
# report of recent weeks read hours as before; older ones read their folded counts, the
# same figures. Over a month: a report of the last month reads hours alone.
HOURS_KEPT = "35 days"

# Rows deleted per transaction: a few hundred milliseconds' work, locks held no longer.
BATCH_ROWS = 5000

PRUNE_EVERY_S = 86400.0

# pg_try_advisory_lock key of the prune: "vagt" "prn" in ASCII, one engine at a time
PRUNE_LOCK_KEY = 0x76616774_70726E


@dataclass(frozen=True)
class Pruned:
    """What one prune deleted, and before when. `readings` and `events` are None on
    TimescaleDB: its retention policies drop them, by whole chunks; `hours_folded` (the
    vendor report's hourly rows folded into their days) too: the hours are kept there."""

    readings_before: datetime
    dead_letters_before: datetime
    readings: int | None
    events: int | None
    bad_readings: int
    dead_letters: int
    hours_before: datetime
    hours_folded: int | None


# Oldest first by the BRIN index on time (plain PostgreSQL), at most a batch; ctid: the rows
# just found, without a second search by key.
_DELETE_READINGS = """
DELETE FROM readings WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM readings WHERE time < %s LIMIT %s))
"""
_DELETE_EVENTS = """
DELETE FROM events WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM events WHERE time < %s LIMIT %s))
"""
# A mark goes when its reading has gone: on TimescaleDB a chunk is dropped only once all of
# it is older than the retention, so a reading past it may still be there, and keep its mark.
_DELETE_BAD_READINGS = """
DELETE FROM bad_readings WHERE ctid = ANY(ARRAY(
    SELECT b.ctid FROM bad_readings b
    WHERE b.time < %s AND NOT EXISTS (
        SELECT 1 FROM readings r
        WHERE r.device_id = b.device_id AND r.metric = b.metric AND r.time = b.time)
    LIMIT %s))
"""
_DELETE_DEAD_LETTERS = """
DELETE FROM dead_letters WHERE id = ANY(ARRAY(
    SELECT id FROM dead_letters WHERE received_at < %s LIMIT %s))
"""


def cutoffs(conn: psycopg.Connection, now: datetime) -> tuple[datetime, datetime, datetime]:
    """(readings and events, dead letters, the report's hours): rows before these times are
    dropped (the hours folded). Calendar arithmetic in PostgreSQL, as TimescaleDB's policy
    computes `now() - drop_after`; the hours' at a UTC midnight, so that whole days fold."""
    row = conn.execute(
        "SELECT %(now)s::timestamptz - %(readings)s::interval, "
        "%(now)s::timestamptz - %(dead)s::interval, "
        "date_bin(INTERVAL '1 day', %(now)s::timestamptz - %(hours)s::interval, "
        "TIMESTAMPTZ '2000-01-03 00:00+00')",
        {"now": now, "readings": READINGS_RETENTION, "dead": DEAD_LETTER_RETENTION,
         "hours": HOURS_KEPT}).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def readings_horizon(conn: psycopg.Connection) -> float:
    """The time (Unix seconds) before which readings, events and their bad-reading marks
    may have been pruned by now (`cutoffs`)."""
    return cutoffs(conn, datetime.now(UTC))[0].timestamp()


def prune(conn: psycopg.Connection, now: datetime | None = None,
          batch_rows: int = BATCH_ROWS,
          stop: threading.Event | None = None) -> Pruned:
    """Delete what is older than its retention, `batch_rows` rows per transaction.

    `conn` must be in autocommit mode: each batch commits on its own. On TimescaleDB the
    readings and events are left to its policies. `stop` ends it between two batches (what
    is left goes next time)."""
    if not conn.autocommit:
        raise ValueError("prune commits batch by batch: give it an autocommit connection")
    now = now or datetime.now(UTC)
    readings_before, dead_before, hours_before = cutoffs(conn, now)
    on_timescale = db.recorded_flavour(conn) == "timescale"
    stop = stop or threading.Event()

    def drain(sql: str, before: datetime) -> int:
        total = 0
        while not stop.is_set():
            with conn.transaction():
                n = conn.execute(sql, (before, batch_rows)).rowcount
            total += n
            if n < batch_rows:
                break
        return total

    readings = None if on_timescale else drain(_DELETE_READINGS, readings_before)
    events = None if on_timescale else drain(_DELETE_EVENTS, readings_before)
    return Pruned(readings_before, dead_before, readings, events,
                  drain(_DELETE_BAD_READINGS, readings_before),
                  drain(_DELETE_DEAD_LETTERS, dead_before), hours_before,
                  None if on_timescale else hours_fold.fold(conn, hours_before, batch_rows,
                                                            stop))


def prune_if_first(conn: psycopg.Connection, now: datetime | None = None,
                   stop: threading.Event | None = None,
                   before: Callable[[], None] = lambda: None) -> Pruned | None:
    """`prune`, unless another process is pruning (None then): two would only wait for each
    other's row locks. `before`: what is done first once it is this process's to do (the
    command's audit row of who asked)."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (PRUNE_LOCK_KEY,)).fetchone()
    if not (row and row[0]):
        return None
    try:
        before()
        return prune(conn, now, stop=stop)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK_KEY,))


def audit_prune_asked(conn: psycopg.Connection, actor: str, via: str) -> None:
    """`db.prune.asked` before a prune asked for deletes anything: it commits batch by batch,
    and a database lost before its `db.prune` row (`audit_prune`) would leave deletions no
    row names the asker of."""
    conn.execute("INSERT INTO audit_log (actor, action, subject, details) "
                 "VALUES (%s, 'db.prune.asked', 'database', %s)", (actor, Jsonb({"via": via})))


def audit_prune(conn: psycopg.Connection, p: Pruned, actor: str, via: str) -> None:
    """A prune asked for (`vagt db prune`) in `audit_log`, `db.prune`: citizens' measurements
    were deleted on someone's word, so the record says whose, when, how many and before
    when. `via`: the login the command ran under. The engine's daily prune asks no one's
    word: its log line (`event=pruned`) says what it did."""
    details = {"readings": p.readings, "events": p.events, "bad_readings": p.bad_readings,
               "dead_letters": p.dead_letters, "hours_folded": p.hours_folded,
               "readings_before": p.readings_before.isoformat(),
               "dead_letters_before": p.dead_letters_before.isoformat(),
               "hours_before": p.hours_before.isoformat(), "via": via}
    conn.execute("INSERT INTO audit_log (actor, action, subject, details) "
                 "VALUES (%s, 'db.prune', 'database', %s)", (actor, Jsonb(details)))


def describe(p: Pruned) -> str:
    """What `vagt db prune` prints."""
    if p.readings is None:
        stored = ("readings and events: TimescaleDB's retention policies drop them "
                  f"({READINGS_RETENTION}, by whole chunks)")
    else:
        stored = f"{p.readings} readings and {p.events} events"
    if p.hours_folded is None:
        hours = "the report's hours: kept in TimescaleDB's continuous aggregates"
    else:
        hours = (f"folded {p.hours_folded} of the report's hourly counts into their days "
                 f"(before {p.hours_before.isoformat()})")
    return (f"deleted {stored}; {p.bad_readings} bad-reading marks (before "
            f"{p.readings_before.isoformat()}); {p.dead_letters} dead letters (before "
            f"{p.dead_letters_before.isoformat()}); {hours}")


class Pruner:
    """The engine's daily prune, in a thread of its own: soon after the start, then every
    PRUNE_EVERY_S. With several engines the first to take the lock prunes."""

    def __init__(self, conninfo: str, clock: Callable[[], float],
                 every_s: float = PRUNE_EVERY_S) -> None:
        self.conninfo = conninfo
        self.clock = clock
        self.every_s = every_s

    def run(self, stop: threading.Event) -> None:
        # not at once: the start has the fleet and the backlog to take first
        wait = min(60.0, self.every_s)
        while not stop.wait(wait):
            wait = self.every_s
            try:
                self.prune_once(stop)
            except psycopg.OperationalError as e:
                log.warning("event=prune_failed error=%r note=trying_again_next_time",
                            first_line(e))

    def prune_once(self, stop: threading.Event | None = None) -> Pruned | None:
        with psycopg.connect(db.with_network_timeouts(self.conninfo),
                             autocommit=True) as conn:
            done = prune_if_first(conn, datetime.fromtimestamp(self.clock(), UTC), stop)
        if done is None:
            log.info("event=prune_skipped note=another_process_prunes")
        else:
            log.info("event=pruned readings=%s events=%s bad_readings=%d dead_letters=%d "
                     "hours_folded=%s", done.readings, done.events, done.bad_readings,
                     done.dead_letters, done.hours_folded)
        return done
