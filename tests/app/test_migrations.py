"""The migrations on a real PostgreSQL: the schema's flavour, and the fallback from a
TimescaleDB that refuses its features to the plain schema."""

from __future__ import annotations

import logging

import psycopg
import pytest

from vagt.app import db


def flavours(url: str) -> dict[int, str]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT version, flavour FROM schema_migrations").fetchall())


def test_a_timescaledb_that_refuses_its_features_gets_the_plain_schema_and_the_log_says_why(
        empty_database_url, monkeypatch, caplog):
    """A server whose `CREATE EXTENSION timescaledb` succeeds may still refuse what the
    TimescaleDB migration asks (no compression under the Apache licence, no `by_range`
    before 2.13); the engine must start all the same. There is no TimescaleDB here: the
    flavour is taken to be 'timescale' as if the extension had been created, and this
    PostgreSQL refuses the migration's `by_range` as a TimescaleDB before 2.13 does."""
    monkeypatch.setattr(db, "_flavour", lambda conninfo: "timescale")
    with caplog.at_level(logging.WARNING, logger="vagt.db"):
        applied = db.migrate(empty_database_url)
    assert "0002_timeseries (plain)" in applied
    assert flavours(empty_database_url)[2] == "plain"
    assert any("event=timescaledb_refused version=0002" in r.getMessage()
               and "by_range" in r.getMessage() for r in caplog.records)
    with psycopg.connect(empty_database_url) as conn:   # the schema is whole: a reading goes in
        conn.execute("INSERT INTO devices (device_id, vendor, model, type, municipality, "
                     "status, status_since, registered_at) VALUES ('SCL-0001', 'A&D', "
                     "'UC-352BLE', 'scale', 'Aarhus', 'in_stock', now(), now())")
        conn.execute("INSERT INTO readings (time, device_id, metric, value, unit, received_at) "
                     "VALUES (now(), 'SCL-0001', 'weight', 70.2, 'kg', now())")
    assert db.migrate(empty_database_url) == []          # the flavour stays as recorded
    assert flavours(empty_database_url)[2] == "plain"


def test_a_timescaledb_listed_but_not_installed_gets_the_plain_schema(empty_database_url,
                                                                      monkeypatch, caplog):
    """pg_available_extensions lists it, CREATE EXTENSION cannot find its files (this
    PostgreSQL has none: it refuses as such a server does)."""
    monkeypatch.setattr(db, "timescale_available", lambda conn: True)
    with caplog.at_level(logging.WARNING, logger="vagt.db"):
        applied = db.migrate(empty_database_url)
    assert "0002_timeseries (plain)" in applied
    assert any("event=timescaledb_unusable" in r.getMessage() for r in caplog.records)


def test_a_passing_error_in_the_timescaledb_migration_stops_it_and_decides_nothing(
        empty_database_url, monkeypatch):
    """A statement timeout (or a deadlock, a missing privilege) is no reason to make the
    database plain PostgreSQL for good: the migration stops, and the next start decides."""
    monkeypatch.setattr(db, "_flavour", lambda conninfo: "timescale")
    original = db.list_migrations()
    slow = "SET LOCAL statement_timeout = '10ms'; SELECT pg_sleep(1);"
    monkeypatch.setattr(db, "list_migrations", lambda: [
        db.Migration(m.version, m.name, m.flavour, slow) if m.flavour == "timescale" else m
        for m in original])
    with pytest.raises(psycopg.errors.QueryCanceled):
        db.migrate(empty_database_url)
    assert flavours(empty_database_url) == {1: "any"}


def test_without_timescaledb_every_migration_is_applied_once_in_the_plain_flavour(
        empty_database_url):
    applied = db.migrate(empty_database_url)
    assert [a.split("_")[0] for a in applied] == \
        sorted({f"{m.version:04d}" for m in db.list_migrations()})
    assert set(flavours(empty_database_url).values()) == {"any", "plain"}
    assert db.migrate(empty_database_url) == []


def test_an_error_under_by_key_index_is_raised_as_itself(database_url):
    """The plan settings are not put back in an aborted transaction: the error the caller
    sees (and logs, and keeps in a dead letter) is the one that happened."""
    with psycopg.connect(database_url) as conn:
        with pytest.raises(psycopg.errors.NumericValueOutOfRange), db.by_key_index(conn):
            conn.execute("SELECT 9223372036854775807::bigint + 1")
        conn.rollback()
        with db.by_key_index(conn):
            assert conn.execute("SHOW enable_hashjoin").fetchone() == ("off",)
        assert conn.execute("SHOW enable_hashjoin").fetchone() == ("on",)
