"""Delivery of the outbox to real receivers: an HTTP server in a thread that fails its first
tries, one that is down and then up, and the test run's Mosquitto for MQTT publication."""

from __future__ import annotations

import getpass
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry
from tests.alerts.support import add_device, add_operator, fire, rows
from tests.app.db_proxy import DatabaseProxy
from tests.support import Broker, free_port

from vagt.alerts.delivery import (
    DeliveryWorker,
    MqttSender,
    WebhookSender,
    senders_for,
    verify,
)
from vagt.alerts.outbox import move_deliveries, register_targets
from vagt.alerts.policy import (
    DeliveryPolicy,
    MqttTarget,
    PolicyError,
    WebhookTarget,
    load_policy,
)
from vagt.app.db import open_pool
from vagt.app.metrics import EngineMetrics

SECRET = b"a-test-secret-of-32-bytes-length"


@dataclass
class Receiver:
    """A real HTTP endpoint: answers `status` (503) to its first `failures` requests, then
    204. With a `location`, those answers carry it (a redirect), and a GET is answered 200
    (a sign-in page), and recorded in `gets`."""

    failures: int = 0
    status: int = 503
    location: str = ""
    gets: list[str] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/vagt"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                failing = len(receiver.requests) <= receiver.failures
                self.send_response(receiver.status if failing else 204)
                if failing and receiver.location:
                    self.send_header("Location", receiver.location)
                self.end_headers()

            def do_GET(self) -> None:
                receiver.gets.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list[dict[str, object]]:
        return [orjson.loads(body) for _, body in self.requests[self.failures:]]


def test_a_database_gone_silent_holds_the_deliveries_only_until_the_watchdog_cuts_it(
        database_url, receiver, caplog):
    """The connection the worker holds stays open and answers nothing (a crashed database
    host, an address failed over): the call centre's systems would hear nothing more."""
    receiver.failures = 0
    policy = webhook_policy(receiver.url)
    alarms(database_url, policy, 1)
    proxy = DatabaseProxy()
    proxy.up()
    stop = threading.Event()
    try:
        with open_pool(proxy.url(database_url), 1, 1) as pool:
            proxy.go_silent()           # the pool's one connection; a new one would answer
            worker = DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])],
                                    Clock(), transaction_limit_s=1)
            threading.Thread(target=worker.run, args=(stop,), daemon=True).start()
            deadline = time.monotonic() + 30
            while not receiver.accepted() and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        stop.set()
        proxy.down()
    assert len(receiver.accepted()) == 1
    assert "event=database_unresponsive thread=alert-delivery" in caplog.text


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=2).start()
    yield r
    r.stop()


def webhook_policy(url: str, **kw: object) -> DeliveryPolicy:
    return DeliveryPolicy(webhooks=(WebhookTarget("callcentre", url, SECRET),),
                          backoff_initial_s=2.0, backoff_max_s=60.0, **kw)  # type: ignore[arg-type]


def alarms(database_url: str, policy: DeliveryPolicy, n: int) -> list[int]:
    with psycopg.connect(database_url) as conn:
        register_targets(conn, policy)
    ids = []
    for i in range(n):
        add_device(database_url, f"ALM-{i:04d}", "personal_alarm", "Randers")
        ids += [a for a, _ in fire(database_url, ("personal_alarm", f"ALM-{i:04d}"),
                                   code="alarm.fall")]
    return ids


def deliveries(database_url: str) -> list[tuple[object, ...]]:
    return rows(database_url, "SELECT outbox_id, attempts, delivered_at IS NOT NULL, "
                              "dead_at IS NOT NULL, last_error FROM alert_deliveries "
                              "ORDER BY outbox_id")


def test_a_webhook_failing_its_first_tries_is_retried_with_backoff_then_delivered_signed(
        database_url, receiver):
    policy = webhook_policy(receiver.url)
    (alert_id,) = alarms(database_url, policy, 1)
    clock = Clock()
    metrics = EngineMetrics(CollectorRegistry())
    with open_pool(database_url, 1, 2) as pool:
        worker = DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])], clock,
                                metrics)
        assert worker.deliver_due() == 1          # 503
        assert worker.deliver_due() == 0          # waits 2 s before the second try
        clock.t += 2
        assert worker.deliver_due() == 1          # 503 again: now it waits 4 s
        clock.t += 3.9
        assert worker.deliver_due() == 0
        clock.t += 0.1
        assert worker.deliver_due() == 1          # 204
    assert len(receiver.requests) == 3
    headers, body = receiver.requests[-1]
    assert verify(SECRET, headers["X-Vagt-Timestamp"], body, headers["X-Vagt-Signature"])
    assert not verify(b"another-secret-entirely", headers["X-Vagt-Timestamp"], body,
                      headers["X-Vagt-Signature"])
    assert headers["X-Vagt-Timestamp"] == str(int(clock.t))
    doc = orjson.loads(body)
    assert (doc["event"], doc["alert"]["id"], doc["alert"]["queue"]) == ("opened", alert_id,
                                                                         "emergency")
    assert [d[1:4] for d in deliveries(database_url)] == [(3, True, False)]
    sample = metrics.registry.get_sample_value
    assert (sample("vagt_alert_deliveries_total", {"target": "callcentre", "outcome": "failed"}),
            sample("vagt_alert_deliveries_total",
                   {"target": "callcentre", "outcome": "delivered"})) == (2.0, 1.0)


def test_a_tampered_body_does_not_verify(database_url, receiver):
    receiver.failures = 0
    policy = webhook_policy(receiver.url)
    alarms(database_url, policy, 1)
    with open_pool(database_url, 1, 2) as pool:
        DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])], Clock()).deliver_due()
    headers, body = receiver.requests[0]
    assert not verify(SECRET, headers["X-Vagt-Timestamp"], body.replace(b"emergency", b"x"),
                      headers["X-Vagt-Signature"])


def test_a_receiver_that_is_down_then_up_gets_everything_in_order(database_url):
    # down for more tries than max_attempts: an outage gives nothing up
    port = free_port()
    policy = webhook_policy(f"http://127.0.0.1:{port}/hooks/vagt", max_attempts=2)
    ids = alarms(database_url, policy, 3)
    clock = Clock()
    with open_pool(database_url, 1, 2) as pool:
        worker = DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])], clock)
        for _ in range(4):                       # nobody listens: connection refused
            worker.deliver_due()
            clock.t += 60
        assert [d[1:4] for d in deliveries(database_url)] == [
            (4, False, False), (0, False, False), (0, False, False)]
        assert "Connection refused" in str(deliveries(database_url)[0][4])
        receiver = Receiver(port=port).start()
        try:
            worker.deliver_due()
        finally:
            receiver.stop()
    assert [d["alert"]["id"] for d in receiver.accepted()] == ids   # type: ignore[index]
    assert [d[2] for d in deliveries(database_url)] == [True, True, True]


def test_what_waits_for_a_receiver_that_is_down_is_on_the_metrics(database_url):
    """Ops alert on events waiting long for the call centre: count and age per target."""
    from prometheus_client import generate_latest

    from vagt.alerts.outbox import waiting_by_target

    port = free_port()
    policy = webhook_policy(f"http://127.0.0.1:{port}/hooks/vagt")
    alarms(database_url, policy, 2)
    metrics = EngineMetrics(CollectorRegistry())
    away = [False]
    with open_pool(database_url, 1, 2) as pool:
        def query() -> list[tuple[str, int, float | None]]:
            if away[0]:    # the database is away: a real connection to a closed port
                with psycopg.connect(f"postgresql://127.0.0.1:{free_port()}/x",
                                     connect_timeout=2) as conn:
                    return waiting_by_target(conn)
            with pool.connection() as conn:
                return waiting_by_target(conn)

        metrics.watch_deliveries(query)
        clock = Clock()
        worker = DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])], clock)
        worker.deliver_due()                              # connection refused
        text = generate_latest(metrics.registry).decode()
        assert 'vagt_alert_deliveries_waiting{configured="true",target="callcentre"} 2.0' in text
        age = float(text.split('vagt_alert_delivery_oldest_waiting_seconds{configured="true",'
                               'target="callcentre"} ')[1].split()[0])
        assert 0 < age < 60
        away[0] = True                 # an alert on the age goes on firing, not silent
        time.sleep(0.1)
        text = generate_latest(metrics.registry).decode()
        assert 'vagt_alert_deliveries_waiting{configured="true",target="callcentre"} 2.0' in text
        assert 'vagt_scrape_query_ok{what="deliveries_waiting"} 0.0' in text
        later = float(text.split('vagt_alert_delivery_oldest_waiting_seconds{configured="true",'
                                 'target="callcentre"} ')[1].split()[0])
        assert later >= age + 0.1                      # and the age grows meanwhile
        away[0] = False
        receiver = Receiver(port=port).start()
        clock.t += 60                                     # the retry is due
        try:
            worker.deliver_due()
        finally:
            receiver.stop()
        text = generate_latest(metrics.registry).decode()
    assert 'vagt_alert_deliveries_waiting{configured="true",target="callcentre"} 0.0' in text
    assert ('vagt_alert_delivery_oldest_waiting_seconds{configured="true",target="callcentre"} '
            '0.0') in text


def after_days_down(database_url: str, policy: DeliveryPolicy, n: int) -> None:
    """`n` alarms, the first of which has been tried 2,000 times (days of an outage)."""
    alarms(database_url, policy, n)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE alert_deliveries SET attempts = 2000 WHERE outbox_id = 1")


def test_a_receiver_down_for_days_is_tried_every_backoff_max(database_url):
    """Days of an outage are thousands of tries; the backoff stays at its longest."""
    policy = webhook_policy(f"http://127.0.0.1:{free_port()}/hooks/vagt", max_attempts=2)
    after_days_down(database_url, policy, 1)
    clock = Clock()
    with open_pool(database_url, 1, 2) as pool:
        worker = DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])], clock)
        assert worker.deliver_due() == 1
        clock.t += 59
        assert worker.deliver_due() == 0              # backoff_max is 60 s here
        clock.t += 1
        assert worker.deliver_due() == 1
    assert [d[1:4] for d in deliveries(database_url)] == [(2002, False, False)]


def two_alarms_through(database_url: str, receiver: Receiver, rounds: int,
                       max_attempts: int, metrics: EngineMetrics | None = None) -> list[int]:
    """Two alarms, and `rounds` rounds of delivery a minute apart to `receiver` (stopped
    after); their alert ids."""
    try:
        policy = webhook_policy(receiver.url, max_attempts=max_attempts)
        ids = alarms(database_url, policy, 2)
        clock = Clock()
        with open_pool(database_url, 1, 2) as pool:
            worker = DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])], clock,
                                    metrics)
            for _ in range(rounds):
                worker.deliver_due()
                clock.t += 60
    finally:
        receiver.stop()
    return ids


def test_after_an_outage_a_refused_event_backs_off_from_its_refusals(database_url):
    """The receiver is back after days down, and refuses the event at the head: it is
    tried again after backoff_initial, not backoff_max, so that it becomes a dead letter
    (and the alarms behind it go) in seconds, not in max_attempts times ten minutes."""
    receiver = Receiver(failures=2, status=422).start()
    try:
        policy = webhook_policy(receiver.url, max_attempts=2)
        after_days_down(database_url, policy, 2)
        clock = Clock()
        with open_pool(database_url, 1, 2) as pool:
            worker = DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])], clock)
            worker.deliver_due()                 # refused once: 2 s
            clock.t += 2
            worker.deliver_due()                 # refused twice: a dead letter
            worker.deliver_due()                 # the next goes
    finally:
        receiver.stop()
    assert [d[1:4] for d in deliveries(database_url)] == [(2002, False, True), (1, True, False)]


@pytest.mark.parametrize("status", [503, 502, 429, 408, 401, 403, 404])
def test_a_receiver_that_is_overloaded_for_longer_than_max_attempts_gets_the_event_in_the_end(
        database_url, status):
    receiver = Receiver(failures=5, status=status).start()
    ids = two_alarms_through(database_url, receiver, rounds=6, max_attempts=2)
    assert [d[1:4] for d in deliveries(database_url)] == [(6, True, False), (1, True, False)]
    assert [d["alert"]["id"] for d in receiver.accepted()] == ids   # type: ignore[index]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_webhook_redirected_is_not_delivered_and_is_retried_until_its_url_is_mended(
        database_url, status):
    """A redirect followed turns the POST into a GET without the event (301-303), and the
    sign-in page's 200 recorded the alarm as delivered. Never followed: a failed try that
    names where to, retried past max_attempts (it is the receiver's URL, not the event)."""
    receiver = Receiver(failures=3, status=status,
                        location="/login?session=s3cret").start()
    ids = two_alarms_through(database_url, receiver, rounds=4, max_attempts=2)
    assert receiver.gets == []
    assert [d[1:4] for d in deliveries(database_url)] == [(4, True, False), (1, True, False)]
    assert [d["alert"]["id"] for d in receiver.accepted()] == ids   # type: ignore[index]


def test_a_redirect_is_recorded_with_where_it_pointed_so_ops_can_mend_the_url(database_url):
    receiver = Receiver(failures=1, status=302, location="/login?session=s3cret").start()
    two_alarms_through(database_url, receiver, rounds=1, max_attempts=2)
    (first, second) = deliveries(database_url)
    assert first[1:4] == (1, False, False) and second[1:4] == (0, False, False)
    error = str(first[4])
    assert error.startswith(f"HTTP 302 from {receiver.url}: the receiver redirected to "
                            f"http://127.0.0.1:{receiver.port}/login;")
    assert "s3cret" not in error


def capitalised_webhook_policy(tmp_path, url: str) -> DeliveryPolicy:
    path = tmp_path / "alerts.toml"
    path.write_text(f"[[delivery.webhook]]\nname = 'callcentre'\nurl = '{url}'\n"
                    "secret_env = 'CC_SECRET'\n")
    return load_policy(path, {"CC_SECRET": SECRET.decode()}).delivery


def test_a_webhook_url_with_its_scheme_in_capitals_is_taken_and_delivered_to(
        database_url, receiver, tmp_path):
    """A URL copied from a receiver's documentation as HTTPS://... is the same URL: a
    scheme is case-insensitive (RFC 3986, 3.1)."""
    receiver.failures = 0
    policy = capitalised_webhook_policy(
        tmp_path, f"HTTP://127.0.0.1:{receiver.port}/hooks/vagt")
    (alert_id,) = alarms(database_url, policy, 1)
    with open_pool(database_url, 1, 2) as pool:
        worker = DeliveryWorker(pool, policy, senders_for(policy, mqtt_defaults={},
                                                          client_id="test"), Clock())
        assert worker.deliver_due() == 1
    assert [d["alert"]["id"] for d in receiver.accepted()] == [alert_id]  # type: ignore[index]
    assert [d[1:4] for d in deliveries(database_url)] == [(1, True, False)]


def test_a_failed_delivery_to_a_url_in_capitals_is_recorded_without_its_token(
        database_url, tmp_path):
    port = free_port()                      # nobody listens
    policy = capitalised_webhook_policy(
        tmp_path, f"HTTPS://127.0.0.1:{port}/hooks/vagt?key=s3cret")   # user:password: refused
    alarms(database_url, policy, 1)
    with open_pool(database_url, 1, 2) as pool:
        DeliveryWorker(pool, policy, senders_for(policy, mqtt_defaults={}, client_id="test"),
                       Clock()).deliver_due()
    [(_, attempts, delivered, dead, error)] = deliveries(database_url)
    assert (attempts, delivered, dead) == (1, False, False)
    assert str(error).startswith(f"https://127.0.0.1:{port}/hooks/vagt: ")
    assert "s3cret" not in str(error)


def test_a_delivery_the_receiver_refuses_is_a_dead_letter_after_max_attempts_and_the_next_goes(
        database_url):
    receiver = Receiver(failures=3, status=400).start()
    metrics = EngineMetrics(CollectorRegistry())
    two_alarms_through(database_url, receiver, rounds=3, max_attempts=3, metrics=metrics)
    (first, second) = deliveries(database_url)
    assert first[1:] == (3, False, True, f"HTTP 400 from {receiver.url}")
    assert second[1:4] == (1, True, False)           # in the pass that gave the first up
    # each try counted once: the third is dead, not "failed: retried later" as well
    assert {o: metrics.registry.get_sample_value(
        "vagt_alert_deliveries_total", {"target": "callcentre", "outcome": o})
        for o in ("failed", "dead", "delivered")} == {"failed": 2.0, "dead": 1.0,
                                                      "delivered": 1.0}


def delivered_over_mqtt(database_url: str, broker: Broker, policy: DeliveryPolicy,
                        sender: MqttSender) -> tuple[int, list[paho.MQTTMessage]]:
    """An alarm's alert delivered by `sender` (closed after): its id, and what a subscriber
    to callcentre/# on the test broker received."""
    received: list[paho.MQTTMessage] = []
    got = threading.Event()
    sub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    sub.on_message = lambda _c, _u, m: (received.append(m), got.set())
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("callcentre/#", qos=1)
    sub.loop_start()
    try:
        (alert_id,) = alarms(database_url, policy, 1)
        with open_pool(database_url, 1, 2) as pool:
            worker = DeliveryWorker(pool, policy, [sender], Clock())
            for _ in range(100):                  # the sender connects in the background
                if worker.deliver_due() and deliveries(database_url)[0][2]:
                    break
                threading.Event().wait(0.05)
        assert got.wait(10)
    finally:
        sender.close()
        sub.loop_stop()
        sub.disconnect()
    return alert_id, received


def test_alerts_are_published_over_mqtt_at_qos_1_on_the_configured_topic(database_url,
                                                                         broker: Broker):
    policy = DeliveryPolicy(mqtt=(MqttTarget("cc-mqtt", "callcentre/{municipality}/{queue}"),))
    sender = MqttSender(policy.mqtt[0], host="127.0.0.1", port=broker.port, username=None,
                        password=None, tls=False, client_id=f"test-out-{free_port()}")
    alert_id, [m] = delivered_over_mqtt(database_url, broker, policy, sender)
    doc = orjson.loads(m.payload)
    [(outbox_id, _, delivered, _, _)] = deliveries(database_url)
    assert (m.topic, m.qos, doc["alert"]["id"], doc["event_id"]) == (
        "callcentre/Randers/emergency", 1, alert_id, outbox_id)   # a duplicate is told by it
    assert delivered is True


def test_an_mqtt_target_logs_in_with_a_password_from_the_environment_never_the_policy(
        database_url, broker: Broker, tmp_path):
    """A broker of the call centre's that wants a login: the password comes from a variable
    (or a file), as a webhook's secret does; the policy file names only the user."""
    path = tmp_path / "alerts.toml"
    path.write_text(f"""
[[delivery.mqtt]]
name = "cc-mqtt"
topic = "callcentre/{{queue}}"
url = "mqtt://{broker.user}@127.0.0.1:{broker.auth_port}"
password_env = "VAGT_TEST_CC_PASSWORD"
""")
    policy = load_policy(path, {"VAGT_TEST_CC_PASSWORD": broker.password}).delivery
    assert broker.password not in repr(policy)
    [sender] = senders_for(policy, mqtt_defaults={}, client_id=f"test-{free_port()}")
    _, received = delivered_over_mqtt(database_url, broker, policy, sender)
    assert [m.topic for m in received] == ["callcentre/emergency"]


@pytest.mark.parametrize(("target", "message"), [
    ('url = ""\npassword_env = "X"', "go with a 'url'"),
    ('url = "mqtt://u:pw@h:1883"\npassword_env = "X"', "the 'url' holds a password"),
    ('url = "mqtt://u@h:1883"\npassword_env = "X"\npassword_file = "/f"', "exactly one of"),
    ('url = "mqtt://u@h:1883"\npassword_env = "UNSET_HERE"', "not set or empty"),
])
def test_an_mqtt_targets_password_is_given_one_way(tmp_path, target, message):
    path = tmp_path / "alerts.toml"
    path.write_text(f'[[delivery.mqtt]]\nname = "m"\ntopic = "t"\n{target}\n')
    with pytest.raises(PolicyError, match=message):
        load_policy(path, {"X": "secret-value"})


@pytest.mark.parametrize(("url", "message"), [
    ("mqtt://cc:s3cr/et9@127.0.0.1:1883", "percent-encode"),
    ("mqtt://cc:s3cr?et9@127.0.0.1:1883", "percent-encode"),
    ("mqtt://cc:s3cr#et9@127.0.0.1:1883", "percent-encode"),
    ("mqtt://cc:s3cret9@127.0.0.1:18x3", "port"),
    ("http://cc:s3cret9@127.0.0.1:1883", "mqtt:// or mqtts://"),
])
def test_an_mqtt_targets_url_that_would_fail_the_start_is_refused_without_its_password(
        tmp_path, url, message):
    """Taken as it was, such a url stopped the engine's start with a traceback quoting
    part of the password (`Port could not be cast to integer value as 's3cr'`), or sent
    to a broker the url did not name."""
    path = tmp_path / "alerts.toml"
    path.write_text(f'[[delivery.mqtt]]\nname = "m"\ntopic = "t"\nurl = "{url}"\n')
    with pytest.raises(PolicyError, match=message) as refused:
        load_policy(path, {})
    assert "s3cr" not in str(refused.value) and "et9" not in str(refused.value)
    assert "[[delivery.mqtt]] #1" in str(refused.value)


def test_a_dead_letter_is_listed_and_can_be_given_another_round(database_url, capsys):
    from tests.alerts.test_accounts_cli import run

    add_operator(database_url, "sofie", "supervisor")

    receiver = Receiver(failures=1, status=422).start()   # refuses it, then is fixed
    policy = webhook_policy(receiver.url, max_attempts=1)
    alarms(database_url, policy, 1)
    with open_pool(database_url, 1, 2) as pool:
        worker = DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])], Clock())
        try:
            worker.deliver_due()
            assert run(database_url, "alerts", "outbox", "--dead") == 0
            table = capsys.readouterr().out.splitlines()
            assert table[1].split()[:6] == ["1", "callcentre", "1", "opened", "1", "dead"]
            assert run(database_url, "alerts", "redeliver", "1", "--target", "callcentre",
                       "--author", "sofie") == 0
            assert worker.deliver_due() == 1
        finally:
            receiver.stop()
    assert [d[2:4] for d in deliveries(database_url)] == [(True, False)]
    assert run(database_url, "alerts", "redeliver", "1", "--target", "callcentre",
               "--author", "sofie") == 2
    assert "there is no dead delivery of outbox entry 1" in capsys.readouterr().err


def test_an_event_the_receiver_fails_on_can_be_given_up_so_the_ones_behind_go(
        database_url, capsys):
    """A receiver answering 500 to one event only would hold every later one (alarms too)
    for as long as it does: ops give it up, audited, and the next goes at once."""
    from tests.alerts.test_accounts_cli import run

    add_operator(database_url, "sofie", "supervisor")

    receiver = Receiver(failures=1, status=500).start()
    policy = webhook_policy(receiver.url, max_attempts=1)
    alarms(database_url, policy, 2)
    with open_pool(database_url, 1, 2) as pool:
        worker = DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])], Clock())
        try:
            worker.deliver_due()                      # 500: waits to be tried again
            assert run(database_url, "alerts", "give-up", "2", "--target", "callcentre",
                       "--author", "sofie", "--reason", "a typo") == 2   # not tried yet
            assert "has not been tried yet" in capsys.readouterr().err
            assert run(database_url, "alerts", "give-up", "1", "--target", "callcentre",
                       "--author", "sofie", "--reason", "the call centre cannot parse it") == 0
            assert worker.deliver_due() == 1          # the next one, at once
        finally:
            receiver.stop()
    assert [d[2:] for d in deliveries(database_url)] == [
        (False, True, "given up by sofie: the call centre cannot parse it (last error: "
                      f"HTTP 500 from {receiver.url})"), (True, False, None)]
    assert rows(database_url, "SELECT actor, action, subject, details->>'via' FROM audit_log "
                              "WHERE starts_with(action, 'delivery.')") == [
        ("sofie", "delivery.give_up", "outbox 1", f"cli:{getpass.getuser()}")]
    assert run(database_url, "alerts", "give-up", "1", "--target", "callcentre",
               "--author", "sofie", "--reason", "again") == 2
    assert "no delivery of outbox entry 1 to 'callcentre' is waiting" in capsys.readouterr().err


@pytest.mark.parametrize(("author", "reason"), [
    ("sofie", "citizen 010170-1234 moved"), ("0101701234", "the call centre cannot parse it")])
def test_a_give_up_whose_reason_or_author_holds_a_cpr_number_exits_2_and_gives_nothing_up(
        database_url, capsys, author, reason):
    from tests.alerts.test_accounts_cli import run

    add_operator(database_url, "sofie", "supervisor")

    receiver = Receiver(failures=1, status=500).start()
    policy = webhook_policy(receiver.url, max_attempts=1)
    alarms(database_url, policy, 1)
    with open_pool(database_url, 1, 2) as pool:
        try:
            DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])],
                           Clock()).deliver_due()             # 500: waits to be tried again
        finally:
            receiver.stop()
    assert run(database_url, "alerts", "give-up", "1", "--target", "callcentre",
               "--author", author, "--reason", reason) == 2
    err = capsys.readouterr().err
    assert "civil registration (CPR) number" in err and "1234" not in err
    assert [d[1:] for d in deliveries(database_url)] == [
        (1, False, False, f"HTTP 500 from {receiver.url}")]
    assert rows(database_url, "SELECT count(*) FROM audit_log "
                              "WHERE starts_with(action, 'delivery.')") == [(0,)]


def test_old_delivered_entries_are_pruned_and_undelivered_ones_kept(database_url, receiver):
    from datetime import UTC, datetime, timedelta

    from vagt.alerts.outbox import prune

    receiver.failures = 0
    policy = webhook_policy(receiver.url)
    alarms(database_url, policy, 2)
    with open_pool(database_url, 1, 2) as pool:
        clock = Clock()
        worker = DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])], clock,
                                batch=1)
        worker.deliver_due()                       # the first only, delivered by its clock
        with pool.connection() as conn:
            assert prune(conn, datetime.fromtimestamp(clock.t, UTC) + timedelta(days=1)) == 1
    assert [d[1:3] for d in deliveries(database_url)] == [(0, False)]
    assert rows(database_url, "SELECT count(*) FROM alert_outbox") == [(1,)]


class _GarbageServer:
    """Answers any request with a line that is not HTTP, then hangs up."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hooks/vagt"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving: shutting the socket down wakes its accept(), closing it would not."""
        import socket

        self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=5)
        self.sock.close()
        assert not self.thread.is_alive(), "the garbage server's thread did not end"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"garbage\r\n")


def test_a_receiver_answering_garbage_is_tried_again_and_the_other_targets_go_on(
        database_url, receiver):
    receiver.failures = 0
    garbage = _GarbageServer()
    policy = DeliveryPolicy(webhooks=(WebhookTarget("broken", garbage.url, SECRET),
                                      WebhookTarget("callcentre", receiver.url, SECRET)),
                            backoff_initial_s=2.0, max_attempts=2)
    alarms(database_url, policy, 1)
    clock = Clock()
    with open_pool(database_url, 1, 2) as pool:
        worker = DeliveryWorker(pool, policy, [WebhookSender(w) for w in policy.webhooks],
                                clock)
        assert worker.deliver_due() == 2
        clock.t += 2
        assert worker.deliver_due() == 1
    garbage.close()
    assert rows(database_url, "SELECT target, attempts, delivered_at IS NOT NULL, "
                              "dead_at IS NOT NULL, last_error FROM alert_deliveries "
                              "ORDER BY target") == [
        ("broken", 2, False, False, f"{garbage.url}: not an HTTP response (BadStatusLine)"),
        ("callcentre", 1, True, False, None)]


@dataclass
class Recording:
    """A sender of the test's own: records what it sends; `error` raised, `hold` waited on."""

    name: str = "callcentre"
    timeout_s: float = 0.0
    sent: list[str] = field(default_factory=list)
    error: Exception | None = None
    hold: threading.Event | None = None
    sending: threading.Event = field(default_factory=threading.Event)

    def send(self, delivery_id: str, event: str, body: bytes, now: float) -> None:
        self.sending.set()
        if self.hold is not None:
            self.hold.wait(10)
        if self.error is not None:
            raise self.error
        self.sent.append(delivery_id)

    def close(self) -> None:
        pass


def test_a_sender_raising_what_it_did_not_foresee_is_a_failed_try_not_a_stall(database_url):
    policy = webhook_policy("http://127.0.0.1:9/unused", max_attempts=2)
    alarms(database_url, policy, 2)
    clock = Clock()
    bug = Recording(error=ValueError("http://user:token@example.invalid/ is not allowed"))
    with open_pool(database_url, 1, 2) as pool:
        worker = DeliveryWorker(pool, policy, [bug], clock)
        for _ in range(2):
            worker.deliver_due()                     # the second: a dead letter, the next tried
            clock.t += 60
        bug.error = None
        worker.deliver_due()
    (first, second) = deliveries(database_url)
    assert first[1:4] == (2, False, True)            # two tries, then a dead letter
    assert str(first[4]).startswith("unexpected ValueError at test_delivery.py:")
    assert "token" not in str(first[4])
    assert second[1:4] == (2, True, False)           # the next went on once it could


def test_two_engines_never_send_a_targets_events_out_of_order(database_url):
    # Engine A is stuck sending event 1 to a slow receiver; engine B must not send event 2
    # meanwhile (the call centre would see "reopened" before "resolved", or the like).
    policy = webhook_policy("http://127.0.0.1:9/unused")
    alarms(database_url, policy, 2)
    hold = threading.Event()
    slow, other = Recording(hold=hold), Recording()
    with open_pool(database_url, 1, 4) as pool:
        a = DeliveryWorker(pool, policy, [slow], Clock())
        b = DeliveryWorker(pool, policy, [other], Clock())
        t = threading.Thread(target=a.deliver_due)
        t.start()
        try:
            assert slow.sending.wait(10)
            assert b.deliver_due() == 0
            assert other.sent == []
        finally:
            hold.set()
            t.join(10)
        assert b.deliver_due() == 0                  # A sent both, in order
    assert [d.split("-")[0] for d in slow.sent] == [str(d[0]) for d in deliveries(database_url)]
    assert [d[2] for d in deliveries(database_url)] == [True, True]


def test_an_event_never_tried_goes_at_once_though_the_databases_clock_is_ahead(
        database_url, receiver):
    # The outbox is stamped with the database's clock; the worker runs on the engine's. A
    # database host ten minutes ahead must not hold every alarm back ten minutes.
    import time

    receiver.failures = 0
    policy = webhook_policy(receiver.url)
    alarms(database_url, policy, 1)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE alert_deliveries SET next_attempt_at = now() + interval '10 min'")
    with open_pool(database_url, 1, 2) as pool:
        worker = DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])],
                                Clock(time.time()))
        assert worker.deliver_due() == 1
    assert [d[1:3] for d in deliveries(database_url)] == [(1, True)]


# --- a target renamed or removed in the policy ---------------------------------------------


def renamed(database_url: str, receiver: Receiver, *, events: tuple[str, ...] = ()
            ) -> DeliveryPolicy:
    """Target `cc` queued an alarm, and the policy now names the receiver `cc2`."""
    with psycopg.connect(database_url) as conn:
        register_targets(conn, DeliveryPolicy(webhooks=(WebhookTarget("cc", receiver.url,
                                                                      SECRET),)))
    add_device(database_url, "ALM-0001", "personal_alarm", "Randers")
    fire(database_url, ("personal_alarm", "ALM-0001"), code="alarm.fall")
    policy = DeliveryPolicy(webhooks=(WebhookTarget("cc2", receiver.url, SECRET, events),))
    with psycopg.connect(database_url) as conn:
        register_targets(conn, policy)
    return policy


def test_what_waits_for_a_renamed_target_is_on_the_metrics_the_outbox_and_the_start_up_log(
        database_url, capsys, caplog):
    """Nothing sends what waits for a target the policy no longer has: ops must see it."""
    from prometheus_client import generate_latest
    from tests.alerts.test_accounts_cli import run

    from vagt.alerts.observe import NullObserver
    from vagt.alerts.outbox import waiting_by_target
    from vagt.alerts.policy import AlertPolicy
    from vagt.alerts.service import alert_services

    receiver = Receiver().start()
    try:
        policy = renamed(database_url, receiver)
        metrics = EngineMetrics(CollectorRegistry())
        with open_pool(database_url, 1, 4) as pool:
            def query() -> list[tuple[str, bool, int, float | None]]:
                with pool.connection() as conn:
                    return waiting_by_target(conn)

            metrics.watch_deliveries(query)
            text = generate_latest(metrics.registry).decode()
            with alert_services(pool, AlertPolicy(delivery=policy), clock=Clock(),
                                observer=NullObserver(), mqtt_defaults={}, client_id="t"):
                pass
    finally:
        receiver.stop()
    assert 'vagt_alert_deliveries_waiting{configured="false",target="cc"} 1.0' in text
    assert 'vagt_alert_deliveries_waiting{configured="true",target="cc2"} 0.0' in text
    assert ("event=delivery_target_not_configured target=cc waiting=1 note=nothing_sends_them"
            in caplog.text)
    assert run(database_url, "alerts", "outbox") == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split()[:6] == ["1", "cc", "1", "opened", "0", "stranded"]
    assert "`vagt alerts move-deliveries`" in err
    add_operator(database_url, "sofie", "supervisor")
    assert run(database_url, "alerts", "give-up", "1", "--target", "cc", "--author", "sofie",
               "--reason", "renamed") == 2
    assert "'cc' is no longer configured" in capsys.readouterr().err


def test_what_waits_for_a_renamed_target_is_moved_to_the_new_one_and_delivered(database_url,
                                                                              capsys):
    from tests.alerts.test_accounts_cli import run

    from vagt.alerts.actions import claim, resolve
    from vagt.alerts.outbox import waiting_by_target

    receiver = Receiver().start()
    add_operator(database_url, "sofie", "supervisor")
    try:
        with psycopg.connect(database_url) as conn:     # both alarms are opened for cc
            register_targets(conn, DeliveryPolicy(webhooks=(WebhookTarget("cc", receiver.url,
                                                                          SECRET),)))
        (first,) = alarms(database_url, DeliveryPolicy(webhooks=(WebhookTarget(
            "cc", receiver.url, SECRET),)), 1)
        add_device(database_url, "ALM-0009", "personal_alarm", "Randers")
        [(second, _)] = fire(database_url, ("personal_alarm", "ALM-0009"), code="alarm.fall")
        with psycopg.connect(database_url) as conn:
            claim(conn, second, "anna")                 # cc takes every event
            policy = DeliveryPolicy(webhooks=(WebhookTarget("cc2", receiver.url, SECRET,
                                                            ("opened", "resolved")),))
            register_targets(conn, policy)              # renamed, and fewer events
            resolve(conn, first, "anna", "a false alarm", code="false_alarm")   # cc2's own
        with open_pool(database_url, 1, 2) as pool:     # and cc2 has told the receiver
            DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])],
                           Clock()).deliver_due()
        assert run(database_url, "alerts", "move-deliveries", "--from", "cc", "--to", "cc2",
                   "--author", "sofie", "--reason", "renamed in the policy") == 0
        assert capsys.readouterr().out.splitlines() == [
            "1 event waiting for cc: moved to cc2",
            "1 event waiting for cc: given up: cc2 does not take their events",
            "1 event waiting for cc: given up: cc2 has a later event of their alert"]
        with open_pool(database_url, 1, 2) as pool:
            DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])],
                           Clock()).deliver_due()
            with pool.connection() as conn:
                assert waiting_by_target(conn) == [("cc2", True, 0, None)]
    finally:
        receiver.stop()
    # the first alarm's resolution, not its opening after it; the second's opening
    assert sorted((d["event"], d["alert"]["id"]) for d in receiver.accepted()) == [
        ("opened", second), ("resolved", first)]
    assert rows(database_url, "SELECT o.event, d.last_error FROM alert_deliveries d JOIN "
                              "alert_outbox o ON o.id = d.outbox_id WHERE d.target = 'cc' "
                              "ORDER BY o.id") == [
        ("opened", "not moved to cc2, which has a later event of the alert; given up by sofie: "
                   "renamed in the policy"),
        ("opened", "moved to cc2 by sofie: renamed in the policy"),
        ("claimed", "not moved to cc2, which does not take claimed events; given up by sofie: "
                    "renamed in the policy")]
    [(details,)] = rows(database_url, "SELECT details FROM audit_log "
                                      "WHERE action = 'delivery.move'")
    assert details == {"to": "cc2", "reason": "renamed in the policy", "moved": 1,
                       "not_taken": 1, "superseded": 1, "via": f"cli:{getpass.getuser()}"}


def test_an_event_moved_to_a_target_where_a_later_one_of_its_alert_waits_goes_before_it(
        database_url, capsys):
    """The receiver is down throughout: the alarm's opening waits for the old name, its
    resolution for the new one. Moved, the opening goes first (outbox order), and the
    receiver hears the alert's whole story, not a resolution of an alert it never heard of."""
    from tests.alerts.test_accounts_cli import run

    from vagt.alerts.actions import resolve

    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks/vagt"
    add_operator(database_url, "sofie", "supervisor")
    (alert,) = alarms(database_url, DeliveryPolicy(webhooks=(WebhookTarget("cc", url,
                                                                           SECRET),)), 1)
    policy = DeliveryPolicy(webhooks=(WebhookTarget("cc2", url, SECRET),))
    with psycopg.connect(database_url) as conn:
        register_targets(conn, policy)
        resolve(conn, alert, "anna", "a false alarm", code="false_alarm")   # waits for cc2
    assert run(database_url, "alerts", "move-deliveries", "--from", "cc", "--to", "cc2",
               "--author", "sofie", "--reason", "renamed in the policy") == 0
    assert capsys.readouterr().out == "1 event waiting for cc: moved to cc2\n"
    receiver = Receiver(port=port).start()               # the receiver is back
    try:
        with open_pool(database_url, 1, 2) as pool:
            DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])],
                           Clock()).deliver_due()
    finally:
        receiver.stop()
    assert [(d["event"], d["alert"]["id"]) for d in receiver.accepted()] == [
        ("opened", alert), ("resolved", alert)]


def test_an_event_keeps_its_id_in_the_signed_body_when_it_is_tried_again_under_another_name(
        database_url):
    """The receiver took the first try but answered too late (a failed try to vagt), and
    the target was renamed before the next: the same bytes come again, and the body's
    `event_id`, signed, tells the receiver it is the one it has."""
    receiver = Receiver(failures=1).start()              # the first try's answer: 503
    try:
        old = DeliveryPolicy(webhooks=(WebhookTarget("cc", receiver.url, SECRET),))
        alarms(database_url, old, 1)
        with open_pool(database_url, 1, 2) as pool:
            DeliveryWorker(pool, old, [WebhookSender(old.webhooks[0])], Clock()).deliver_due()
        new = DeliveryPolicy(webhooks=(WebhookTarget("cc2", receiver.url, SECRET),))
        with psycopg.connect(database_url) as conn:
            register_targets(conn, new)
            move_deliveries(conn, "cc", "cc2", actor="sofie", reason="renamed")
        with open_pool(database_url, 1, 2) as pool:
            DeliveryWorker(pool, new, [WebhookSender(new.webhooks[0])], Clock()).deliver_due()
    finally:
        receiver.stop()
    (h1, b1), (h2, b2) = receiver.requests
    [(outbox_id,)] = rows(database_url, "SELECT id FROM alert_outbox")
    assert b1 == b2 and orjson.loads(b1)["event_id"] == outbox_id
    assert all(verify(SECRET, h["X-Vagt-Timestamp"], b, h["X-Vagt-Signature"])
               for h, b in receiver.requests)
    assert (h1["X-Vagt-Delivery"], h2["X-Vagt-Delivery"]) == (f"{outbox_id}-cc",
                                                              f"{outbox_id}-cc2")


def test_a_dead_letter_whose_alert_has_a_later_event_delivered_is_redelivered_only_if_asked(
        database_url, capsys):
    """The receiver refused the opening and took the resolution: the opening sent now would
    be its last word on the alert, a ticket open again for a resolved alarm."""
    from tests.alerts.test_accounts_cli import run

    from vagt.alerts.actions import resolve

    add_operator(database_url, "sofie", "supervisor")
    receiver = Receiver(failures=1, status=422).start()
    policy = webhook_policy(receiver.url, max_attempts=1)
    (alert,) = alarms(database_url, policy, 1)
    redeliver = ["alerts", "redeliver", "1", "--target", "callcentre", "--author", "sofie"]
    try:
        with open_pool(database_url, 1, 2) as pool:
            worker = DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])], Clock())
            worker.deliver_due()                         # the opening: a dead letter
            with psycopg.connect(database_url) as conn:
                resolve(conn, alert, "anna", "a false alarm", code="false_alarm")
            worker.deliver_due()                         # the resolution: delivered
            assert run(database_url, *redeliver) == 2
            assert capsys.readouterr().err.startswith(
                "vagt: 'callcentre' has delivered a later event of the alert of outbox entry 1 "
                "(entry 2, resolved): sent now")
            assert deliveries(database_url)[0][3] is True       # still dead
            assert worker.deliver_due() == 0
            assert run(database_url, *redeliver, "--out-of-order") == 0
            assert worker.deliver_due() == 1
    finally:
        receiver.stop()
    assert [d["event"] for d in receiver.accepted()] == ["resolved", "opened"]
    assert rows(database_url, "SELECT action, details->'out_of_order' FROM audit_log "
                              "WHERE starts_with(action, 'delivery.')") == [
        ("delivery.retry", True)]


def test_a_target_whose_pass_fails_holds_neither_the_others_nor_its_receiver(database_url,
                                                                              caplog):
    """A target whose pass fails (here: a name the database refuses) is worked again after
    a backoff of its own, and the other targets are served in the same pass."""
    from vagt.alerts.delivery import PASS_RETRY_MAX_S

    receiver = Receiver().start()
    policy = DeliveryPolicy(webhooks=(WebhookTarget("callcentre", receiver.url, SECRET),),
                            poll_interval_s=0.5)
    alarms(database_url, policy, 1)
    clock = Clock()
    broken = Recording(name="broken\x00")
    try:
        with open_pool(database_url, 1, 2) as pool:
            worker = DeliveryWorker(pool, policy, [broken, WebhookSender(policy.webhooks[0])],
                                    Clock(), monotonic=clock)
            assert worker.deliver_due() == 1
            assert worker.deliver_due() == 0             # the broken one waits its backoff
            clock.t += 0.5
            worker.deliver_due()                         # fails again: now 1 s
            clock.t += 0.9
            worker.deliver_due()
            for _ in range(3):                           # long failing: every 5 s at most
                clock.t += PASS_RETRY_MAX_S
                worker.deliver_due()
    finally:
        receiver.stop()
    assert len(receiver.accepted()) == 1
    failed = [r.getMessage() for r in caplog.records if "delivery_pass_failed" in r.getMessage()]
    assert [m.split(" failed=")[1] for m in failed] == [
        "1 retry_in=0.5s", "2 retry_in=1.0s", "3 retry_in=2.0s", "4 retry_in=4.0s",
        "5 retry_in=5.0s"]


def test_a_redirect_to_a_location_with_a_nul_is_recorded_and_backs_off(database_url):
    """What the receiver answers is kept as the last error; a NUL in it (which a text
    column refuses) would leave the try unrecorded, the event sent again at every pass."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    requests: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                requests.append(conn.recv(65536))
                conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /new\x00hook\r\n"
                             b"Content-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/hooks/vagt"
    policy = webhook_policy(url)
    alarms(database_url, policy, 1)
    try:
        with open_pool(database_url, 1, 2) as pool:
            worker = DeliveryWorker(pool, policy, [WebhookSender(policy.webhooks[0])], Clock())
            assert [worker.deliver_due() for _ in range(3)] == [1, 0, 0]
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    [(_, attempts, delivered, dead, error)] = deliveries(database_url)
    assert (len(requests), attempts, delivered, dead) == (1, 1, False, False)
    assert "redirected to http://127.0.0.1:" in str(error) and "/new\\x00hook" in str(error)


def test_what_waits_for_a_removed_target_can_be_given_up_and_a_configured_one_is_refused(
        database_url, capsys):
    from tests.alerts.test_accounts_cli import run

    receiver = Receiver()
    add_operator(database_url, "sofie", "supervisor")
    renamed(database_url, receiver)
    move = ["alerts", "move-deliveries", "--author", "sofie", "--reason", "cc is gone"]
    assert run(database_url, *move, "--from", "cc2", "--give-up") == 2
    assert "'cc2' is configured: its worker sends what waits for it" in capsys.readouterr().err
    assert run(database_url, *move, "--from", "cc", "--to", "nowhere") == 2
    assert "'nowhere' is not a configured delivery target" in capsys.readouterr().err
    assert run(database_url, *move, "--from", "cc", "--give-up") == 0
    assert capsys.readouterr().out == "1 event waiting for cc: given up\n"
    assert run(database_url, "alerts", "outbox") == 0
    assert capsys.readouterr().out.splitlines()[1].split()[5] == "dead"
    assert run(database_url, *move, "--from", "cc", "--give-up") == 0
    assert capsys.readouterr().out == "nothing waits for cc\n"


def test_a_municipal_account_cannot_give_up_redeliver_or_move_another_municipalitys_events(
        database_url, capsys):
    """The command acts within its account's municipality, as the API does: a delivery of
    another municipality's alert is answered as one that is not there."""
    from tests.alerts.test_accounts_cli import run

    add_operator(database_url, "bo", "operator", "Aarhus")
    add_operator(database_url, "sofie", "supervisor")
    alarms(database_url, webhook_policy("http://127.0.0.1:9/hook"), 2)   # in Randers
    with psycopg.connect(database_url) as conn:   # as the worker leaves them: tried, dead
        conn.execute("UPDATE alert_deliveries SET attempts = 1, last_error = 'HTTP 500', "
                     "dead_at = CASE WHEN outbox_id = 2 THEN now() END")
    before = deliveries(database_url)
    assert run(database_url, "alerts", "give-up", "1", "--target", "callcentre",
               "--author", "bo", "--reason", "stuck") == 2
    assert ("no delivery of outbox entry 1 to 'callcentre' is waiting"
            in capsys.readouterr().err)
    assert run(database_url, "alerts", "redeliver", "2", "--target", "callcentre",
               "--author", "bo") == 2
    assert "there is no dead delivery of outbox entry 2" in capsys.readouterr().err
    assert run(database_url, "alerts", "move-deliveries", "--from", "callcentre",
               "--give-up", "--author", "bo", "--reason", "gone") == 2
    assert "an account limited to Aarhus cannot" in capsys.readouterr().err
    assert deliveries(database_url) == before
    assert rows(database_url, "SELECT action FROM audit_log "
                              "WHERE starts_with(action, 'delivery.')") == []
    assert run(database_url, "alerts", "give-up", "1", "--target", "callcentre",
               "--author", "sofie", "--reason", "stuck") == 0
    assert run(database_url, "alerts", "redeliver", "2", "--target", "callcentre",
               "--author", "sofie") == 0
