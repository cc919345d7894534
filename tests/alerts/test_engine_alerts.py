"""`vagt run` end to end: an alarm over MQTT reaches the call centre's webhook, signed, and the
operator API of the same process serves it."""

from __future__ import annotations

import subprocess
import urllib.request

import httpx
import orjson
import psycopg
from tests.alerts.test_delivery import SECRET, Receiver
from tests.app.conftest import EngineProcess, alarm, publish, scalar, topic, wait_for
from tests.support import Broker, free_port

from vagt.alerts.accounts import add_user
from vagt.alerts.delivery import verify

T0 = 1_790_000_000.0


def test_an_alarm_reaches_the_webhook_signed_and_the_api_of_the_engine(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices, tmp_path):
    receiver = Receiver(failures=1).start()
    policy = tmp_path / "alerts.toml"
    policy.write_text(f"""
[[route.routes]]
matchers = ['rule="personal_alarm"']
queue = "emergency"
priority = 1

[delivery]
backoff_initial = "0.2s"
poll_interval = "0.1s"

[[delivery.webhook]]
name = "callcentre"
url = "{receiver.url}"
secret_env = "VAGT_TEST_WEBHOOK_SECRET"
""")
    api_port = free_port()
    engine.env.update({"VAGT_ALERTS": str(policy), "VAGT_API_PORT": str(api_port),
                       "VAGT_TEST_WEBHOOK_SECRET": SECRET.decode()})
    with psycopg.connect(database_url) as conn:
        add_user(conn, "anna", role="operator", password="correct horse battery", actor="t")
    try:
        engine.start().wait_ready()
        publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0))])
        wait_for(lambda: len(receiver.requests) >= 2, what="the webhook after one retry")
    finally:
        receiver.stop()
    headers, body = receiver.requests[-1]
    assert verify(SECRET, headers["X-Vagt-Timestamp"], body, headers["X-Vagt-Signature"])
    assert SECRET.decode() not in engine.log()
    alerts = httpx.get(f"http://127.0.0.1:{api_port}/api/v1/alerts",
                       auth=("anna", "correct horse battery")).json()
    assert [(a["queue"], a["device_id"], a["status"]) for a in alerts] == [
        ("emergency", "ALM-0001", "open")]

    delivered = b'vagt_alert_deliveries_total{outcome="delivered",target="callcentre"} 1.0'

    def scrape_when_delivered() -> bytes | None:
        text: bytes = urllib.request.urlopen(
            f"http://127.0.0.1:{engine.env['VAGT_METRICS_PORT']}/metrics").read()
        return text if delivered in text else None

    metrics = wait_for(scrape_when_delivered, what="the delivery counted (after its commit)")
    assert b'vagt_queue_alerts{priority="1",queue="emergency",status="open"} 1.0' in metrics
    check = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    assert engine.terminate() == 0   # SIGTERM stops the API, the timer and the worker too


def test_with_the_api_port_taken_alarms_go_on_and_the_api_comes_up_once_it_is_free(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    api_port = taken.getsockname()[1]
    engine.env["VAGT_API_PORT"] = str(api_port)
    metrics_url = f"http://127.0.0.1:{engine.env['VAGT_METRICS_PORT']}/metrics"
    crashed = b'vagt_thread_crashes_total{thread="api"}'
    try:
        engine.start().wait_ready()
        wait_for(lambda: "event=thread_crashed thread=api" in engine.log(),
                 what="the API's failure to bind, logged")
        publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0))])
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM alerts "
                                              "WHERE device_id = 'ALM-0001'") == 1,
                 what="the alarm's alert, with the API down")
        scrape = urllib.request.urlopen(metrics_url).read()
        assert crashed + b" 0.0" not in scrape and crashed in scrape
    finally:
        taken.close()

    def health() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{api_port}/health").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(health, what="the API, started again once its port is free")
    assert engine.proc is not None and engine.proc.poll() is None
    assert engine.terminate() == 0


def test_an_alarm_waiting_at_the_start_reaches_a_target_added_to_the_policy(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices, tmp_path):
    """The alarm lane's process starts first and takes the alarms that waited at the broker
    while the engine was down: their events go to every target of the policy it runs now,
    one just added too (its delivery rows are made when the alarm is committed)."""
    engine.start().wait_ready()
    assert engine.terminate() == 0
    publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"), alarm("ALM-0001", T0))])
    with psycopg.connect(database_url) as conn:   # a county's fleet: the engine's own process
        conn.execute(                            # loads it while the alarm lane's starts
            "INSERT INTO devices (device_id, vendor, model, type, municipality, status) "
            "SELECT 'OXI-' || n, 'Nonin', '3230', 'pulse_oximeter', 'Skive', 'in_stock' "
            "FROM generate_series(100000, 299999) AS n")
    receiver = Receiver().start()
    policy = tmp_path / "alerts.toml"
    policy.write_text(f"""
[delivery]
poll_interval = "0.1s"

[[delivery.webhook]]
name = "callcentre"
url = "{receiver.url}"
secret_env = "VAGT_TEST_WEBHOOK_SECRET"
events = ["opened"]
""")
    engine.env.update({"VAGT_ALERTS": str(policy),
                       "VAGT_TEST_WEBHOOK_SECRET": SECRET.decode()})
    try:
        engine.start().wait_ready()
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM alerts") == 1,
                 what="the alarm's alert")

        def alarm_delivered() -> bool:
            return any(orjson.loads(body)["alert"]["rule"] == "personal_alarm"
                       for _, body in receiver.requests)
        wait_for(alarm_delivered, what="the alarm at the new target")
    finally:
        receiver.stop()
