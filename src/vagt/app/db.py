"""Database access: the connection pool and the numbered migrations.

Migrations are `migrations/NNNN_name.sql`, applied in order, each in its own transaction and
recorded in `schema_migrations`. A migration may come in two flavours,
`NNNN_name.timescale.sql` and `NNNN_name.plain.sql`: the first is used when the TimescaleDB
extension is available, the second otherwise, so the same schema runs on either.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
import psycopg.abc
import psycopg.conninfo
from psycopg_pool import ConnectionPool

from vagt.errors import first_line

log = logging.getLogger("vagt.db")

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(timescale|plain))?\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    flavour: str  # "any", "timescale" or "plain"
    sql: str


def list_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("vagt.app.migrations").iterdir():
        m = _MIGRATION_NAME.match(entry.name)
        if m:
            found.append(
                Migration(int(m.group(1)), m.group(2), m.group(3) or "any", entry.read_text())
            )
    return sorted(found, key=lambda m: (m.version, m.flavour))


def timescale_available(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    return row is not None


# What a TimescaleDB that lacks a feature answers (the Apache licence's "not supported under
# the current license", a function or option an older release does not have). Anything else
# (a timeout, a deadlock, a missing privilege) stops the migration: a passing error must not
# make a database plain PostgreSQL for good.
_REFUSED_FEATURE = (psycopg.errors.FeatureNotSupported, psycopg.errors.UndefinedFunction,
                    psycopg.errors.UndefinedObject, psycopg.errors.InvalidParameterValue)


# What CREATE EXTENSION answers for a TimescaleDB this server cannot use: not in the
# prerequisite state, or its files missing; not preloaded is an XX000 whose text says so
# (`_unusable`). A missing privilege stops the migration, as any passing error does.
_UNUSABLE_EXTENSION = (*_REFUSED_FEATURE, psycopg.errors.ObjectNotInPrerequisiteState,
                       psycopg.errors.UndefinedFile)


def _unusable(e: psycopg.Error) -> bool:
    return isinstance(e, _UNUSABLE_EXTENSION) or (
        isinstance(e, psycopg.errors.InternalError_) and "preload" in str(e))


def recorded_flavour(conn: psycopg.Connection) -> str | None:
    """The flavour of the migrations applied before, if any had two ('timescale', 'plain')."""
    row = conn.execute("SELECT flavour FROM schema_migrations WHERE flavour <> 'any' "
                       "ORDER BY version LIMIT 1").fetchone()
    return None if row is None else str(row[0])


# TimescaleDB 2.13 to 2.18.0 end an `INSERT ... ON CONFLICT DO NOTHING` at its first conflict
# with a row in a compressed chunk, and the statement's rows after it are silently not
# inserted (timescale/timescaledb#7672, fixed by #7673, released in 2.18.1). `store` inserts
# every batch so, and a redelivery of week-old messages meets compressed rows: the new
# messages batched with them would be lost, and acknowledged.
FIRST_SAFE_TIMESCALEDB = (2, 18, 1)

_RELEASE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def timescale_release_safe(version: str) -> bool:
    """Whether TimescaleDB `version` (pg_extension's extversion: "2.18.1", "2.19.0-dev")
    keeps every row of our inserts. A version that does not read as one is not trusted."""
    m = _RELEASE.match(version)
    if m is None:
        return False
    release = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    return release >= FIRST_SAFE_TIMESCALEDB


def _timescale_version(conn: psycopg.Connection) -> str | None:
    row = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return None if row is None else str(row[0])


def _flavour(conninfo: str) -> str:
    """'timescale' if the extension can be used here, else 'plain' (for a database whose
    flavour is not recorded yet: one already migrated keeps its own).

    The extension may be listed but not loadable (it must be in shared_preload_libraries) or
    its files missing: then the plain schema is used, and the log says why. Any other error
    (a timeout, a deadlock, a lost connection, a missing privilege) stops the migration.
    """
    # A connection of its own: "must be preloaded" is FATAL, and ends the connection.
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if not timescale_available(conn):
            return "plain"
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        except psycopg.Error as e:
            if not _unusable(e):
                raise
            log.warning("event=timescaledb_unusable error=%r note=using_plain_postgresql",
                        first_line(e))
            return "plain"
        version = _timescale_version(conn) or "unknown"
    if not timescale_release_safe(version):
        log.warning("event=timescaledb_refused version=%s note=using_plain_postgresql "
                    "reason=releases_before_%s_lose_rows_of_insert_on_conflict_do_nothing_"
                    "into_compressed_chunks (timescale/timescaledb#7672); upgrade it and "
                    "migrate a new database to use it", version,
                    ".".join(map(str, FIRST_SAFE_TIMESCALEDB)))
        return "plain"
    return "timescale"


def migrate(conninfo: str) -> list[str]:
    """Apply the migrations not yet applied; return the names of those applied now.

    Safe to run from several processes at once: an advisory lock serialises them.

    The first migration with two flavours decides the database's: if its TimescaleDB
    flavour is refused for a feature the server lacks (a TimescaleDB under the Apache licence
    has no compression or retention policies; one before 2.13 has no `by_range`), it is rolled
    back, the plain one applied instead, and the log says why. Any other error stops the
    migration, and once a flavour is recorded, every failure does.
    """
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('vagt.migrate'))")
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version     integer PRIMARY KEY,
                       name        text NOT NULL,
                       flavour     text NOT NULL,
                       applied_at  timestamptz NOT NULL DEFAULT now())"""
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            recorded = recorded_flavour(conn)
            if recorded == "timescale":
                _warn_if_unsafe(conn)
            decided = recorded is not None
            wanted = recorded or _flavour(conninfo)
            migrations = list_migrations()
            for m in migrations:
                if m.version in done or m.flavour not in ("any", wanted):
                    continue
                try:
                    _apply(conn, m)
                except _REFUSED_FEATURE as e:
                    if m.flavour != "timescale" or decided:
                        raise
                    log.warning("event=timescaledb_refused version=%04d name=%s error=%r "
                                "note=using_plain_postgresql", m.version, m.name,
                                first_line(e))
                    wanted = "plain"
                    m = next(p for p in migrations
                             if p.version == m.version and p.flavour == "plain")
                    _apply(conn, m)
                decided = decided or m.flavour != "any"
                done.add(m.version)
                applied_now.append(f"{m.version:04d}_{m.name} ({m.flavour})")
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('vagt.migrate'))")
    return applied_now


def _warn_if_unsafe(conn: psycopg.Connection) -> None:
    """A database on TimescaleDB already cannot become plain: say, at every start, that its
    release loses rows until it is upgraded."""
    version = _timescale_version(conn) or "unknown"
    if not timescale_release_safe(version):
        log.error("event=timescaledb_loses_rows version=%s note=upgrade_timescaledb_to_%s_"
                  "or_later (timescale/timescaledb#7672: a redelivery into a compressed chunk "
                  "drops the new rows batched with it)", version,
                  ".".join(map(str, FIRST_SAFE_TIMESCALEDB)))


def _apply(conn: psycopg.Connection, m: Migration) -> None:
    """One migration and its record, in a transaction of its own."""
    with conn.transaction():
        conn.execute(m.sql.encode())
        conn.execute(
            "INSERT INTO schema_migrations (version, name, flavour) VALUES (%s, %s, %s)",
            (m.version, m.name, m.flavour),
        )
    log.info("event=migration_applied version=%04d name=%s flavour=%s",
             m.version, m.name, m.flavour)


# libpq's defaults wait for ever: a database host that crashed, or an address failed over,
# answers nothing and closes nothing, and a thread waiting on it waited in recv until the
# kernel gave up (15 minutes and more), silently. With these, a connection whose sent data
# goes unacknowledged for 10 s (tcp_user_timeout), or whose idle peer answers no keepalive
# for 5 + 3 x 2 s, fails; and a connection attempt gives up after 10 s. The configured URL
# may set any of them itself (`?keepalives_idle=60`): then its value is used.
NETWORK_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
}


def with_network_timeouts(conninfo: str) -> str:
    """`conninfo` with NETWORK_DEFAULTS for what it does not set itself."""
    given = psycopg.conninfo.conninfo_to_dict(conninfo)
    return psycopg.conninfo.make_conninfo(
        conninfo, **{k: v for k, v in NETWORK_DEFAULTS.items() if k not in given})


def open_pool(conninfo: str, min_size: int = 2, max_size: int = 8) -> ConnectionPool:
    pool = ConnectionPool(with_network_timeouts(conninfo), min_size=min_size,
                          max_size=max_size, open=False, name="vagt")
    pool.open(wait=True, timeout=30)
    return pool


def _set_plans(names: tuple[str, ...], value: str) -> str:
    """For the rest of the transaction (is_local), in one round trip."""
    return "SELECT " + ", ".join(f"set_config('{n}', '{value}', true)" for n in names)


_KEYS_ONLY = ("enable_seqscan", "enable_hashjoin", "enable_mergejoin")
_JOINS = ("enable_hashjoin", "enable_mergejoin")


@contextlib.contextmanager
def by_key_index(conn: psycopg.Connection, *, scans: bool = False) -> Iterator[None]:
    """Statements that touch a batch's devices (a few thousand keys of a table of 100,000)
    go through the key index, one probe per key. Left alone, the planner reads the whole
    table or its whole index for them (it prices a probe above what it costs when the table
    is in memory): 20-30 ms a statement for 1,800 devices, 8-15 ms so.

    `scans`: a join of a batch's staging table (no index, no statistics) with the table:
    only hash and merge joins are turned off, so the staging table is read once and the
    table probed by key for each of its rows. With sequential scans off too, the planner
    walked the table's whole index for every batch instead: that is why the device-state
    UPDATE through this helper once made the drain slower. With `scans` it took 37 ms a
    batch of ~4,700 devices against 67 ms (`benchmarks.suite --split`, the pipeline alone).
    """
    names = _JOINS if scans else _KEYS_ONLY
    conn.execute(_set_plans(names, "off"))
    # Not in a `finally`: after an error the transaction is aborted, a statement there would
    # raise "current transaction is aborted" in place of the error, and the rollback that
    # follows ends the settings anyway (they are the transaction's own).
    yield
    conn.execute(_set_plans(names, "on"))


@contextlib.contextmanager
def in_parts(conn: psycopg.Connection, name: str, query: psycopg.abc.Query,
             params: Sequence[Any] | None = None, *, part: int
             ) -> Iterator[Iterator[list[tuple[Any, ...]]]]:
    """The rows of `query` in lists of at most `part`, through a cursor on the server named
    `name`: a table of the whole fleet (100,000 rows) never held in memory at once, neither
    as Python's tuples nor as libpq's copy of them. A cursor on the server lives in a
    transaction: the caller's, or one it opens around the block on an autocommit connection.

    A context, not a generator: the cursor is closed when the block ends, also when it
    raises. A generator's is closed when nothing refers to the generator any more; a
    variable holding it, in a frame that a kept traceback holds, puts that off until the
    connection may be back in the pool and another thread's."""
    with conn.cursor(name=name) as cur:
        cur.execute(query, params)
        yield iter(lambda: cur.fetchmany(part), [])
