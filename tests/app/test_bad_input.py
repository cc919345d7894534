"""Bad input through the real broker and a running engine: a dead letter with a reason the
service centre can read, the engine going on, every message acknowledged once its dead
letter is committed, and counted; an alarm is never lost to a field it does not need."""

from __future__ import annotations

import time
import urllib.request

import orjson
import psycopg
import pytest
from tests.app.conftest import EngineProcess, publish, query, scalar, topic, wait_for
from tests.support import Broker

from vagt.alerts import actions

T0 = time.time() - 3600


def metrics(engine: EngineProcess) -> dict[str, float]:
    """The engine's counters and gauges by name and labels, as scraped."""
    url = f"http://127.0.0.1:{engine.env['VAGT_METRICS_PORT']}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {name: float(value) for line in text.splitlines()
            if line and not line.startswith("#") for name, value in [line.rsplit(" ", 1)]}


def test_an_unreadable_alarm_is_in_its_citizens_municipality_for_its_operators(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    """A Randers operator sees only Randers' alerts: an alarm that could not be read is one
    from a device the registry has deployed in Randers, and must be among them."""
    engine.start().wait_ready()
    publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"), orjson.dumps(
        {"time": T0, "events": [{"code": "Alarm Fall"}]}))])
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM alerts") == 1, what="alert")
    with psycopg.connect(database_url) as conn:
        [alert] = actions.list_alerts(conn, municipality="Randers")
    assert (alert.rule, alert.queue, alert.device_id) == ("unreadable_alarm", "emergency",
                                                          "ALM-0001")
    assert alert.labels["type"] == "personal_alarm"


ALARM_BESIDE = {
    "battery": ({"status": {"battery": 120}}, "impossible_value", "status.battery: battery 120 %"),
    "reading": ({"readings": [{"metric": "pulse", "value": 71, "unit": "furlong"}]},
                "unknown_unit", "readings[0].unit: unit 'furlong'"),
    "field": ({"batery": 80}, "schema", "the message has unknown field 'batery'"),
}


@pytest.mark.parametrize("beside", ALARM_BESIDE.values(), ids=list(ALARM_BESIDE))
def test_an_alarm_beside_a_bad_field_it_does_not_need_is_the_alarm_and_the_rest_a_dead_letter(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices, beside):
    """The call centre gets the alarm as an alarm (its code, its time, its routing), not an
    unreadable one, when only a reading, the status or an unknown field beside its event is
    bad; the message is kept whole as a dead letter saying what was refused and that its
    events were used."""
    extra, reason, words = beside
    engine.start().wait_ready()
    publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"), orjson.dumps(
        {"time": T0, "events": [{"code": "alarm.fall"}], **extra}))])
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM alerts") == 1, what="alert")
    assert query(database_url, "SELECT rule, summary, queue, labels->>'municipality', "
                               "extract(epoch FROM opened_at)::float8 FROM alerts") == [
        ("personal_alarm", "alarm.fall from ALM-0001", "emergency", "Randers",
         pytest.approx(T0, abs=1e-3))]
    [(got, detail)] = query(database_url, "SELECT reason, detail FROM dead_letters")
    assert got == reason and detail.startswith(words)
    assert "its events were used" in detail
    assert scalar(database_url, "SELECT count(*) FROM readings") == 0
    counted = metrics(engine)
    assert counted[f'vagt_dead_letters_total{{reason="{reason}"}}'] == 1
    assert counted['vagt_messages_acked_total{lane="alarm"}'] == 1
