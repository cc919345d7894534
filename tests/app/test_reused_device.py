"""A device the centre takes back and gives to another citizen starts with no rule state:
the next citizen's weight is not compared with the last one's, a dose the last citizen had
due is not missed by the next, and the device is silent from its deployment on, not from
its last message to the citizen before. Real PostgreSQL; the engine's pipeline as
`test_shared_rule_state` drives it."""

from __future__ import annotations

import sys
import threading
import time

import orjson
import psycopg
import pytest
from tests.app.conftest import query, register, telemetry
from tests.app.test_shared_rule_state import DISPENSER, Process, event

from vagt.devices import InvalidTransition, deploy, import_csv, return_device
from vagt.ingest.model import RawMessage

ROOT = "vagt/v1"
NOW = time.time()
HOUR = 3600.0
DAY = 24 * HOUR
SCALE = ("SCL-0001", "A&D", "UC-352BLE", "scale", "Aarhus")


@pytest.fixture(autouse=True)
def now(monkeypatch: pytest.MonkeyPatch) -> None:
    """NOW is when the test starts, not when the module was imported: a deployment is made
    at the wall clock's now, and the silence test sweeps an hour after NOW expecting it an
    hour after the deployment; in a run that reached it 20 minutes after collection, the
    device was not yet silent at that sweep."""
    monkeypatch.setattr(sys.modules[__name__], "NOW", time.time())


def engine(database_url: str) -> Process:
    """An engine process with the built-in rules (what a centre runs), whose clock is two
    days ahead, so that the next citizen's messages (device times after the deployment,
    which is now) are not from the future."""
    return Process(database_url, None, clock=NOW + 2 * DAY)


def weight(t: float, kg: float) -> RawMessage:
    return RawMessage(f"{ROOT}/dev/SCL-0001/telemetry", telemetry("SCL-0001", t, weight=kg),
                      time.time())


def give_to_the_next_citizen(database_url: str, device_id: str, municipality: str,
                             by: str) -> None:
    """The device comes back to the centre and goes out again, to citizen B, by the command
    or by an import of the registry's file."""
    with psycopg.connect(database_url) as conn:
        return_device(conn, device_id, actor="staff")
    with psycopg.connect(database_url) as conn:
        if by == "command":
            deploy(conn, device_id, citizen_ref="cit-b", municipality=municipality,
                   actor="staff")
            return
        row = next(d for d in (SCALE, DISPENSER) if d[0] == device_id)
        import_csv(conn, "fleet.csv", actor="staff", text=(
            "device_id,vendor,model,type,municipality,citizen_ref\n"
            f"{','.join(row[:4])},{municipality},cit-b\n"))


def alerts(database_url: str) -> list[tuple[str, str]]:
    return query(database_url, "SELECT rule, device_id FROM alerts ORDER BY id")


@pytest.mark.parametrize("by", ["command", "import"])
@pytest.mark.parametrize("after", ["the same engine", "a restarted engine"])
def test_the_next_citizens_weight_is_not_compared_with_the_last_citizens(
        database_url, by, after):
    register(database_url, [SCALE])
    p = engine(database_url)
    p.batch([weight(NOW - 2 * HOUR, 70.0)])
    p.batch([weight(NOW - HOUR, 70.4)])          # citizen A: steady
    give_to_the_next_citizen(database_url, "SCL-0001", "Odder", by)
    if after == "a restarted engine":            # the window comes from the stored readings
        p.close()
        p = engine(database_url)
    p.batch([weight(NOW + HOUR, 81.0)])          # citizen B weighs 81 kg: no gain of 10.6
    assert alerts(database_url) == []
    p.batch([weight(NOW + 2 * HOUR, 83.5)])      # B gains 2.5 kg: the rule still works
    assert alerts(database_url) == [("weight_gain", "SCL-0001")]
    p.close()


def test_the_last_citizens_readings_that_come_after_the_next_ones_are_stored_not_evaluated(
        database_url):
    """A weighing from before the deployment that comes late (after the next citizen's
    messages) is the last citizen's: the rules, which evaluate late rows again in order from
    a stored state, do not go back into the last citizen's time for it, and alert nobody of
    a gain the citizen who has the scale now did not make."""
    register(database_url, [SCALE])
    p = engine(database_url)
    p.batch([weight(NOW - 2 * HOUR, 70.0)])
    give_to_the_next_citizen(database_url, "SCL-0001", "Odder", "command")
    p.batch([RawMessage(f"{ROOT}/dev/SCL-0001/telemetry",       # B's: a heartbeat
                        telemetry("SCL-0001", NOW + HOUR, battery=90), time.time())])
    p.batch([weight(NOW - HOUR, 72.5)])           # A's, held up somewhere: +2.5 kg
    assert alerts(database_url) == []
    assert query(database_url, "SELECT count(*) FROM readings WHERE metric = 'weight'") \
        == [(2,)]
    p.close()


@pytest.mark.parametrize("flushed", ["a weighing", "a dose due"])
def test_what_the_device_kept_from_the_last_citizen_is_stored_not_evaluated(
        database_url, flushed):
    """A device that was offline when it came back keeps what it could not send, and sends
    it from the next citizen's home: stored, as the last citizen's by its time, and not
    evaluated as the next citizen's (no weight gain between two people, no dose missed
    that was never the next citizen's)."""
    device = "SCL-0001" if flushed == "a weighing" else "DSP-0001"
    register(database_url, [SCALE, DISPENSER])
    p = engine(database_url)
    if flushed == "a weighing":
        p.batch([weight(NOW - 3 * DAY, 70.0)])
    give_to_the_next_citizen(database_url, device, "Odder", "command")
    if flushed == "a weighing":
        kept = p.batch([weight(NOW - 2 * DAY, 79.0)])  # A's, kept on the scale
        assert (kept.before_deployment, kept.too_late) == (1, 0)   # counted as what it is
        p.batch([weight(NOW + HOUR, 81.0)])           # B's first weighing
    else:
        p.batch([event(device, NOW - 2 * DAY, "dose.due")])
        p.tick(NOW + HOUR)
    assert alerts(database_url) == []
    assert query(database_url, "SELECT count(*) FROM readings") \
        == [(3 if flushed == "a weighing" else 0,)]
    p.close()


ALARM = ("ALM-0001", "Tunstall", "Lifeline Vi+", "personal_alarm", "Randers")


def alarm_lane(p: Process, t: float) -> None:
    """A personal alarm through the alarm lane: alerts from memory, then state under lock."""
    msg = RawMessage(f"{ROOT}/dev/ALM-0001/alarm", orjson.dumps(
        {"device_id": "ALM-0001", "time": t, "events": [{"code": "alarm.fall"}]}), time.time())
    out = p.pipeline.process(p.conn, [msg], state_apart=True)
    p.conn.commit()
    p.pipeline.write_state(p.conn, out)
    p.conn.commit()


def bulk_lane(p: Process, t: float) -> None:
    """A personal alarm a gateway sends on the telemetry channel: the bulk lane."""
    p.batch([event("ALM-0001", t, "alarm.fall")])


@pytest.mark.parametrize("lane", [alarm_lane, bulk_lane])
@pytest.mark.parametrize("dated", ["two days before", "2000-01-01"])
def test_an_alarm_dated_before_the_deployment_is_not_the_next_citizens_but_is_heard(
        database_url, lane, dated):
    """Pressed at the last citizen's home two days before the device was deployed again and
    sent from the next citizen's, or from a device whose clock restarted at 2000-01-01: not
    the next citizen's alarm (no alert with their labels), but the personal alarm's queue
    hears of it, dated, as one to check. The next citizen's own alarm is theirs."""
    register(database_url, [ALARM])
    p = engine(database_url)
    with psycopg.connect(database_url) as conn:
        return_device(conn, "ALM-0001", actor="staff")
    with psycopg.connect(database_url) as conn:
        deploy(conn, "ALM-0001", citizen_ref="cit-b", municipality="Randers", actor="staff")
    when = NOW - 2 * DAY if dated == "two days before" else 946684800.0 + 300
    lane(p, when)
    [(rule, queue, severity, labels, summary)] = query(
        database_url, "SELECT rule, queue, severity, labels, summary FROM alerts")
    assert (rule, queue, severity) == ("alarm_before_deployment", "emergency", "critical")
    assert "citizen_ref" not in labels and "municipality" not in labels
    assert "2000-01-01 00:05:00 UTC" in summary if dated == "2000-01-01" else "clock" in summary
    assert query(database_url, "SELECT count(*) FROM events") == [(1,)]
    lane(p, NOW + 60)
    assert alerts(database_url) == [("alarm_before_deployment", "ALM-0001"),
                                    ("personal_alarm", "ALM-0001")]
    p.close()


@pytest.mark.parametrize("first", ["evaluated", "stored only"])
def test_the_next_citizens_device_with_a_clock_a_little_late_is_evaluated(
        database_url, first):
    """Ten minutes behind the centre's clock, its rows are the next citizen's: evaluated as
    they come, and a rule's window read from the stored readings has them too (the first
    weighing stored by an engine whose rules did not keep it, say)."""
    register(database_url, [SCALE])
    p = engine(database_url)
    give_to_the_next_citizen(database_url, "SCL-0001", "Odder", "command")
    if first == "evaluated":
        p.batch([weight(NOW - 600, 80.0)])
    else:
        with psycopg.connect(database_url) as conn:
            conn.execute("INSERT INTO readings (time, device_id, metric, value, unit, "
                         "received_at) VALUES (to_timestamp(%s), 'SCL-0001', 'weight', 80.0, "
                         "'kg', now())", (NOW - 600,))
    p.batch([weight(NOW - 300, 82.5)])
    assert alerts(database_url) == [("weight_gain", "SCL-0001")]
    p.close()


@pytest.mark.parametrize("ticks", ["the engine that saw the dose due",
                                   "another engine, started before the deployment"])
def test_a_dose_the_last_citizen_had_due_is_not_missed_by_the_next_one(
        database_url, ticks):
    register(database_url, [DISPENSER])
    a = engine(database_url)
    a.batch([event("DSP-0001", NOW - 600, "dose.due")])   # A's dose, due 30 minutes on
    b = engine(database_url)                  # restored with the dose pending
    give_to_the_next_citizen(database_url, "DSP-0001", "Skive", "command")
    ticking = a if ticks.startswith("the engine") else b
    ticking.tick(NOW + HOUR)
    assert alerts(database_url) == []
    ticking.batch([event("DSP-0001", NOW + HOUR, "dose.due")])   # B's own dose, not taken
    ticking.tick(NOW + 2 * HOUR)
    assert alerts(database_url) == [("missed_dose", "DSP-0001")]
    a.close()
    b.close()


def sweep(p: Process, now: float) -> None:
    out = p.pipeline.tick(p.conn, now, sweep=True)
    p.conn.commit()
    p.pipeline.after_commit(out)


def test_a_device_given_to_another_citizen_is_silent_from_its_deployment_on(
        database_url):
    # device_silent: three heartbeats, 45 minutes for this dispenser
    register(database_url, [DISPENSER])
    p = engine(database_url)
    p.batch([event("DSP-0001", NOW - 3 * DAY, "dose.taken")])   # A's last message
    give_to_the_next_citizen(database_url, "DSP-0001", "Skive", "command")
    sweep(p, NOW + 30 * 60)                     # being installed at B's: not silent
    assert alerts(database_url) == []
    sweep(p, NOW + HOUR)                        # an hour after the deployment, nothing yet
    assert alerts(database_url) == [("device_silent", "DSP-0001")]
    p.close()


@pytest.mark.parametrize("by", ["command", "import"])
def test_a_refurbished_device_whose_counter_starts_again_has_its_gaps_counted(
        database_url, by):
    register(database_url, [SCALE])
    p = engine(database_url)
    p.batch([RawMessage(f"{ROOT}/dev/SCL-0001/telemetry",
                        telemetry("SCL-0001", NOW - DAY, seq=5000, weight=80.0), time.time())])
    give_to_the_next_citizen(database_url, "SCL-0001", "Skive", by)
    # the counter starts again at the next citizen's; 2-4 and 6-9 never reach vagt
    for seq in (1, 5, 10):
        p.batch([RawMessage(f"{ROOT}/dev/SCL-0001/telemetry",
                            telemetry("SCL-0001", NOW + seq * 60, seq=seq, weight=70.0),
                            time.time())])
    assert query(database_url, "SELECT last_seq, seq_gaps FROM devices") == [(10, 7)]
    p.close()


def resolve_all(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE alerts SET status = 'resolved', resolved_at = now(), "
                     "resolved_by = 'anna', resolution_code = 'false_alarm'")


@pytest.mark.parametrize("lane", [alarm_lane, bulk_lane])
def test_the_next_citizens_first_alarm_goes_to_their_municipality_at_once(database_url, lane):
    """The installer presses the button as the device is deployed to the next citizen, in
    Skive: the alert is Skive's (its operators see it), not Randers', the last citizen's,
    though the running engine last read the registry before the deployment."""
    register(database_url, [ALARM])
    p = engine(database_url)
    lane(p, NOW - 60)                             # the last citizen's, in Randers
    resolve_all(database_url)
    with psycopg.connect(database_url) as conn:
        return_device(conn, "ALM-0001", actor="staff")
    with psycopg.connect(database_url) as conn:
        deploy(conn, "ALM-0001", citizen_ref="cit-b", municipality="Skive", actor="staff")
    lane(p, NOW + 60)
    assert query(database_url, "SELECT labels->>'municipality' FROM alerts "
                               "WHERE status <> 'resolved'") == [("Skive",)]
    p.close()


def test_a_returned_devices_alarm_is_not_the_last_citizens_municipalitys(database_url):
    """Back in the centre's stock, a device pressed in the workshop is nobody's in Randers."""
    register(database_url, [ALARM])
    p = engine(database_url)
    alarm_lane(p, NOW - 60)
    resolve_all(database_url)
    with psycopg.connect(database_url) as conn:
        return_device(conn, "ALM-0001", actor="staff")
    alarm_lane(p, NOW + 60)
    assert query(database_url, "SELECT labels->>'municipality' FROM alerts "
                               "WHERE status <> 'resolved'") == [("",)]   # the centre's
    p.close()


def test_an_alarm_committed_as_the_device_is_deployed_holds_the_deployment_back(database_url):
    """The alarm lane makes its alert without waiting for the device's row (a bulk batch
    may hold it). A deployment that checked for alerts not resolved while that alert was
    not yet committed gave the next citizen a device with one open: their alarms would be
    its repeats, in the stock's municipality. The deployment waits for the alarm, sees it
    and is refused; or it came first, and the alarm is the next citizen's."""
    register(database_url, [ALARM])
    p = engine(database_url)
    with psycopg.connect(database_url) as conn:
        return_device(conn, "ALM-0001", actor="staff")
    msg = RawMessage(f"{ROOT}/dev/ALM-0001/alarm", orjson.dumps(
        {"device_id": "ALM-0001", "time": NOW, "events": [{"code": "alarm.fall"}]}),
        time.time())
    p.pipeline.process(p.conn, [msg], state_apart=True)   # the alert, not yet committed
    outcome: list[str] = []

    def staff_deploys() -> None:
        with psycopg.connect(database_url) as conn:
            try:
                deploy(conn, "ALM-0001", citizen_ref="cit-b", municipality="Skive",
                       actor="staff")
                outcome.append("deployed")
            except InvalidTransition as e:
                outcome.append(str(e))

    staff = threading.Thread(target=staff_deploys)
    staff.start()
    staff.join(timeout=1.0)
    p.conn.commit()
    staff.join(timeout=10)
    deployed = query(database_url, "SELECT status FROM devices") == [("deployed",)]
    unresolved = query(database_url, "SELECT rule FROM alerts WHERE status <> 'resolved'")
    assert not (deployed and unresolved), (outcome, unresolved)
    assert outcome and "has alerts that are not resolved" in outcome[0]
    p.close()
