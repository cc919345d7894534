"""A device deployed to a citizen and never heard: silent once its limit has passed since its
deployment, and heard at its first message, whatever its clock says. Real PostgreSQL; the
engine's pipeline with the built-in rules (`device_silent`: 3 heartbeats), swept as the
process holding the sweep lock does."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import psycopg
from tests.app.conftest import query, register
from tests.app.test_device_clock import heard, sweep
from tests.app.test_shared_rule_state import Process

from vagt.app import rule_queries
from vagt.devices import deploy, return_device
from vagt.devices import register as register_device
from vagt.devices.catalogue import load_catalogue

NOW = float(int(time.time()))   # whole seconds: timestamptz keeps microseconds
HOUR = 3600.0
SILENT_AFTER = 3 * HOUR   # device_silent: 3 heartbeats of a Lifeline Vi+ (1 h)
YEAR_2000 = 946_684_800.0
ALARM = ("ALM-0001", "Tunstall", "Lifeline Vi+", "personal_alarm", "Randers")


def deployed_at(database_url: str, device_id: str) -> float:
    [(t,)] = query(database_url, "SELECT extract(epoch FROM status_since)::float8 FROM devices "
                                 "WHERE device_id = %s", (device_id,))
    return float(t)


def alerts(database_url: str) -> list[tuple[str, str, str, str]]:
    return query(database_url, "SELECT rule, device_id, queue, status FROM alerts ORDER BY id")


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def test_a_personal_alarm_deployed_and_never_heard_is_silent_three_heartbeats_after(
        database_url):
    """Installed at a citizen's home by an import and never connected: the technical queue
    gets `device_silent`, dated three heartbeats after the deployment, saying it was never
    heard; the clock rule, swept with it, says nothing (there is no device time)."""
    register(database_url, [ALARM])
    since = deployed_at(database_url, "ALM-0001")
    p = Process(database_url, None)
    sweep(p, since + SILENT_AFTER - 60)
    assert alerts(database_url) == []
    sweep(p, since + SILENT_AFTER + 60)
    sweep(p, since + SILENT_AFTER + HOUR)   # the clock rule's `for` has passed too
    assert alerts(database_url) == [("device_silent", "ALM-0001", "technical", "open")]
    [(summary, code, late)] = query(
        database_url, "SELECT summary, labels->>'code', "
                      "extract(epoch FROM opened_at)::float8 - %s FROM alerts", (since,))
    assert summary.startswith("nothing heard from ALM-0001 for 3 heartbeats; never heard "
                              "from since it was deployed")
    assert (code, late) == ("never_heard", SILENT_AFTER)
    p.close()


def test_a_personal_alarm_deployed_a_minute_ago_and_never_heard_is_not_silent(database_url):
    register(database_url, [ALARM])
    p = Process(database_url, None)
    sweep(p, deployed_at(database_url, "ALM-0001") + 60)
    assert alerts(database_url) == []
    p.close()


def test_the_first_message_of_a_device_never_heard_clears_its_silence(database_url):
    register(database_url, [ALARM])
    since = deployed_at(database_url, "ALM-0001")
    p = Process(database_url, None)
    sweep(p, since + SILENT_AFTER + 60)
    first = p.now = since + SILENT_AFTER + 120
    p.batch([heard("ALM-0001", first, first)])   # connected at last
    assert alerts(database_url) == [("device_silent", "ALM-0001", "technical", "resolved")]
    sweep(p, first + 60)
    assert alerts(database_url) == [("device_silent", "ALM-0001", "technical", "resolved")]
    p.close()


def test_a_first_message_dated_2000_clears_the_silence_and_a_second_is_alerted_again(
        database_url):
    """Its clock restarted at 2000-01-01: its first message is still the device speaking,
    and clears the silence by the next sweep. Then silent again: that second silence was
    dated as the first (the deployment plus the limit, the latest time the sweep had for
    it), and the queue took it for the resolved alert's firing. Alerted again, dated three
    heartbeats after we heard it, and not said to be never heard."""
    register(database_url, [ALARM])
    since = deployed_at(database_url, "ALM-0001")
    p = Process(database_url, None)
    sweep(p, since + SILENT_AFTER + 60)
    first = p.now = since + SILENT_AFTER + 120
    p.batch([heard("ALM-0001", YEAR_2000, first)])
    sweep(p, first + 60)
    assert [(r, s) for r, _, _, s in alerts(database_url) if r == "device_silent"] == [
        ("device_silent", "resolved")]
    sweep(p, first + SILENT_AFTER + 60)
    silent = query(database_url, "SELECT status, summary LIKE '%%never heard%%', "
                                 "extract(epoch FROM last_fired_at)::float8 - %s FROM alerts "
                                 "WHERE rule = 'device_silent' AND status <> 'resolved'",
                   (first,))
    assert silent == [("open", False, SILENT_AFTER)]
    p.close()


def test_a_device_in_stock_never_heard_is_not_silent(database_url):
    with psycopg.connect(database_url) as conn:
        register_device(conn, "ALM-0001", "Tunstall", "Lifeline Vi+",
                        catalogue=load_catalogue(), actor="staff", at=_utc(NOW - 10 * 86400))
    p = Process(database_url, None)
    sweep(p, NOW + 86400)
    assert alerts(database_url) == []
    p.close()


def test_a_device_redeployed_and_never_heard_counts_its_silence_from_the_redeployment(
        database_url):
    """Deployed to A two days ago and never heard, returned and deployed to B a minute ago:
    not silent for A's two days; silent three heartbeats after B's deployment."""
    again = NOW - 60
    with psycopg.connect(database_url) as conn:
        register_device(conn, "ALM-0001", "Tunstall", "Lifeline Vi+",
                        catalogue=load_catalogue(), actor="staff", at=_utc(NOW - 3 * 86400))
        deploy(conn, "ALM-0001", citizen_ref="cit-a", municipality="Randers", actor="staff",
               at=_utc(NOW - 2 * 86400))
        return_device(conn, "ALM-0001", actor="staff", at=_utc(NOW - HOUR))
        deploy(conn, "ALM-0001", citizen_ref="cit-b", municipality="Randers", actor="staff",
               at=_utc(again))
    p = Process(database_url, None)
    sweep(p, NOW)
    assert alerts(database_url) == []
    sweep(p, again + SILENT_AFTER + 60)
    assert alerts(database_url) == [("device_silent", "ALM-0001", "technical", "open")]
    [(late,)] = query(database_url, "SELECT extract(epoch FROM opened_at)::float8 - %s "
                                    "FROM alerts", (again,))
    assert late == SILENT_AFTER
    p.close()


def test_the_sweep_reads_the_fleet_in_parts_and_judges_each_device_by_its_own_row(
        database_url, monkeypatch):
    """The sweep reads when each device was last heard in parts (100,000 rows at once left
    the engine larger for good): here parts of two rows, five alarms in three parts. The
    four never heard are silent, whichever part they came in; the one heard a minute before
    the sweep is not (a row put on another device's place would show)."""
    monkeypatch.setattr(rule_queries, "LAST_HEARD_PART", 2)
    fleet = [(f"ALM-000{k}", *ALARM[1:]) for k in range(1, 6)]
    register(database_url, fleet)
    since = max(deployed_at(database_url, d[0]) for d in fleet)
    p = Process(database_url, None)
    now = since + SILENT_AFTER + HOUR
    p.now = now - 60
    p.batch([heard("ALM-0003", now - 60, now - 60)])
    sweep(p, now)
    assert sorted(d for r, d, _, _ in alerts(database_url) if r == "device_silent") == [
        "ALM-0001", "ALM-0002", "ALM-0004", "ALM-0005"]
    p.close()
