"""Where the database's autovacuum is off, the engine keeps its tables' statistics and
clears their dead rows itself (vagt.app.statistics)."""

from __future__ import annotations

import re

import psycopg
import pytest
from tests.app.conftest import EngineProcess, query, register, wait_for

from vagt.app import statistics

FLEET = [(f"SCL-{k:04d}", "Withings", "Body+", "scale", "Viborg") for k in range(200)]


def stats(database_url: str, table: str) -> tuple[int, int]:
    """(rows changed since the last ANALYZE, dead rows) as the database counts them."""
    [(changed, dead)] = query(database_url, "SELECT n_mod_since_analyze, n_dead_tup FROM "
                                            "pg_stat_user_tables WHERE relname = %s", (table,))
    return changed, dead


def test_tables_changed_past_autovacuums_thresholds_are_analyzed_and_vacuumed(database_url):
    register(database_url, FLEET)                     # 200 rows new: past 50 and a tenth
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE devices SET battery = 80")   # 200 dead: past 50 and a fifth
    wait_for(lambda: stats(database_url, "devices") >= (400, 200),
             what="the database's counts of the changes")
    with psycopg.connect(database_url, autocommit=True) as conn:
        done = statistics.keep_up(conn)
        assert done is not None and ("devices", True) in done
        assert "rule_state_layouts" not in dict(done)   # nothing changed there
        assert statistics.keep_up(conn) == []           # nothing left to do
    assert stats(database_url, "devices") == (0, 0)
    [(analyzed, vacuumed)] = query(database_url, "SELECT last_analyze, last_vacuum FROM "
                                                 "pg_stat_user_tables WHERE relname = 'devices'")
    assert analyzed is not None and vacuumed is not None


def test_of_two_engines_one_keeps_the_tables_at_a_time(database_url):
    with psycopg.connect(database_url, autocommit=True) as first, \
            psycopg.connect(database_url, autocommit=True) as second:
        first.execute("SELECT pg_advisory_lock(%s)", (statistics.LOCK_KEY,))
        assert statistics.keep_up(second) is None
        first.execute("SELECT pg_advisory_unlock(%s)", (statistics.LOCK_KEY,))
        assert statistics.keep_up(second) is not None


def test_the_engine_says_when_autovacuum_is_off_and_keeps_its_tables_itself(
        engine: EngineProcess, database_url):
    with psycopg.connect(database_url) as conn:
        if statistics.autovacuum_on(conn):
            pytest.skip("this database server has autovacuum on: the engine leaves it to it")
    register(database_url, FLEET)
    engine.start().wait_ready()
    assert "event=database_autovacuum_off" in engine.log()
    wait_for(lambda: re.search(r"event=tables_kept analyzed=\S*\bdevices\b", engine.log()),
             what="the devices table analyzed", timeout=statistics.FIRST_CHECK_S + 20)
    assert stats(database_url, "devices")[0] < len(FLEET)
