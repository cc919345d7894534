"""The absence sweep runs in one engine process at a time: whoever holds the advisory lock,
until its session ends."""

from __future__ import annotations

import time

import psycopg

from vagt.app.rule_queries import try_sweep_lock


def test_one_session_holds_the_sweep_lock_and_another_takes_it_when_it_ends(database_url):
    first = psycopg.connect(database_url, autocommit=True)
    with psycopg.connect(database_url, autocommit=True) as second:
        assert try_sweep_lock(first) is True
        assert try_sweep_lock(second) is False
        pid = first.info.backend_pid
        first.close()  # the holder dies; its server process ends a moment later
        deadline = time.monotonic() + 10
        while second.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                             (pid,)).fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert try_sweep_lock(second) is True
