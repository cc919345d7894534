"""A device whose clock is wrong: its silence is judged by when the centre heard it, and a
dose's deadline on its own clock. Real PostgreSQL; the engine's pipeline with the built-in
rules, as `test_reused_device` drives it."""

from __future__ import annotations

import time

import orjson
from tests.app.conftest import query, register
from tests.app.test_shared_rule_state import DISPENSER, Process

from vagt.ingest.model import RawMessage

ROOT = "vagt/v1"
NOW = time.time()
GATEWAY = ("GWY-0001", "Telit", "HomeHub 4G", "gateway", "Aarhus")   # heartbeat 300 s


def heard(device_id: str, device_time: float, at: float, code: str | None = None
          ) -> RawMessage:
    """A message of `device_id` dated `device_time` by its clock, heard `at` by ours; an
    event if `code` is given, else a heartbeat (a status)."""
    body: dict[str, object] = {"device_id": device_id, "time": device_time}
    if code is None:
        body["status"] = {"battery": 90}
        channel = "status"
    else:
        body["events"] = [{"code": code}]
        channel = "telemetry"
    return RawMessage(f"{ROOT}/dev/{device_id}/{channel}", orjson.dumps(body), at)


def alerts(database_url: str) -> list[tuple[str, str]]:
    return query(database_url, "SELECT rule, device_id FROM alerts ORDER BY id")


def sweep(p: Process, now: float) -> None:
    out = p.pipeline.tick(p.conn, now, sweep=True)
    p.conn.commit()
    p.pipeline.after_commit(out)


def test_a_gateway_whose_clock_is_slow_is_not_silent_while_it_sends(database_url):
    register(database_url, [GATEWAY])
    p = Process(database_url, None)
    slow = 20 * 60
    for k in range(4):   # a heartbeat every 5 minutes, a sweep 5 s after each
        at = NOW - 900 + 300 * k
        p.batch([heard("GWY-0001", at - slow, at)])
        sweep(p, at + 5)
    assert alerts(database_url) == []
    p.close()


def test_a_gateway_whose_clock_is_slow_is_silent_three_heartbeats_after_it_was_heard(
        database_url):
    register(database_url, [GATEWAY])
    p = Process(database_url, None)
    p.batch([heard("GWY-0001", NOW - 1200, NOW)])
    sweep(p, NOW + 899)
    assert alerts(database_url) == []
    sweep(p, NOW + 901)
    assert alerts(database_url) == [("device_silent", "GWY-0001")]
    p.close()


def test_a_dispenser_whose_clock_is_behind_gets_no_missed_dose_for_a_dose_taken(
        database_url):
    register(database_url, [DISPENSER])
    p = Process(database_url, None)
    behind = 40 * 60
    p.batch([heard("DSP-0001", NOW - behind, NOW, "dose.due")])
    p.tick(NOW + 15)
    p.batch([heard("DSP-0001", NOW - behind + 120, NOW + 120, "dose.taken")])
    p.tick(NOW + 3600)
    assert query(database_url, "SELECT count(*) FROM alerts WHERE rule = 'missed_dose'") \
        == [(0,)]
    p.close()


def test_a_dispenser_whose_clock_is_behind_misses_a_dose_its_window_after_it_was_due(
        database_url):
    register(database_url, [DISPENSER])
    p = Process(database_url, None)
    behind = 40 * 60
    p.batch([heard("DSP-0001", NOW - behind, NOW, "dose.due")])
    p.tick(NOW + 1800)
    assert alerts(database_url) == []
    p.tick(NOW + 1800 + 61)
    assert ("missed_dose", "DSP-0001") in alerts(database_url)
    p.close()
