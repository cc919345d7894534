"""Table statistics and dead rows kept by the engine itself where autovacuum is off.

PostgreSQL's planner chooses each plan from the tables' statistics, which autovacuum
gathers (ANALYZE, once a tenth of a table has changed), and autovacuum clears the dead rows
every UPDATE and DELETE leaves (VACUUM, once they are a fifth of it). With autovacuum off
(a database set up for bulk loads, and this project's CI database), the statistics stay
those of the empty tables of the first migration: the planner then reads the whole
`alerts` table for each alarm, to see whether its device had one already. Measured on the
alarm lane's pipeline (`benchmarks/alarm_devices.py`), 4 alarms a batch: 38 ms a batch
at the start, 85 ms after 12,000 alarms, 175 ms after 30,000, rising with every alert ever
raised; 27 ms and flat from the moment the tables were analyzed. And the `devices` table,
updated by every message, grows by a dead row per message.

So the engine says at start that autovacuum is off (`event=database_autovacuum_off`), and
then does for its own tables (those of its schema) what autovacuum would, with
autovacuum's default thresholds, every CHECK_EVERY_S: the first engine to take the lock
does it, the others skip that round.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
from psycopg import sql

from vagt.app import db
from vagt.errors import first_line

log = logging.getLogger("vagt.statistics")

CHECK_EVERY_S = 60.0
FIRST_CHECK_S = 10.0    # a database of stale statistics is mended soon after the start
# autovacuum's defaults (autovacuum_analyze_threshold and _scale_factor, and the vacuum's)
ANALYZE_ROWS, ANALYZE_SHARE = 50, 0.1
VACUUM_ROWS, VACUUM_SHARE = 50, 0.2
# pg_try_advisory_lock key: "vagt" "sts" in ASCII, one engine at a time
LOCK_KEY = 0x76616774_737473

_DUE = """
SELECT s.relname, s.n_dead_tup > %(vr)s + %(vs)s * greatest(c.reltuples, 0) AS vacuum
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = current_schema()
  AND (s.n_dead_tup > %(vr)s + %(vs)s * greatest(c.reltuples, 0)
       OR s.n_mod_since_analyze > %(ar)s + %(as)s * greatest(c.reltuples, 0))
ORDER BY s.relname
"""


def autovacuum_on(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT current_setting('autovacuum')").fetchone()
    return row is not None and row[0] == "on"


def keep_up(conn: psycopg.Connection) -> list[tuple[str, bool]] | None:
    """One round on an autocommit connection: VACUUM (ANALYZE) each table of the schema
    with more dead rows than autovacuum would leave, ANALYZE each other one changed more
    than it would leave unanalyzed. Returns (table, vacuumed) of each, None if another
    engine holds the lock."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
    if row is None or not row[0]:
        return None
    try:
        due = [(str(name), bool(vacuum)) for name, vacuum in conn.execute(_DUE, {
            "vr": VACUUM_ROWS, "vs": VACUUM_SHARE, "ar": ANALYZE_ROWS, "as": ANALYZE_SHARE,
        }).fetchall()]
        for name, vacuum in due:
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}" if vacuum else "ANALYZE {}").format(
                sql.Identifier(name)))
        return due
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


class StatisticsKeeper:
    """The engine's stand-in for autovacuum, in a thread of its own (see the module's text)."""

    def __init__(self, conninfo: str, every_s: float = CHECK_EVERY_S) -> None:
        self.conninfo = conninfo
        self.every_s = every_s

    def run(self, stop: threading.Event) -> None:
        wait = min(FIRST_CHECK_S, self.every_s)
        while not stop.wait(wait):
            wait = self.every_s
            started = time.monotonic()
            try:
                with psycopg.connect(db.with_network_timeouts(self.conninfo),
                                     autocommit=True) as conn:
                    done = keep_up(conn)
            except psycopg.Error as e:   # the database away: the next round tries again
                log.warning("event=table_upkeep_failed error=%r", first_line(e))
                continue
            if done:
                log.info("event=tables_kept analyzed=%s vacuumed=%s ms=%.0f",
                         ",".join(n for n, v in done if not v) or "-",
                         ",".join(n for n, v in done if v) or "-",
                         (time.monotonic() - started) * 1000)
