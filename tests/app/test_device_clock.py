"""A device whose clock is wrong: its silence is judged by when the centre heard it, and a
dose's deadline on its own clock. Real PostgreSQL; the engine's pipeline with the built-in
rules, as `test_reused_device` drives it."""

from __future__ import annotations

import time

import orjson
import psycopg
import pytest
from tests.app.conftest import query, register
from tests.app.test_shared_rule_state import DISPENSER, PERSONAL_ALARM, Process

from vagt.ingest.model import RawMessage

ROOT = "vagt/v1"
NOW = time.time()
HOUR = 3600.0
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


def test_the_other_process_judges_a_dose_on_the_dispensers_clock_too(database_url):
    """Sharing the subscription, one process hears the dose due and the other ticks it
    (it reads the deadline from the table): the other never heard the dispenser, and its
    memory of the fleet is up to 30 s old. It called the dose missed at once, by our
    clock, 40 minutes before the dispenser's (the simulated fleet's backlog, drained by two
    engines, gave six missed doses one engine did not)."""
    register(database_url, [DISPENSER])
    heard_it, other = Process(database_url, None), Process(database_url, None)
    behind = 40 * 60
    heard_it.batch([heard("DSP-0001", NOW - behind, NOW, "dose.due")])
    other.tick(NOW + 15)
    other.tick(NOW + 1800)
    assert alerts(database_url) == []
    other.tick(NOW + 1800 + 61)
    assert alerts(database_url) == [("missed_dose", "DSP-0001")]
    heard_it.close()
    other.close()


YEAR_2000 = 946_684_800.0   # where a device that lost power may start its clock again


def test_a_device_talking_with_its_clock_years_behind_is_named_to_the_service_centre(
        database_url):
    register(database_url, [GATEWAY])
    p = Process(database_url, None)
    for k in range(5):   # a heartbeat every 5 minutes, dated from 2000-01-01 on
        at = NOW - 1200 + 300 * k
        p.batch([heard("GWY-0001", YEAR_2000 + 300 * k, at)])
        sweep(p, at + 5)
        # behind since the first sweep: named once it has been for 15 minutes
        assert bool(alerts(database_url)) == (k >= 3)
    [(queue, summary, status)] = query(
        database_url, "SELECT queue, summary, status FROM alerts")
    assert (queue, status) == ("technical", "open")
    hours = f"{(NOW - 1200 - YEAR_2000) / 3600:.0f}"
    assert summary == (f"GWY-0001 sends nothing dated within {hours} h of when we hear it: "
                       "its clock is wrong (behind, or restarted at 2000-01-01), so its "
                       "readings are dated wrong; set its clock")
    p.batch([heard("GWY-0001", NOW + 60, NOW + 60)])   # its clock is set
    sweep(p, NOW + 65)
    assert query(database_url, "SELECT rule, status, resolved_by FROM alerts") == [
        ("device_clock_wrong", "resolved", "rule:device_clock_wrong")]
    p.close()


def test_a_device_flushing_hours_of_buffered_messages_is_not_taken_for_a_wrong_clock(
        database_url):
    """After a network outage the oldest come first: between two batches of the flush the
    device seems hours behind, until its live messages come."""
    register(database_url, [GATEWAY])
    p = Process(database_url, None)
    back = NOW - 3000            # when it came back (device times may not pass ours)
    buffered = [back - 6 * 3600 + 300 * k for k in range(72)]
    p.batch([heard("GWY-0001", t, back) for t in buffered[:36]])
    sweep(p, back + 5)
    p.batch([heard("GWY-0001", t, back + 10) for t in buffered[36:]] +
            [heard("GWY-0001", back + 10, back + 10)])
    for k in range(1, 6):
        p.batch([heard("GWY-0001", back + 300 * k, back + 300 * k)])
        sweep(p, back + 300 * k + 5)
    assert alerts(database_url) == []
    assert query(database_url, "SELECT extract(epoch FROM last_heard)::float8 FROM devices") \
        == [(pytest.approx(back + 1500, abs=1e-3),)]   # every heartbeat was taken
    p.close()


def test_a_reading_that_reaches_us_hours_late_is_not_taken_for_a_wrong_clock(database_url):
    """An oximeter measures once a day: its reading, held at the broker while the engine
    was down (or buffered through an outage), stays its latest until tomorrow's."""
    register(database_url, [("OXI-0001", "Nonin", "3230", "pulse_oximeter", "Aarhus")])
    p = Process(database_url, None)
    back = NOW - 3000
    p.batch([heard("OXI-0001", back - 5 * 3600, back)])
    for k in range(5):
        sweep(p, back + 5 + 300 * k)
    assert alerts(database_url) == []
    p.close()


def test_a_device_an_engine_of_the_release_before_hears_is_not_silent(database_url):
    """Engines upgraded one by one share the subscription: the older one, knowing no
    last_heard (migration 0020), moves only last_seen for the messages it takes."""
    register(database_url, [GATEWAY])
    p = Process(database_url, None)
    p.batch([heard("GWY-0001", NOW - 1800, NOW - 1800)])     # this engine heard it
    with psycopg.connect(database_url) as conn:               # the older one the rest
        for k in range(1, 7):
            conn.execute("UPDATE devices SET seen_before = last_seen, "
                         "last_seen = greatest(last_seen, to_timestamp(%s)) "
                         "WHERE device_id = 'GWY-0001'", (NOW - 1800 + 300 * k,))
    sweep(p, NOW + 5)                                         # last heard 5 s ago
    assert alerts(database_url) == []
    p.close()


def test_a_dose_is_not_called_missed_early_when_the_release_before_moved_only_last_seen(
        database_url):
    register(database_url, [DISPENSER])
    p = Process(database_url, None)
    due = NOW - 3600
    p.batch([heard("DSP-0001", due, due, "dose.due")])
    with psycopg.connect(database_url) as conn:   # the older engine took its later messages
        conn.execute("UPDATE devices SET last_seen = to_timestamp(%s) "
                     "WHERE device_id = 'DSP-0001'", (due + 1500,))
    p.pipeline.fleet.refresh(p.conn)
    p.tick(due + 400)                              # its window is 30 minutes
    assert alerts(database_url) == []
    p.tick(due + 1800 + 61)
    assert ("missed_dose", "DSP-0001") in alerts(database_url)
    p.close()


def test_a_dose_taken_in_time_whose_message_came_after_the_miss_was_called_clears_it(
        database_url):
    """The dispenser's dose.taken, two minutes after the dose was due, reached us only after
    the timer had called the dose missed (its gateway held it): it shows the dose taken in
    time, and the alert is resolved, though it is dated before the deadline it fired at."""
    register(database_url, [DISPENSER])
    p = Process(database_url, None)
    due = NOW - 3600
    p.batch([heard("DSP-0001", due, due, "dose.due")])
    p.tick(due + 1800 + 61)
    assert query(database_url, "SELECT rule, status FROM alerts") == [("missed_dose", "open")]
    p.batch([heard("DSP-0001", due + 120, due + 2400, "dose.taken")])
    assert query(database_url, "SELECT rule, status, resolved_by FROM alerts") == [
        ("missed_dose", "resolved", "rule:missed_dose")]
    p.close()


def test_a_device_catching_up_on_hours_it_kept_is_not_taken_for_a_wrong_clock(database_url):
    """Its buffer sent over twenty minutes (or the demo's replayed history): heard again and
    again while behind, but its device time runs ahead faster than ours."""
    register(database_url, [GATEWAY])
    p = Process(database_url, None)
    start = NOW - 3000
    for k in range(21):            # a message a minute, each 10 minutes of its day later
        p.batch([heard("GWY-0001", start - 5 * 3600 + 600 * k, start + 60 * k)])
        sweep(p, start + 60 * k + 5)
    assert alerts(database_url) == []
    p.close()


def test_a_device_the_release_before_hears_is_online_in_the_fleet_views(database_url):
    register(database_url, [GATEWAY])
    p = Process(database_url, None)
    p.batch([heard("GWY-0001", NOW - 1800, NOW - 1800)])
    with psycopg.connect(database_url) as conn:   # the older engine took the rest
        conn.execute("UPDATE devices SET last_seen = to_timestamp(%s) "
                     "WHERE device_id = 'GWY-0001'", (NOW - 60,))
    fleet = p.pipeline.fleet
    fleet.refresh(p.conn)
    [k] = fleet.lookup(["GWY-0001"]).tolist()
    assert fleet.online(NOW)[k] and not fleet.silent(NOW)[k]
    p.close()


def open_alerts(database_url: str, rule: str) -> list[tuple[str, str]]:
    return query(database_url, "SELECT device_id, status FROM alerts WHERE rule = %s "
                               "ORDER BY id", (rule,))


def test_a_flapping_gateway_whose_clock_is_slow_stays_flapping_until_it_is_quiet(database_url):
    """Two hours slow, it lost its connection six times in 25 minutes: the alert stays open
    at each tick while it flaps, and clears once it has been quiet for the rule's hour on
    its own clock. By ours, its events were older than that and it cleared at the first."""
    register(database_url, [GATEWAY])
    p = Process(database_url, None)
    slow = 2 * 3600
    for k in range(6):
        at = NOW + 300 * k
        p.batch([heard("GWY-0001", at - slow, at, "connection.lost")])
    p.tick(NOW + 1500 + 15)
    assert open_alerts(database_url, "connection_flapping") == [("GWY-0001", "open")]
    p.tick(NOW + 1500 + 3600 - 60)
    assert open_alerts(database_url, "connection_flapping") == [("GWY-0001", "open")]
    p.tick(NOW + 1500 + 3600 + 1)
    assert open_alerts(database_url, "connection_flapping") == [("GWY-0001", "resolved")]
    p.close()


def test_a_jam_from_a_dispenser_whose_clock_restarted_at_2000_does_not_expire_at_once(
        database_url):
    """The jam's alert expires 12 hours after the jam on the dispenser's clock: 12 hours
    after we heard it, not at the first tick (its time is 26 years before ours)."""
    register(database_url, [DISPENSER])
    p = Process(database_url, None)
    p.batch([heard("DSP-0001", YEAR_2000 + 60, NOW, "fault.jam")])
    p.tick(NOW + 15)
    assert open_alerts(database_url, "dispenser_jam") == [("DSP-0001", "open")]
    p.tick(NOW + 12 * 3600 + 1)
    assert open_alerts(database_url, "dispenser_jam") == [("DSP-0001", "resolved")]
    p.close()


def alarm_lane(p: Process, m: RawMessage) -> None:
    """`m` through the alarm lane's two transactions (`LaneSpec.state_apart`)."""
    out = p.pipeline.process(p.conn, [m], state_apart=True)
    p.conn.commit()
    p.pipeline.write_state(p.conn, out)
    p.conn.commit()
    p.pipeline.after_commit(out)


def pressed(device_time: float, at: float) -> RawMessage:
    return RawMessage(f"{ROOT}/dev/PAL-0001/alarm", orjson.dumps(
        {"device_id": "PAL-0001", "time": device_time, "events": [{"code": "alarm.fall"}]}), at)


@pytest.mark.parametrize("clock", ["20 min behind", "restarted at 2000"])
def test_an_alarm_dated_before_the_last_one_resolved_reaches_the_queue(database_url, clock):
    """The last alarm was resolved; the next press comes from a device whose clock is
    behind (set back, or restarted at 2000-01-01 after a flat battery), so it is dated
    before the resolved alert last fired. It was taken for that alarm again, and opened
    nothing: every alarm of the device, from then on, reached no one."""
    from vagt.alerts import resolve

    register(database_url, [PERSONAL_ALARM])
    p = Process(database_url, None)
    alarm_lane(p, pressed(NOW - 3600, NOW - 3600))
    with psycopg.connect(database_url) as conn:
        resolve(conn, 1, "anna", "the citizen is fine", code="false_alarm")
    behind = NOW - 3600 - 1200 if clock == "20 min behind" else YEAR_2000
    alarm_lane(p, pressed(behind, NOW))
    alarm_lane(p, pressed(behind, NOW))        # the broker's copy of it: nothing more
    p.close()
    assert query(database_url, "SELECT id, status, reopen_count, repeat_count FROM alerts "
                               "WHERE rule = 'personal_alarm'") == [(1, "open", 1, 2)]
    # a later one after the next resolution, the clock still behind: again
    with psycopg.connect(database_url) as conn:
        resolve(conn, 1, "anna", "the citizen is fine", code="false_alarm")
        conn.execute("UPDATE alerts SET resolved_at = resolved_at - interval '1 hour'")
    p = Process(database_url, None)
    alarm_lane(p, pressed(behind + 60, NOW + 60))
    p.close()
    assert query(database_url, "SELECT id = 1, status FROM alerts "
                               "WHERE rule = 'personal_alarm' ORDER BY id") == [
        (True, "resolved"), (False, "open")]       # outside the reopen window: a new alert


def test_a_personal_alarm_silent_again_after_its_clock_was_set_back_is_alerted_again(
        database_url):
    """Heard with its clock right, silent for 3 heartbeats (alerted), heard again with its
    clock set back to 2000-01-01 (the alert clears), then silent for 15 hours. The second
    silence was dated as the first (the latest device time it ever sent plus the limit), so
    the queue took it for the resolved alert's firing again: a personal alarm no one heard
    for 15 hours, and no one told. Alerted again, dated 3 heartbeats after we heard it."""
    p, last = _silent_after_heard(database_url)
    assert open_alerts(database_url, "device_silent") == [("PAL-0001", "open")]
    back = p.now = last + 4 * HOUR
    p.batch([heard("PAL-0001", YEAR_2000, back)])
    sweep(p, back + 60)
    assert open_alerts(database_url, "device_silent") == [("PAL-0001", "resolved")]
    for k in range(1, 16):    # swept through 15 silent hours
        sweep(p, back + k * HOUR + 60)
    silent = query(database_url, "SELECT status, round(extract(epoch FROM last_fired_at) "
                                 "- %s) FROM alerts WHERE rule = 'device_silent' "
                                 "AND status <> 'resolved'", (back,))
    assert silent == [("open", 3 * HOUR)]
    p.close()


def test_a_silent_alarm_an_operator_resolved_is_not_opened_again_while_it_stays_silent(
        database_url):
    """The same silence goes on (nothing heard since): the sweep fires it again at every
    round, with the same date, which the queue takes for the alert resolved. Once the
    alarm is heard and falls silent again, that is a new silence, and alerted."""
    from vagt.alerts import resolve

    p, last = _silent_after_heard(database_url)
    with psycopg.connect(database_url) as conn:
        resolve(conn, 1, "anna", "the citizen is in hospital", code="no_action_needed")
    for k in range(4, 10):
        sweep(p, last + k * HOUR)
    assert open_alerts(database_url, "device_silent") == [("PAL-0001", "resolved")]
    again = p.now = last + 10 * HOUR
    p.batch([heard("PAL-0001", again, again)])
    sweep(p, again + 3 * HOUR + 60)
    assert [s for _, s in open_alerts(database_url, "device_silent")][-1] == "open"
    p.close()



def _silent_after_heard(database_url: str) -> tuple[Process, float]:
    """A personal alarm heard at NOW, its clock right, then silent for 3 heartbeats and
    swept (alerted); the process, and when it was heard."""
    register(database_url, [PERSONAL_ALARM])
    p = Process(database_url, None)
    last = p.now = NOW
    p.batch([heard("PAL-0001", last, last)])
    sweep(p, last + 3 * HOUR + 60)
    return p, last
