"""The MQTT session's own network thread (vagt.ingest.consumer.MqttSession), against real
Mosquitto processes: it reads a backlog in bursts and still acknowledges all of it, in plain
TCP and in TLS, notices a broker that stops answering, connects again, closes while the broker
is gone, and outlives a bug in its own thread or in a connection attempt. With
`stop_reading_at_receive_maximum` it holds no more than its Receive Maximum, keeps its
connection while it holds, and still notices a broker that stops answering."""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.app.conftest import publish, reconnect_through_a_broker_restart, take_all, wait_for
from tests.support import Broker, free_port, start_mosquitto, stop_mosquitto

from vagt.ingest import consumer
from vagt.ingest.consumer import MqttSession, SessionSettings


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of this test's own: these tests stop and pause it."""
    b = Broker(free_port(), free_port(), tmp_path)
    b.start()
    yield b
    if b.process and b.process.poll() is None:
        os.kill(b.process.pid, signal.SIGCONT)
    b.stop()


def settings(broker: Broker, root: str, client_id: str, **kw: object) -> SessionSettings:
    return SessionSettings(client_id=client_id, filters=(f"{root}/#",), port=broker.port,
                           session_expiry_s=300, **kw)  # type: ignore[arg-type]


@dataclass
class TlsBroker:
    """A Mosquitto with a TLS listener, its certificate signed by a CA of the test's own (for
    127.0.0.1), and a plain listener to publish on."""

    directory: Path
    port: int = field(default_factory=free_port)        # plain
    tls_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    def start(self) -> None:
        d = self.directory

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
                "-out", "ca.crt", "-days", "2", "-subj", "/CN=vagt test CA")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
                "-out", "server.csr", "-subj", "/CN=127.0.0.1")
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
        conf = d / "mosquitto.conf"
        conf.write_text(f"""per_listener_settings true
max_queued_messages 0
max_inflight_messages 0
user {getpass.getuser()}
log_dest file {d}/mosquitto.log
listener {self.port} 127.0.0.1
allow_anonymous true
listener {self.tls_port} 127.0.0.1
allow_anonymous true
cafile {self.ca}
certfile {d}/server.crt
keyfile {d}/server.key
""")
        self.process = start_mosquitto(conf, self.tls_port, d / "mosquitto.log")


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    b = TlsBroker(tmp_path_factory.mktemp("tls-broker"))
    b.start()
    yield b
    stop_mosquitto(b.process)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_backlog_of_several_read_bursts_is_delivered_in_order_and_acknowledged_in_full(
        broker: Broker, tls_broker: TlsBroker, tls: bool) -> None:
    """Over TLS paho reads through the TLS layer, whose "nothing yet" is a want-read error,
    not a would-block: the burst must end on it and the session go on after it. (The TLS
    layer can also hold decrypted bytes that select() does not see, which `_serve` checks;
    Mosquitto writes a TLS record per packet, so this test does not reach that case.)"""
    root, cid = f"s{uuid.uuid4().hex[:8]}", f"session-{uuid.uuid4().hex[:8]}"
    n = 3 * consumer.READ_BURST + 17
    if tls:
        publish_port = tls_broker.port
        s = SessionSettings(client_id=cid, filters=(f"{root}/#",), port=tls_broker.tls_port,
                            session_expiry_s=300, tls=True, ca_file=str(tls_broker.ca))
    else:
        publish_port, s = broker.port, settings(broker, root, cid)
    with MqttSession(s) as session:      # the persistent session
        wait_for(lambda: session.connected, what="the session")
    sent = [(f"{root}/dev/{k % 7}/telemetry", f"{k}".encode()) for k in range(n)]
    publish(publish_port, sent)           # queued at the broker while nobody is connected
    with MqttSession(s) as session:
        got = take_all(session, n)
        assert [m.payload for m in got] == [p for _, p in sent]
        assert session.ack(got) == n
    assert_nothing_comes_again(s)


def assert_nothing_comes_again(s: SessionSettings) -> None:
    """The session connected again: what it acknowledged before is not sent again."""
    with MqttSession(s) as session:
        wait_for(lambda: session.connected, what="the session again")
        assert take_all(session, 1, timeout=2) == [], "an acknowledged message came again"

def test_a_broker_that_stops_answering_is_noticed_and_the_session_connects_again(
        own_broker: Broker) -> None:
    root, cid = f"s{uuid.uuid4().hex[:8]}", f"session-{uuid.uuid4().hex[:8]}"
    assert own_broker.process is not None
    with MqttSession(settings(own_broker, root, cid, keepalive_s=1)) as session:
        wait_for(lambda: session.connected, what="the session")
        os.kill(own_broker.process.pid, signal.SIGSTOP)     # the TCP connection stays up
        try:
            wait_for(lambda: not session.connected, timeout=20,
                     what="the unanswered keepalive to be noticed")
        finally:
            os.kill(own_broker.process.pid, signal.SIGCONT)
        wait_for(lambda: session.connected, timeout=30, what="the session to connect again")
        publish(own_broker.port, [(f"{root}/dev/x/telemetry", b"after")])
        got = take_all(session, 1)
        assert [m.payload for m in got] == [b"after"]
        assert session.ack(got) == 1


def test_a_session_closes_while_its_broker_is_down(own_broker: Broker) -> None:
    root, cid = f"s{uuid.uuid4().hex[:8]}", f"session-{uuid.uuid4().hex[:8]}"
    session = MqttSession(settings(own_broker, root, cid)).__enter__()
    wait_for(lambda: session.connected, what="the session")
    own_broker.stop()
    wait_for(lambda: not session.connected, what="the loss to be noticed")
    time.sleep(2.5)          # it is waiting to connect again, and has failed at least once
    closing = threading.Thread(target=session.close)
    closing.start()
    closing.join(30)
    assert not closing.is_alive(), "close() hung with the broker down"
    assert not any(t.name == f"vagt-mqtt-{cid}" for t in threading.enumerate())


class FailsOnce(MqttSession):
    """A session whose message handling has a bug that the first message sets off."""

    failed = False

    def _on_message(self, client: Any, userdata: object, msg: Any) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bug the first message sets off")
        super()._on_message(client, userdata, msg)


def test_a_bug_in_the_network_thread_costs_a_new_connection_not_the_session(
        broker: Broker) -> None:
    root, cid = f"s{uuid.uuid4().hex[:8]}", f"session-{uuid.uuid4().hex[:8]}"
    with FailsOnce(settings(broker, root, cid)) as session:
        wait_for(lambda: session.connected, what="the session")
        publish(broker.port, [(f"{root}/dev/x/telemetry", b"first")])
        got = take_all(session, 1)
        assert session.failed
        assert [m.payload for m in got] == [b"first"], "the message was not sent again"
        assert session.ack(got) == 1


class ConnectFailsOnce(MqttSession):
    """A session whose first connection attempt meets a bug (not a network error)."""

    failed = False

    def _make_client(self) -> Any:
        client = super()._make_client()

        def pre_connect(_client: object, _userdata: object) -> None:
            if not self.failed:
                self.failed = True
                raise RuntimeError("a bug the first connection attempt sets off")

        client.on_pre_connect = pre_connect
        return client


def test_a_bug_in_a_connection_attempt_costs_that_attempt_not_the_session(
        broker: Broker) -> None:
    root, cid = f"s{uuid.uuid4().hex[:8]}", f"session-{uuid.uuid4().hex[:8]}"
    with ConnectFailsOnce(settings(broker, root, cid)) as session:
        wait_for(lambda: session.connected, what="the second attempt")
        assert session.failed


@pytest.mark.parametrize("store_kept", [True, False])
def test_what_the_session_holds_across_a_reconnect_comes_once_whether_or_not_the_broker_kept_it(
        own_broker: Broker, store_kept: bool) -> None:
    # Held, not taken, when the broker restarts. With its store the broker has the session
    # and sends the messages again (the held ones are dropped: not acknowledgeable, and
    # coming again); without it (killed before its save, no persistence) it sends nothing
    # again, so the held ones are all there is and must be kept.
    root, cid = f"s{uuid.uuid4().hex[:8]}", f"session-{uuid.uuid4().hex[:8]}"
    sent = [(f"{root}/dev/X/telemetry", f"m{i}".encode()) for i in range(20)]
    with MqttSession(settings(own_broker, root, cid)) as session:
        wait_for(lambda: session.connected, what="the session")
        publish(own_broker.port, sent)
        reconnect_through_a_broker_restart(session, own_broker, 20, store_kept)
        got = take_all(session, 20)
        assert [m.payload for m in got] == [p for _, p in sent]
        assert take_all(session, 1, timeout=2) == []


def test_what_a_lost_session_left_held_survives_a_later_reconnect_that_resumes(
        own_broker: Broker) -> None:
    root, cid = f"s{uuid.uuid4().hex[:8]}", f"session-{uuid.uuid4().hex[:8]}"
    first = [(f"{root}/dev/X/telemetry", f"a{i}".encode()) for i in range(20)]
    second = [(f"{root}/dev/X/telemetry", f"b{i}".encode()) for i in range(5)]
    with MqttSession(settings(own_broker, root, cid)) as session:
        wait_for(lambda: session.connected, what="the session")
        publish(own_broker.port, first)
        reconnect_through_a_broker_restart(session, own_broker, 20, store_kept=False)
        publish(own_broker.port, second)
        reconnect_through_a_broker_restart(session, own_broker, 25, store_kept=True)
        got = take_all(session, 25)
        assert sorted(m.payload for m in got) == sorted(p for _, p in first + second)
        assert take_all(session, 1, timeout=2) == []


def test_what_came_at_qos_0_and_waited_across_a_reconnect_is_kept(own_broker: Broker) -> None:
    # The broker resends the QoS 1 messages that waited (so those held are dropped), but it
    # sent the QoS 0 ones once and forgot them: dropped, they would be lost without a trace.
    root, cid = f"s{uuid.uuid4().hex[:8]}", f"session-{uuid.uuid4().hex[:8]}"
    once = [(f"{root}/dev/ALM-1/alarm", f"q0-{i}".encode()) for i in range(3)]
    sent = [(f"{root}/dev/ALM-2/alarm", f"q1-{i}".encode()) for i in range(5)]
    with MqttSession(settings(own_broker, root, cid)) as session:
        wait_for(lambda: session.connected, what="the session")
        publish(own_broker.port, once, qos=0)
        publish(own_broker.port, sent)
        reconnect_through_a_broker_restart(session, own_broker, 8, store_kept=True)
        got = take_all(session, 8)
        assert sorted(m.payload for m in got) == sorted(p for _, p in once + sent)
        assert take_all(session, 1, timeout=2) == []
        # the QoS 1 ones as sent again, on this connection; the QoS 0 ones have nothing to ack
        assert session.ack(got) == 5


def take_and_ack(session: MqttSession, n: int, timeout: float = 30) -> list[Any]:
    """Take `n` messages, acknowledging each batch on the way (a session that stops reading
    at its Receive Maximum hands out no more than that unacknowledged)."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        batch = session.take(n - len(got), 0.05, threading.Event())
        assert session.ack(batch) == len(batch), "a connection was lost"
        got += batch
    return got


def test_the_session_holds_no_more_than_its_receive_maximum_while_acknowledgements_flow(
        broker: Broker) -> None:
    # Mosquitto 2.0.11 keeps to a client's Receive Maximum until acknowledgements flow, then
    # sends past it (eclipse-mosquitto/mosquitto#2301): the session stops reading instead.
    root, cid = f"s{uuid.uuid4().hex[:8]}", f"session-{uuid.uuid4().hex[:8]}"
    limit, n = 50, 1500
    s = settings(broker, root, cid, receive_maximum=limit, stop_reading_at_receive_maximum=True)
    with MqttSession(s) as session:      # the persistent session
        wait_for(lambda: session.connected, what="the session")
    sent = [(f"{root}/dev/{k % 7}/telemetry", f"{k}".encode()) for k in range(n)]
    publish(broker.port, sent)
    got: list[Any] = []
    held: list[Any] = []
    most = 0
    with MqttSession(s) as session:
        deadline = time.monotonic() + 120
        while len(got) < n and time.monotonic() < deadline:
            held += session.take(limit, 0.05, threading.Event())
            time.sleep(0.05)     # the broker has time to send what it would
            most = max(most, len(held) + session.waiting)
            if len(held) + session.waiting >= limit:
                assert session.reading_paused
            session.ack(held[:20])          # a few at a time: a slow engine
            got += held[:20]
            del held[:20]
        assert [m.payload for m in got] == [p for _, p in sent]
        assert most == limit, "the session held more than its Receive Maximum, or never all"
        assert session.reading_paused_s > 0
    assert_nothing_comes_again(s)


def test_a_session_paused_at_its_receive_maximum_keeps_its_connection_while_it_holds(
        broker: Broker) -> None:
    # Held past several keepalives (the database away): the broker, having had no
    # acknowledgement, kept to the limit, so its PINGRESP is the next packet, and is read.
    root, cid = f"s{uuid.uuid4().hex[:8]}", f"session-{uuid.uuid4().hex[:8]}"
    limit = 20
    s = settings(broker, root, cid, receive_maximum=limit, keepalive_s=1,
                 stop_reading_at_receive_maximum=True)
    sent = [(f"{root}/dev/X/telemetry", f"m{i}".encode()) for i in range(3 * limit)]
    with MqttSession(s) as session:
        wait_for(lambda: session.connected, what="the session")
        publish(broker.port, sent)
        held = take_all(session, limit)
        time.sleep(5)                       # five keepalives
        assert session.connected and session.reading_paused
        assert session.waiting == 0
        assert session.ack(held) == limit, "the connection they came on was lost"
        rest = take_and_ack(session, 2 * limit)
        assert [m.payload for m in held + rest] == [p for _, p in sent]


def test_a_session_paused_at_its_receive_maximum_notices_a_broker_that_stops_answering(
        own_broker: Broker) -> None:
    root, cid = f"s{uuid.uuid4().hex[:8]}", f"session-{uuid.uuid4().hex[:8]}"
    limit = 20
    s = settings(own_broker, root, cid, receive_maximum=limit, keepalive_s=1,
                 stop_reading_at_receive_maximum=True)
    sent = [(f"{root}/dev/X/telemetry", f"m{i}".encode()) for i in range(2 * limit)]
    assert own_broker.process is not None
    with MqttSession(s) as session:
        wait_for(lambda: session.connected, what="the session")
        publish(own_broker.port, sent)
        held = take_all(session, limit)
        wait_for(lambda: session.reading_paused, what="the session to stop reading")
        os.kill(own_broker.process.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: not session.connected, timeout=20,
                     what="the unanswered keepalive to be noticed while paused")
        finally:
            os.kill(own_broker.process.pid, signal.SIGCONT)
        wait_for(lambda: session.connected, timeout=30, what="the session to connect again")
        assert session.ack(held) == 0, "acknowledged on a connection that is gone"
        got = take_and_ack(session, 2 * limit)  # what was held comes again, then the rest
        assert [m.payload for m in got] == [p for _, p in sent]


def test_held_past_the_keepalive_behind_messages_sent_past_the_limit_all_come_again(
        broker: Broker) -> None:
    # Once acknowledgements flow the broker sends past the limit; held then (the database
    # away), the PINGRESP waits behind those messages in the socket, and the keepalive may
    # end the connection. Whether it does or not, nothing is lost: what was held and not
    # acknowledged comes again on the next connection.
    root, cid = f"s{uuid.uuid4().hex[:8]}", f"session-{uuid.uuid4().hex[:8]}"
    limit, n = 20, 400
    s = settings(broker, root, cid, receive_maximum=limit, keepalive_s=1,
                 stop_reading_at_receive_maximum=True)
    sent = [(f"{root}/dev/X/telemetry", f"m{i}".encode()) for i in range(n)]
    with MqttSession(s) as session:
        wait_for(lambda: session.connected, what="the session")
        publish(broker.port, sent)
        first = take_all(session, limit)
        assert session.ack(first) == limit          # acknowledgements flow
        held = take_all(session, limit)
        time.sleep(5)
        # what was held comes again if the connection was lost: then it waits here, once
        assert session.unacknowledged <= limit and session.waiting <= limit
        session.ack(held)                           # 0 if the connection was lost meanwhile
        got = first + held
        deadline = time.monotonic() + 60
        while {m.payload for m in got} != {p for _, p in sent} and time.monotonic() < deadline:
            batch = session.take(limit, 0.05, threading.Event())
            session.ack(batch)
            got += batch
        assert {m.payload for m in got} == {p for _, p in sent}
    assert_nothing_comes_again(s)


def test_a_session_an_older_release_subscribed_narrow_keeps_its_backlog_and_gets_each_once(
        broker: Broker) -> None:
    """The bulk lane's session from before held `+/telemetry` and `+/status`; subscribed to
    `dev/#` as well, Mosquitto would send each message once per subscription. Granted the
    wide one, the session unsubscribes the two: what was queued for them still comes, and
    after that each message comes once, a stray topic's too."""
    root, cid = f"t{uuid.uuid4().hex[:8]}/v1", f"older-{uuid.uuid4().hex[:8]}"
    narrow = (f"{root}/dev/+/telemetry", f"{root}/dev/+/status")
    older = MqttSession(SessionSettings(client_id=cid, filters=narrow, port=broker.port,
                                        session_expiry_s=300)).__enter__()
    assert older.wait_connected(10)
    wait_for(lambda: len(older._refused) == 2, what="the older release's SUBACKs")
    older.close()
    backlog = [(f"{root}/dev/OXI-1/telemetry", b"%d" % k) for k in range(3)]
    publish(broker.port, backlog)
    s = MqttSession(SessionSettings(client_id=cid, filters=(f"{root}/dev/#",),
                                    fallback_filters=narrow, port=broker.port,
                                    session_expiry_s=300)).__enter__()
    try:
        got = take_all(s, 3)
        assert [(m.topic, m.payload) for m in got] == backlog
        s.ack(got)
        wait_for(lambda: s._unsubscribed is not None, what="the narrow filters unsubscribed")
        assert s.refused_filters == ()
        live = [(f"{root}/dev/OXI-1/telemetry", b"live"), (f"{root}/dev/OXI-1/alarms", b"x")]
        publish(broker.port, live)
        assert [(m.topic, m.payload) for m in take_all(s, 3, timeout=2)] == live
    finally:
        s.close()
