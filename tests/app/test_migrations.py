"""The migrations on a real PostgreSQL: the schema's flavour, and the fallback from a
TimescaleDB that refuses its features to the plain schema; and vagt.app.db's helpers for
statements (the plans by key index, the reads in parts)."""

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


def _first_part_then_fail(conn: psycopg.Connection) -> None:
    with db.in_parts(conn, "vagt_parts", "SELECT generate_series(1, 7)", part=3) as parts:
        for rows in parts:
            raise ValueError(rows)


def test_a_read_in_parts_gives_every_row_and_closes_its_cursor_also_when_its_block_raises(
        database_url):
    """The fleet's tables are read in parts (`db.in_parts`); a part whose handling fails
    must not leave the cursor open in the transaction: the next read of the same name (the
    sweep's, a minute later, on a connection the pool handed out again) would fail."""
    with psycopg.connect(database_url) as conn:
        try:
            _first_part_then_fail(conn)
        except ValueError as e:
            kept = e       # kept, as a log handler keeps it: its traceback holds the frames
        assert kept.args[0] == [(1,), (2,), (3,)]
        with db.in_parts(conn, "vagt_parts", "SELECT generate_series(1, 7)", part=3) as parts:
            assert list(parts) == [[(1,), (2,), (3,)], [(4,), (5,), (6,)], [(7,)]]
        assert conn.execute("SELECT count(*) FROM pg_cursors").fetchone() == (0,)


def test_a_citizen_reference_with_a_cpr_number_the_old_check_missed_is_removed(
        empty_database_url, monkeypatch):
    """0003's CHECK knew only '-' and a space between date and serial; 0017 knows the others
    and removes a reference stored before (from the assignment and its audit row)."""
    everything = db.list_migrations()
    monkeypatch.setattr(db, "list_migrations", lambda: [m for m in everything if m.version < 17])
    db.migrate(empty_database_url)
    with psycopg.connect(empty_database_url) as conn:
        conn.execute("INSERT INTO devices (device_id, vendor, model, type, municipality, "
                     "status) VALUES ('X-1', 'Nonin', '3230', 'pulse_oximeter', 'Skive', "
                     "'deployed'), ('X-2', 'Nonin', '3230', 'pulse_oximeter', 'Skive', "
                     "'deployed')")
        conn.execute("INSERT INTO device_assignments (device_id, citizen_ref, municipality, "
                     "since) VALUES ('X-1', 'cit:010190:1234', 'Skive', now()), "
                     "('X-2', 'cit-7f3a9c01e2d4', 'Skive', now())")
        conn.execute("""INSERT INTO audit_log (at, actor, action, subject, details) VALUES
            (now(), 'anna', 'devices.deploy', 'X-1', '{"citizen_ref": "cit:010190:1234"}')""")
    # up to 0017 only: later migrations are not this test's
    monkeypatch.setattr(db, "list_migrations", lambda: [m for m in everything if m.version <= 17])
    assert [a.split("_")[0] for a in db.migrate(empty_database_url)] == ["0017"]
    with psycopg.connect(empty_database_url) as conn:
        refs = conn.execute("SELECT device_id, citizen_ref FROM device_assignments "
                            "ORDER BY device_id").fetchall()
        assert [d for d, _ in refs] == ["X-1", "X-2"]
        assert refs[0][1].startswith("removed-n") and refs[1][1] == "cit-7f3a9c01e2d4"
        # the deploy's audit copy is rewritten, and a row says the reference was removed
        assert conn.execute("SELECT action, subject, details->>'citizen_ref' FROM audit_log "
                            "ORDER BY id").fetchall() == [
            ("devices.deploy", "X-1", refs[0][1]),
            ("devices.citizen_ref_removed", "X-1", refs[0][1])]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO device_assignments (device_id, citizen_ref, "
                         "municipality, since) VALUES ('X-2', '010190.1234', 'Skive', now())")


@pytest.mark.parametrize(("version", "safe"), [
    ("2.13.0", False), ("2.17.2", False), ("2.18.0", False),  # #7672: rows lost
    ("2.18.1", True), ("2.18.2", True), ("2.19.0-dev", True), ("2.22.1", True),
    ("2.9", False), ("3.0", True), ("unknown", False), ("", False),
])
def test_timescaledb_releases_that_lose_rows_of_on_conflict_inserts_are_refused(version, safe):
    """2.13 to 2.18.0 end an INSERT ... ON CONFLICT DO NOTHING at its first conflict in a
    compressed chunk, dropping the rest silently (fixed in 2.18.1): such a release gets the
    plain schema."""
    assert db.timescale_release_safe(version) is safe
