"""Late rows evaluated again in order take back the alerts they show never fired: a flushed
dose.taken that answered its dose.due in time resolves the missed-dose alert the flush's
first batch raised, and the call centre hears of it as of any resolution. What the rows in
order still support (a dose the timer called missed and nothing answered) stays; an alert
an operator holds stays theirs, with a note; a redelivery takes nothing back.

Real PostgreSQL with the engine's pipeline (as `test_shared_rule_state` drives it), and one
test through Mosquitto and `vagt run`."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
import pytest
from tests.app.conftest import EngineProcess, publish, query, register, topic, wait_for
from tests.app.test_shared_rule_state import DISPENSER, RULES, Process, spo2
from tests.support import Broker

from vagt.alerts import actions
from vagt.alerts.outbox import register_targets
from vagt.alerts.policy import DeliveryPolicy, WebhookTarget
from vagt.ingest.model import RawMessage

ROOT = "vagt/v1"
NOW = time.time()
DUE = NOW - 6 * 3600    # the dose the flush holds was due six hours ago


def dispenser(t: float, code: str | None = None, heard: float = NOW) -> RawMessage:
    """A message of the dispenser dated `t`, heard at `heard` by our clock: an event if
    `code` is given, else a battery reading (the device was alive then)."""
    body: dict[str, object] = {"device_id": "DSP-0001", "time": t}
    if code is None:
        body["readings"] = [{"metric": "battery", "value": 80, "unit": "%"}]
    else:
        body["events"] = [{"code": code}]
    return RawMessage(f"{ROOT}/dev/DSP-0001/telemetry", orjson.dumps(body), heard)


# the gateway's flush after an outage: the dose due, then five hours of the dispenser's
# readings, and then, in a batch of its own, the dose taken ten minutes after it was due
FLUSH = [dispenser(DUE, "dose.due")] + [dispenser(DUE + 600 * k) for k in range(1, 30)]
TAKEN = dispenser(DUE + 600, "dose.taken")


def hhmm(t: float) -> str:
    """A device time as the engine writes it in a note (its own time zone)."""
    return f"{datetime.fromtimestamp(t, UTC).astimezone():%H:%M %Z}".strip()


def dose_alert(database_url: str) -> tuple[object, ...]:
    """What an operator sees of the missed-dose alert: status, who holds it, how often it
    fired, its note."""
    [alert] = query(database_url, "SELECT status, claimed_by, repeat_count, note FROM alerts "
                                  "WHERE rule = 'missed_dose'")
    return alert


def told(database_url: str) -> list[tuple[object, ...]]:
    """What the call centre's receiver is sent, in order: event, and with a resolution its
    code."""
    return query(database_url, "SELECT o.event, o.payload->'alert'->>'resolution_code' "
                               "FROM alert_outbox o JOIN alert_deliveries d "
                               "ON d.outbox_id = o.id AND d.target = 'callcentre' ORDER BY o.id")


@pytest.fixture
def dispensers(database_url: str) -> str:
    register(database_url, [DISPENSER])
    with psycopg.connect(database_url) as conn:
        register_targets(conn, DeliveryPolicy(webhooks=(
            WebhookTarget("callcentre", "http://127.0.0.1:9/", b"x" * 16),)))
    return database_url


def test_a_dose_taken_in_time_that_a_later_batch_of_the_flush_brought_takes_the_alert_back(
        dispensers):
    """The first batch of the flush has the dose.due and the hours after it: the rules call
    the dose missed. The next has the dose.taken, ten minutes after it was due: in order,
    the dose was taken in time, and home care must not go out."""
    p = Process(dispensers, None)
    p.batch(FLUSH)
    assert dose_alert(dispensers)[0] == "open"
    out = p.batch([TAKEN])
    p.close()
    assert out.replayed == 1
    assert dose_alert(dispensers) == (
        "resolved", None, 0,
        f"taken back: dose.taken at {hhmm(DUE + 600)} came within 30 min of dose.due at "
        f"{hhmm(DUE)} (a message arrived late)")
    assert told(dispensers) == [("opened", None), ("resolved", "cleared")]


def test_a_dose_an_operator_holds_is_left_to_them_with_a_note_once(dispensers):
    """Anna is on the phone to home care about the dose: the alert stays hers, and its note
    says why vagt would take it back. The same message delivered again adds nothing."""
    p = Process(dispensers, None)
    p.batch(FLUSH)
    [(alert_id,)] = query(dispensers, "SELECT id FROM alerts")
    with psycopg.connect(dispensers, autocommit=True) as conn:
        actions.claim(conn, alert_id, "anna")
    p.batch([TAKEN])
    p.batch([TAKEN])
    p.close()
    status, holder, fired, note = dose_alert(dispensers)
    assert (status, holder, fired) == ("claimed", "anna", 1)
    assert note == (f"vagt would take this back, and leaves it to anna, who holds it: "
                    f"dose.taken at {hhmm(DUE + 600)} came within 30 min of dose.due at "
                    f"{hhmm(DUE)} (a message arrived late)")
    assert told(dispensers) == [("opened", None), ("claimed", None), ("note", None)]


def test_the_flush_delivered_again_after_the_take_back_changes_nothing(dispensers):
    p = Process(dispensers, None)
    p.batch(FLUSH)
    p.batch([TAKEN])
    before = (dose_alert(dispensers), told(dispensers),
              query(dispensers, "SELECT count(*) FROM alert_audit"))
    for out in (p.batch(FLUSH), p.batch([TAKEN])):
        assert out.replayed == 1    # the same rows again are late rows too
    p.close()
    assert (dose_alert(dispensers), told(dispensers),
            query(dispensers, "SELECT count(*) FROM alert_audit")) == before


def test_a_dose_the_timer_called_missed_stays_missed_when_late_rows_do_not_answer_it(
        dispensers):
    """The dispenser went silent after the dose was due, and the timer called it missed;
    then a reading from before the dose came late. In order nothing answers the dose: the
    alert stands (the rules' state waits on its deadline again, and the timer calls it
    missed again: the same alert, as it was)."""
    p = Process(dispensers, None)
    p.batch([dispenser(DUE, "dose.due", heard=DUE)])
    p.tick(DUE + 1800 + 61)
    out = p.batch([dispenser(DUE - 300, heard=DUE + 3600)])
    p.tick(DUE + 3600 + 1800 + 120)     # its clock seems an hour behind now
    p.close()
    assert out.replayed == 1
    assert dose_alert(dispensers) == ("open", None, 1, None)
    assert told(dispensers) == [("opened", None)]


def test_a_dose_the_timer_called_missed_is_taken_back_by_late_rows_that_answer_it(dispensers):
    p = Process(dispensers, None)
    p.batch([dispenser(DUE, "dose.due", heard=DUE)])
    p.tick(DUE + 1800 + 61)
    out = p.batch([dispenser(DUE - 300, heard=DUE + 3600),
                   dispenser(DUE + 600, "dose.taken", heard=DUE + 3600)])
    p.tick(DUE + 3600 + 1800 + 120)
    p.close()
    assert out.replayed == 1
    assert dose_alert(dispensers)[:3] == ("resolved", None, 0)
    assert told(dispensers) == [("opened", None), ("resolved", "cleared")]


def test_a_dose_missed_in_order_too_is_not_taken_back(dispensers):
    """The late dose.taken came forty minutes after the dose was due: too late. In order
    the dose was missed and then taken: the alert is resolved as any taken dose resolves it,
    and keeps its count."""
    p = Process(dispensers, None)
    p.batch(FLUSH)
    p.batch([dispenser(DUE + 2400, "dose.taken")])
    p.close()
    assert dose_alert(dispensers)[:3] == ("resolved", None, 1)
    assert query(dispensers, "SELECT note FROM alerts") == [
        ("cleared: the condition no longer holds",)]


# --- a dose.taken older than the state kept to go back to -----------------------------------

def past_the_kept_state(database_url: str, flush: list[RawMessage]) -> Process:
    """A process that has taken `flush` and then the next dose due, each write a state to go
    back to: rows older than the flush's last are too old to be evaluated again in order
    (the rules' state before them is gone)."""
    p = Process(database_url, None)
    p.pipeline.shared.checkpoint_age_s = 0.0
    p.batch(flush)
    p.batch([dispenser(max(m_time(m) for m in flush) + 600, "dose.due")])
    return p


def m_time(message: RawMessage) -> float:
    return float(orjson.loads(message.payload)["time"])


def test_a_dose_taken_too_old_to_evaluate_in_order_still_takes_its_missed_dose_back(
        dispensers):
    """The dose.taken comes after newer batches than the flush's: too old to evaluate again
    in order. It still answered the dose in time, and home care must not go out."""
    p = past_the_kept_state(dispensers, FLUSH)
    assert dose_alert(dispensers)[0] == "open"
    out = p.batch([TAKEN])
    p.close()
    assert (out.too_late, out.replayed) == (1, 0)
    assert dose_alert(dispensers) == (
        "resolved", None, 0,
        f"taken back: dose.taken at {hhmm(DUE + 600)} came within 30 min of dose.due at "
        f"{hhmm(DUE)} (a message arrived late)")
    assert told(dispensers) == [("opened", None), ("resolved", "cleared")]


def test_the_next_dose_missed_after_a_too_old_take_back_reaches_home_care(dispensers):
    """The rules' state is left as it was (it still has the alert firing): the next dose,
    due after the flush and missed, must still be called missed, as one missed dose."""
    p = past_the_kept_state(dispensers, FLUSH)
    p.batch([TAKEN])
    next_due = m_time(FLUSH[-1]) + 600
    p.batch([dispenser(next_due + 1800 + 600)])      # alive, and nothing taken
    p.close()
    [(status, fired, opened_at)] = query(
        dispensers, "SELECT status, repeat_count, extract(epoch FROM opened_at)::float8 "
                    "FROM alerts")
    assert (status, fired) == ("open", 1)
    assert opened_at == pytest.approx(next_due + 1800, abs=1e-3)
    assert told(dispensers) == [("opened", None), ("resolved", "cleared"), ("reopened", None)]


def test_a_too_old_dose_taken_leaves_a_held_alert_to_its_operator_with_a_note_once(
        dispensers):
    p = past_the_kept_state(dispensers, FLUSH)
    [(alert_id,)] = query(dispensers, "SELECT id FROM alerts")
    with psycopg.connect(dispensers, autocommit=True) as conn:
        actions.claim(conn, alert_id, "anna")
        actions.acknowledge(conn, alert_id, "anna", "home care is on the way")
    p.batch([TAKEN])
    p.batch([TAKEN])
    p.close()
    status, holder, fired, note = dose_alert(dispensers)
    assert (status, holder, fired) == ("acknowledged", "anna", 1)
    assert note.endswith(f"vagt would take this back, and leaves it to anna, who holds it: "
                         f"dose.taken at {hhmm(DUE + 600)} came within 30 min of dose.due "
                         f"at {hhmm(DUE)} (a message arrived late)")
    assert told(dispensers)[-1] == ("note", None)
    assert [e for e, _ in told(dispensers)].count("note") == 1


def test_a_too_old_dose_taken_after_the_window_does_not_take_the_alert_back(dispensers):
    """Forty minutes after it was due: the dose was missed, whenever the message came."""
    p = past_the_kept_state(dispensers, FLUSH)
    out = p.batch([dispenser(DUE + 2400, "dose.taken")])
    p.close()
    assert out.too_late == 1
    assert dose_alert(dispensers) == ("open", None, 1, None)


def test_a_too_old_dose_taken_does_not_take_back_an_alert_of_two_missed_doses(dispensers):
    """The alert counts a second dose missed since: the one answer answers only the first."""
    second = DUE + 4 * 3600
    flush = FLUSH[:24] + [dispenser(second, "dose.due")] + FLUSH[24:]
    p = past_the_kept_state(dispensers, flush)
    assert dose_alert(dispensers)[:3] == ("open", None, 2)
    p.batch([TAKEN])
    p.close()
    assert dose_alert(dispensers) == ("open", None, 2, None)


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    p = tmp_path / "rules.toml"
    p.write_text(RULES)
    return p


def stuck_alerts(database_url: str) -> list[tuple[object, ...]]:
    return query(database_url, "SELECT status, repeat_count, note FROM alerts "
                               "WHERE rule = 'spo2_stuck' ORDER BY id")


def test_a_late_reading_that_breaks_a_stuck_run_takes_its_alert_back(database_url, rules_file):
    """Not only doses: four equal SpO2 readings, one of them late, looked stuck; the late
    one, a different value, shows in order that they never were four in a row."""
    register(database_url, [("OXI-0001", "Nonin", "3230", "pulse_oximeter", "Aarhus")])
    p = Process(database_url, rules_file)
    t0 = NOW - 3600
    p.batch([spo2("OXI-0001", t0 + 60 * m, 95) for m in (0, 1, 3, 4)])
    assert [a[0] for a in stuck_alerts(database_url)] == ["open"]
    p.batch([spo2("OXI-0001", t0 + 120, 97)])
    p.close()
    assert stuck_alerts(database_url) == [(
        "resolved", 0, "taken back: OXI-0001's messages, put in device-time order with those "
        "that arrived late, do not set off spo2_stuck (it was set off by them out of order)")]


def test_a_late_reading_that_ends_a_stuck_run_clears_the_alert_it_kept_firing(
        database_url, rules_file):
    """In order the run was stuck at minute 4 and a different value at minute 5 ended it;
    taken out of order, minutes 6 and 7 kept it firing. The clear at minute 5 resolves it."""
    register(database_url, [("OXI-0001", "Nonin", "3230", "pulse_oximeter", "Aarhus")])
    p = Process(database_url, rules_file)
    t0 = NOW - 3600
    p.batch([spo2("OXI-0001", t0 + 60 * m, 95) for m in (1, 2, 3, 4, 6, 7)])
    p.batch([spo2("OXI-0001", t0 + 300, 97)])
    p.close()
    assert stuck_alerts(database_url) == [
        ("resolved", 1, "cleared: the condition no longer holds")]


def test_the_engine_takes_back_a_missed_dose_that_a_late_message_shows_taken(
        engine: EngineProcess, broker: Broker, database_url, topic_root):
    """Through Mosquitto and `vagt run`: the gateway's flush, then the late dose.taken."""
    register(database_url, [DISPENSER])
    engine.start().wait_ready()
    publish(broker.port, [(m.topic.replace(ROOT, topic_root, 1), m.payload) for m in FLUSH])
    wait_for(lambda: query(database_url, "SELECT status FROM alerts") == [("open",)],
             what="the missed-dose alert")
    publish(broker.port, [(topic(topic_root, "DSP-0001", "telemetry"), TAKEN.payload)])
    wait_for(lambda: query(database_url, "SELECT status FROM alerts") == [("resolved",)],
             what="the alert taken back")
    assert query(database_url, "SELECT event FROM alert_outbox ORDER BY id") == [
        ("opened",), ("resolved",)]
    # the lane logs what its batch did once the batch is committed: after the row shows it
    [(alert_id,)] = query(database_url, "SELECT id FROM alerts")
    wait_for(lambda: f"event=alert_taken_back alert_id={alert_id} " in engine.log(),
             what="its log line")
