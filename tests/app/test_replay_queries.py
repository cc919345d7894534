"""The two reads that walked the whole of `readings` on plain PostgreSQL: the late-row replay
(`rule_queries.stored_batch`, in the live batch's transaction) and the backtest's batch end.
On a table with enough rows and its statistics, neither scans a table, and both give what
the reads before did. Nor does the backtest's read of the rows dated before its period that
reached us within it, nor its read of each device's last row before."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from tests.app.conftest import register

from vagt.app import backtest, rule_queries
from vagt.devices.fleet import Fleet

T0 = 1_780_000_000.0
DEVICES = [(f"OXI-{i:04d}", "Nonin", "3230", "pulse_oximeter", "Aarhus") for i in range(60)]


@pytest.fixture
def stored(database_url: str) -> str:
    """60 oximeters, 600 minutes of spo2, pulse and battery each (108,000 readings, in time
    order as they come) and two codes of events each 2 minutes (36,000 events)."""
    register(database_url, DEVICES)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO readings (time, device_id, metric, value, unit, received_at) "
            "SELECT to_timestamp(%s + 60 * k), 'OXI-' || lpad(d::text, 4, '0'), m, 97, '%%', "
            "now() FROM generate_series(0, 599) k, generate_series(0, 59) d, "
            "unnest(ARRAY['spo2', 'pulse', 'battery']) m ORDER BY k", (T0,))
        conn.execute(
            "INSERT INTO events (time, device_id, code, severity, received_at) "
            "SELECT to_timestamp(%s + 120 * k), 'OXI-' || lpad(d::text, 4, '0'), c, 'info', "
            "now() FROM generate_series(0, 299) k, generate_series(0, 59) d, "
            "unnest(ARRAY['probe.off', 'probe.on']) c ORDER BY k", (T0,))
        conn.execute("ANALYZE readings")
        conn.execute("ANALYZE events")
    return database_url


def sequential_scans(conn: psycopg.Connection) -> dict[str, int]:
    """This transaction's sequential scans of readings and events."""
    return {str(t): int(n) for t, n in conn.execute(
        "SELECT relname, seq_scan FROM pg_stat_xact_user_tables "
        "WHERE relname IN ('readings', 'events')").fetchall()}


def test_a_replay_of_25_late_devices_reads_their_rows_by_key(stored):
    with psycopg.connect(stored) as conn:
        fleet = Fleet()
        fleet.load(conn)
        late = np.sort(fleet.lookup([d for d, *_ in DEVICES[:25]]))
        since = np.full(len(late), T0 + 60 * 590 + 0.5)
        batch = rule_queries.stored_batch(conn, fleet, late, since, 50_000)
        assert sequential_scans(conn) == {"readings": 0, "events": 0}
    assert batch is not None
    # what the devices' rows after `since` are: 9 minutes of 3 metrics, 4 or 5 of 2 codes
    assert len(batch.r_device) == 25 * 9 * 3
    assert sorted(set(batch.r_metric)) == ["battery", "pulse", "spo2"]
    assert batch.r_time.min() == T0 + 60 * 591
    assert len(batch.e_device) == 25 * 4 * 2
    assert sorted(set(batch.r_device.tolist())) == late.tolist()


def test_the_backtests_batch_end_does_not_sort_the_rest_of_the_period(stored):
    with psycopg.connect(stored) as conn:
        first = backtest._BatchEnds().end(conn, T0, T0 + 60 * 600, 5000)
        assert sequential_scans(conn) == {"readings": 0, "events": 0}
        # as before: the 5,001st row from the start, of either table (readings: 180 a minute)
        assert first == T0 + 60 * (5000 // 180)
        # few rows left: the end of the period
        assert backtest._BatchEnds().end(conn, T0 + 60 * 599, T0 + 60 * 600, 5000) == \
            T0 + 60 * 600


class CountingConnection(psycopg.Connection):
    """A connection that counts the statements it runs."""

    statements = 0

    def execute(self, *args, **kwargs):
        self.statements += 1
        return super().execute(*args, **kwargs)


def test_the_backtests_batch_ends_take_one_query_a_table_once_the_traffic_is_known(stored):
    """Each window was begun at 60 s again and doubled, some 6 queries a table a batch here;
    begun at the span of the batch before, the same ends come of one query a table."""
    period_end = T0 + 60 * 600
    with CountingConnection.connect(stored) as conn:
        ends, queries = [], []
        batch_ends, cursor = backtest._BatchEnds(), T0
        while cursor < period_end:
            before = conn.statements
            cursor = batch_ends.end(conn, cursor, period_end, 5000)
            ends.append(cursor)
            queries.append(conn.statements - before)
        # each as a search begun anew finds it
        assert ends == [backtest._BatchEnds().end(conn, lo, period_end, 5000)
                        for lo in [T0, *ends[:-1]]]
    assert len(ends) == 23   # 27 minutes each (4,860 readings), the last 6 minutes
    assert queries[0] >= 10
    assert queries[1:] == [2] * (len(ends) - 1)


def test_the_backtest_reads_rows_dated_before_its_period_by_their_time(stored):
    """Those of the last 10 minutes before it (the fixture's rows reached us as stored)."""
    with psycopg.connect(stored) as conn:
        fleet = Fleet()
        fleet.load(conn)
        now = conn.execute("SELECT extract(epoch FROM now())::float8").fetchone()[0]
        start = T0 + 60 * 590
        dev, t, at = backtest._heard_dated(conn, fleet, start - 600, start, start, now + 60)
        assert sequential_scans(conn) == {"readings": 0, "events": 0}
        assert len(dev) == 10 * 180 + 5 * 120
        assert t.min() == start - 600 and t.max() < start
        # received before the period: not heard in it
        assert len(backtest._heard_dated(conn, fleet, start - 600, start, start,
                                         now - 3600)[0]) == 0


def test_the_backtest_reads_each_devices_last_row_before_a_time_by_key(stored):
    """What the sweep takes as when each device was last heard before the rows it reads:
    the latest of its readings' and events' rows, probed from the end by key."""
    with psycopg.connect(stored) as conn:
        fleet = Fleet()
        fleet.load(conn)
        dev, t, _ = backtest._last_before(conn, fleet, T0 + 60 * 300 + 30)
        assert sequential_scans(conn) == {"readings": 0, "events": 0}
    assert sorted(dev.tolist()) == sorted(fleet.lookup([d for d, *_ in DEVICES]).tolist())
    assert set(t.tolist()) == {T0 + 60 * 300}   # a reading's minute, after the last event
