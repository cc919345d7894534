"""Bad input through the real broker and a running engine: a dead letter with a reason the
service centre can read, the engine going on, every message acknowledged once its dead
letter is committed, and counted; an alarm is never lost to a field it does not need."""

from __future__ import annotations

import time

import orjson
import psycopg
from tests.app.conftest import EngineProcess, publish, scalar, topic, wait_for
from tests.support import Broker

from vagt.alerts import actions

T0 = time.time() - 3600


def test_an_unreadable_alarm_is_in_its_citizens_municipality_for_its_operators(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    """A Randers operator sees only Randers' alerts: an alarm that could not be read is one
    from a device the registry has deployed in Randers, and must be among them."""
    engine.start().wait_ready()
    publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"), orjson.dumps(
        {"time": T0, "events": [{"code": "alarm.fall"}], "readings": [
            {"metric": "pulse", "value": 71, "unit": "furlong"}]}))])
    wait_for(lambda: scalar(database_url, "SELECT count(*) FROM alerts") == 1, what="alert")
    with psycopg.connect(database_url) as conn:
        [alert] = actions.list_alerts(conn, municipality="Randers")
    assert (alert.rule, alert.queue, alert.device_id) == ("unreadable_alarm", "emergency",
                                                          "ALM-0001")
    assert alert.labels["type"] == "personal_alarm"
