"""The engine through a database that goes away or goes silent: the lanes notice, say so,
and go on within seconds of the database answering again."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from tests.app.conftest import EngineProcess, alarm, publish, scalar, topic, wait_for
from tests.app.db_proxy import DatabaseProxy
from tests.support import Broker

T0 = time.time() - 3600


@pytest.fixture
def proxy() -> Iterator[DatabaseProxy]:
    p = DatabaseProxy()
    p.up()
    yield p
    p.down()


def events(database_url: str) -> int:
    return int(scalar(database_url, "SELECT count(*) FROM events"))


def test_an_alarm_held_through_a_database_outage_is_committed_within_seconds_of_its_return(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices,
        proxy: DatabaseProxy):
    engine.env["VAGT_DATABASE_URL"] = proxy.url(database_url)
    engine.start().wait_ready()
    publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0))])
    wait_for(lambda: events(database_url) == 1, what="the first alarm")
    proxy.down()
    publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"),
                           alarm("ALM-0001", T0 + 10, "alarm.button"))])
    # long enough for psycopg_pool's own backoff (1, 2, 4, 8, 16 s ...) to leave a gap
    time.sleep(20)
    proxy.up()
    back = time.monotonic()
    wait_for(lambda: events(database_url) == 2, timeout=60, what="the alarm of the outage")
    delay = time.monotonic() - back
    assert delay < 6, f"the alarm was committed {delay:.1f} s after the database was back"
