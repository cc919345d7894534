"""The engine through a database that goes away or goes silent: the lanes notice, say so,
and go on within seconds of the database answering again."""

from __future__ import annotations

import signal
import time
import urllib.parse
import urllib.request

from tests.app.conftest import (
    EngineProcess,
    alarm,
    publish,
    scalar,
    telemetry,
    topic,
    wait_for,
)
from tests.app.db_proxy import DatabaseProxy
from tests.support import Broker

from vagt.app.config import Config
from vagt.app.engine import open_engine_pool

T0 = time.time() - 3600


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


def sample(engine: EngineProcess, series: str) -> float:
    """One sample of the engine's /metrics, by its name and labels as the scrape spells them."""
    url = f"http://127.0.0.1:{engine.env['VAGT_METRICS_PORT']}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return float(next(line for line in text.splitlines() if line.startswith(series + " "))
                 .removeprefix(series + " "))


def in_hand_seconds(engine: EngineProcess, lane: str) -> float:
    return sample(engine, f'vagt_lane_batch_in_hand_seconds{{lane="{lane}"}}')


def test_an_alarm_on_a_database_gone_silent_is_committed_on_a_new_connection_within_seconds(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices,
        proxy: DatabaseProxy):
    engine.env["VAGT_DATABASE_URL"] = proxy.url(database_url)
    engine.env["VAGT_DATABASE_ALARM_TRANSACTION_TIMEOUT_S"] = "5"
    # the alarm lane's second transaction, its devices' state, has the bulk lane's limit
    engine.env["VAGT_DATABASE_TRANSACTION_TIMEOUT_S"] = "5"
    engine.start().wait_ready()
    publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0))])
    wait_for(lambda: events(database_url) == 1, what="the first alarm")
    # the server behind the open connections crashed, or its address failed over: they
    # stay open and answer nothing; a new connection reaches a server that works
    proxy.go_silent()
    publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"),
                           alarm("ALM-0001", T0 + 10, "alarm.button"))])
    sent = time.monotonic()
    time.sleep(3)
    assert in_hand_seconds(engine, "alarm") >= 2   # what ops alert on: the lane is stuck
    wait_for(lambda: events(database_url) == 2, timeout=30, what="the alarm")
    assert time.monotonic() - sent < 12
    # The alarm's transaction may have had a connection the pool opened after the server
    # went silent (psycopg_pool grows in the background), and its devices' state a silent
    # one: then the alarm is committed and the batch stays in hand until that is cut.
    # Whichever it was, only the watchdog frees the lane, and it says so.
    wait_for(lambda: in_hand_seconds(engine, "alarm") == 0, what="nothing in hand")
    wait_for(lambda: "event=database_unresponsive lane=alarm" in engine.log(),
             timeout=5, what="the cut in the log")


def test_the_engines_connections_fail_on_a_silent_network_unless_the_url_says_otherwise(
        database_url):
    with open_engine_pool(database_url + "?keepalives_idle=60", Config(),
                          size=(1, 1)) as pool, pool.connection() as conn:
        given = conn.info.get_parameters()
    assert given["keepalives"] == "1"
    assert given["keepalives_idle"] == "60"        # the URL's own
    assert given["keepalives_count"] == "3"
    assert given["tcp_user_timeout"] == "10000"    # ms: sent data unacknowledged that long
    assert given["connect_timeout"] == "10"


def test_an_engine_started_before_its_database_waits_for_it_and_comes_up(
        engine: EngineProcess, proxy: DatabaseProxy, database_url: str):
    """As after a power cut: `vagt run` up first, the database later. The engine says each
    time it tries (the password hidden), and starts by itself when the database answers."""
    proxy.down()
    parts = urllib.parse.urlsplit(proxy.url(database_url))
    engine.env["VAGT_DATABASE_URL"] = urllib.parse.urlunsplit(parts._replace(
        netloc=f"{parts.username or 'postgres'}:s3cret-pw@127.0.0.1:{proxy.port}"))
    engine.start()
    wait_for(lambda: "event=database_unreachable" in engine.log(), what="a retry logged")
    proxy.up()
    engine.wait_ready(timeout=60)
    assert "s3cret-pw" not in engine.log()
    assert engine.terminate() == 0


def test_ops_see_the_rule_timer_stand_still_while_the_database_is_away(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices,
        proxy: DatabaseProxy):
    """Missed doses and silent devices are found only while the rules' timer ticks: its last
    committed tick and its failures are on /metrics, for an alert when it stops."""
    engine.env["VAGT_DATABASE_URL"] = proxy.url(database_url)
    engine.env["VAGT_RULES_TICK_S"] = "0.2"
    engine.env["VAGT_DATABASE_TRANSACTION_TIMEOUT_S"] = "2"
    engine.start().wait_ready()
    publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0))])
    done = 'vagt_rule_ticks_total{outcome="done"}'
    last = "vagt_rule_tick_last_done_timestamp_seconds"
    wait_for(lambda: sample(engine, done) >= 2, what="ticks done")
    assert time.time() - sample(engine, last) < 5
    proxy.down()
    wait_for(lambda: sample(engine, 'vagt_rule_ticks_total{outcome="failed"}') >= 1,
             timeout=30, what="a failed tick counted")
    stood, ticks = sample(engine, last), sample(engine, done)
    time.sleep(1.5)
    assert (sample(engine, last), sample(engine, done)) == (stood, ticks)
    proxy.up()
    wait_for(lambda: sample(engine, last) > stood, timeout=60, what="ticks again")


def test_a_rules_reload_on_a_database_gone_silent_leaves_the_rule_timer_ticking(
        engine: EngineProcess, database_url, proxy: DatabaseProxy):
    """SIGHUP just as the database stops answering (its open connections stay open, a new
    one reaches a server that works): the reload is cut like a tick would be, and the
    rules' timer ticks on, rather than wait for an answer that never comes while no silent
    device and no missed dose is found."""
    engine.env["VAGT_DATABASE_URL"] = proxy.url(database_url)
    engine.env["VAGT_RULES_TICK_S"] = "2"
    engine.env["VAGT_DATABASE_TRANSACTION_TIMEOUT_S"] = "2"
    engine.start().wait_ready()
    done = 'vagt_rule_ticks_total{outcome="done"}'
    wait_for(lambda: sample(engine, done) >= 1, what="a tick done")
    ticks = sample(engine, done)
    wait_for(lambda: sample(engine, done) > ticks, what="the next tick, just done")
    proxy.go_silent()
    assert engine.proc is not None
    engine.proc.send_signal(signal.SIGHUP)
    ticks = sample(engine, done)
    wait_for(lambda: sample(engine, done) > ticks, timeout=60,
             what="a tick after the reload, on a new connection")
    assert "event=rules_reload_failed" in engine.log()


def test_sigterm_while_the_database_is_away_ends_the_engine_in_time_and_loses_nothing(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices,
        proxy: DatabaseProxy):
    """A restart is what ops try first in a database outage: the engine must end within
    a service manager's stop timeout (Kubernetes waits 30 s, systemd 90 s, then SIGKILL),
    not wait for the database, and what it held comes again at the next start."""
    engine.env["VAGT_DATABASE_URL"] = proxy.url(database_url)
    engine.start().wait_ready()
    proxy.down()
    publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0)),
                          (topic(topic_root, "OXI-0001", "telemetry"),
                           telemetry("OXI-0001", T0, spo2=96))])
    wait_for(lambda: all(f"event=commit_failed lane={lane}" in engine.log()
                         for lane in ("alarm", "bulk")), what="both lanes holding a batch")
    assert engine.proc is not None
    engine.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: engine.proc is not None and engine.proc.poll() is not None, timeout=25,
             what="the engine to end, in a service manager's time")
    assert engine.proc.returncode == 0
    proxy.up()
    engine.start().wait_ready()
    wait_for(lambda: events(database_url) == 1
             and scalar(database_url, "SELECT count(*) FROM readings") == 1,
             what="the alarm and the reading held at the stop")
