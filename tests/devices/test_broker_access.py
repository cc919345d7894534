"""`vagt devices broker-acl` against a real Mosquitto started with the files it writes: a
deployed device publishes under its own topic only (on any channel: the engine keeps one it
does not read as a dead letter), devices not deployed cannot log in, and a payload naming
another device still becomes a dead letter in the engine."""

from __future__ import annotations

import argparse
import getpass
import os
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from tests.app.test_pipeline import ROOT, run_batches
from tests.support import free_port, start_mosquitto, stop_mosquitto

from vagt.app.config import Config, MqttConfig
from vagt.devices import cli, deploy, import_csv, report_lost, retire, return_device
from vagt.devices.broker_access import (
    BrokerAccessError,
    broker_access,
    device_password,
    mosquitto_hash,
)
from vagt.ingest.model import RawMessage

SECRET = "test-only-device-secret-0123456789"
ENGINE_USER = "vagt-engine"
ENGINE_PASSWORD = "engine-test-only-pw"
FLEET = """device_id,vendor,model,type,municipality,citizen_ref
OXI-000001,Nonin,3230,pulse_oximeter,Aarhus,cit-0a1
OXI-000002,Nonin,3230,pulse_oximeter,Skive,cit-0b2
OXI-000003,Nonin,3230,pulse_oximeter,Viborg,cit-0c3
OXI-000004,Nonin,3230,pulse_oximeter,,
"""


# --- the broker -------------------------------------------------------------------------------


@dataclass
class AclBroker:
    """A Mosquitto of this test's own: no anonymous access, our password and ACL files."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def passwords(self) -> Path:
        return self.directory / "passwords"

    @property
    def acl(self) -> Path:
        return self.directory / "acl"

    def start(self) -> None:
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {self.passwords}\n"
            f"acl_file {self.acl}\n"
            f"user {getpass.getuser()}\n"
            f"log_dest file {self.directory}/mosquitto.log\n")
        self.process = start_mosquitto(conf, self.port, self.directory / "mosquitto.log")

    def stop(self) -> None:
        stop_mosquitto(self.process)


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[AclBroker]:
    b = AclBroker(tmp_path)
    yield b
    b.stop()


def write_files(database_url: str, broker: AclBroker, secret_file: Path | None = None) -> int:
    """`vagt devices broker-acl` as an operator runs it; the engine's user from its URL."""
    if secret_file is None:
        secret_file = broker.directory / "device-secret"
        secret_file.write_text(SECRET + "\n", encoding="utf-8")
    config = Config(mqtt=MqttConfig(url=f"mqtt://{ENGINE_USER}:{ENGINE_PASSWORD}@127.0.0.1:1",
                                    topic_root=ROOT))
    parser = cli_parser()
    args = parser.parse_args(["devices", "broker-acl", "--passwords", str(broker.passwords),
                              "--acl", str(broker.acl), "--secret-file", str(secret_file),
                              "--actor", "anna"])
    result: int = args.handler(args, database_url, config)
    return result


def cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vagt")
    cli.add_parser(parser.add_subparsers())
    return parser


@pytest.fixture
def registry(conn: psycopg.Connection) -> psycopg.Connection:
    """Three devices deployed, one in stock; then OXI-000003 comes back and is retired."""
    import_csv(conn, FLEET, actor="anna")
    return_device(conn, "OXI-000003", actor="anna")
    retire(conn, "OXI-000003", actor="anna")
    return conn


@pytest.fixture
def running(database_url: str, registry: psycopg.Connection,
            acl_broker: AclBroker) -> AclBroker:
    assert write_files(database_url, acl_broker) == 0
    acl_broker.start()
    return acl_broker


# --- MQTT clients -------------------------------------------------------------------------------


class Client:
    """A paho MQTT 5 client that records what happens to it."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}",
                             protocol=paho.MQTTv5)
        self.c.username_pw_set(user, password)
        self.connack: ReasonCode | None = None
        self.connected = threading.Event()
        self.received: list[tuple[str, bytes]] = []
        self.got_message = threading.Condition()
        self.suback: list[ReasonCode] = []
        self.subscribed = threading.Event()
        self.pubacks: dict[int, ReasonCode] = {}
        self.puback = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.connected.wait(10), "no CONNACK"

    def _on_connect(self, client: object, userdata: object, flags: object, rc: ReasonCode,
                    props: object = None) -> None:
        self.connack = rc
        self.connected.set()

    def _on_message(self, client: object, userdata: object, msg: paho.MQTTMessage) -> None:
        with self.got_message:
            self.received.append((msg.topic, msg.payload))
            self.got_message.notify_all()

    def _on_subscribe(self, client: object, userdata: object, mid: int,
                      codes: list[ReasonCode], props: object = None) -> None:
        self.suback = codes
        self.subscribed.set()

    def _on_publish(self, client: object, userdata: object, mid: int, rc: ReasonCode,
                    props: object = None) -> None:
        with self.puback:
            self.pubacks[mid] = rc
            self.puback.notify_all()

    def subscribe(self, topic: str) -> list[ReasonCode]:
        self.subscribed.clear()
        self.c.subscribe(topic, qos=1)
        assert self.subscribed.wait(10), "no SUBACK"
        return self.suback

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        mid = self.c.publish(topic, payload, qos=1).mid
        with self.puback:
            assert self.puback.wait_for(lambda: mid in self.pubacks, timeout=10), "no PUBACK"
            return self.pubacks[mid]

    def wait_for_message(self, topic: str) -> list[tuple[str, bytes]]:
        with self.got_message:
            assert self.got_message.wait_for(
                lambda: any(t == topic for t, _ in self.received), timeout=10), \
                f"nothing arrived on {topic}"
            return list(self.received)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def connect(clients: list[Client], broker: AclBroker, user: str, password: str) -> Client:
    c = Client(broker.port, user, password)
    clients.append(c)
    return c


def as_device(clients: list[Client], broker: AclBroker, device_id: str) -> Client:
    return connect(clients, broker, device_id, device_password(SECRET.encode(), device_id))


def as_engine(clients: list[Client], broker: AclBroker) -> Client:
    engine = connect(clients, broker, ENGINE_USER, ENGINE_PASSWORD)
    assert engine.connack is not None and not engine.connack.is_failure
    assert [c.is_failure for c in engine.subscribe(f"{ROOT}/dev/#")] == [False]
    return engine


def topic(device_id: str, channel: str = "telemetry") -> str:
    return f"{ROOT}/dev/{device_id}/{channel}"


def reading(device_id: str) -> bytes:
    return orjson.dumps({"device_id": device_id, "time": time.time() - 60,
                         "readings": [{"metric": "spo2", "value": 97, "unit": "%"}]})


# --- against the real broker -----------------------------------------------------------------


def test_a_deployed_device_publishes_on_its_own_topic_and_the_engine_receives_it(
        running, clients):
    engine = as_engine(clients, running)
    device = as_device(clients, running, "OXI-000001")
    assert device.connack is not None and not device.connack.is_failure
    payload = reading("OXI-000001")
    assert not device.publish(topic("OXI-000001"), payload).is_failure
    assert engine.wait_for_message(topic("OXI-000001")) == [(topic("OXI-000001"), payload)]


def test_a_device_cannot_publish_on_another_devices_topic(running, clients):
    engine = as_engine(clients, running)
    device = as_device(clients, running, "OXI-000001")
    refused = device.publish(topic("OXI-000002"), reading("OXI-000002"))
    assert str(refused) == "Not authorized"
    # a marker on its own topic after it: when the marker has arrived, the refused message
    # would have arrived before it (one publisher, one subscriber: in order)
    device.publish(topic("OXI-000001", "status"), b'{"status": {"battery": 80}}')
    arrived = engine.wait_for_message(topic("OXI-000001", "status"))
    assert [t for t, _ in arrived] == [topic("OXI-000001", "status")]


@pytest.mark.parametrize("channel", ["alarms", "Alarm", "alarm/fall", "gossip", ""])
def test_a_device_on_a_channel_the_engine_does_not_read_reaches_it_as_a_dead_letter(
        database_url, running, clients, channel):
    """A device set to a channel vagt does not read (a personal alarm set to 'alarms'): were
    it refused at the broker, an MQTT 3.1.1 device would never hear of it, and its messages
    would vanish. The engine gets it and keeps it as a dead letter (with an alert)."""
    engine = as_engine(clients, running)
    device = as_device(clients, running, "OXI-000001")
    where = topic("OXI-000001", channel).rstrip("/")
    assert not device.publish(where, reading("OXI-000001")).is_failure
    (got_topic, payload), = engine.wait_for_message(where)
    run_batches(database_url, [RawMessage(got_topic, payload, time.time())])
    with psycopg.connect(database_url) as c:
        assert c.execute("SELECT reason FROM dead_letters").fetchall() == [("bad_topic",)]
        assert c.execute("SELECT device_id, queue FROM alerts WHERE rule = 'bad_topic'"
                         ).fetchall() == [("OXI-000001", "service_centre")]


def test_a_device_reads_nothing(running, clients):
    engine = as_engine(clients, running)
    nosy = as_device(clients, running, "OXI-000001")
    nosy.subscribe(f"{ROOT}/dev/#")  # Mosquitto grants it, then delivers nothing it may not read
    other = as_device(clients, running, "OXI-000002")
    other.publish(topic("OXI-000002"), reading("OXI-000002"))
    engine.wait_for_message(topic("OXI-000002"))
    # Mosquitto queued any copy for OXI-000001 when it handled that PUBLISH; a copy would
    # reach OXI-000001 before the PUBACK of anything it publishes afterwards.
    nosy.publish(topic("OXI-000001", "status"), b'{"status": {"battery": 80}}')
    assert nosy.received == []


@pytest.mark.parametrize("device_id", ["OXI-000003", "OXI-000004"], ids=["retired", "in_stock"])
def test_a_device_that_is_not_deployed_cannot_connect(running, clients, device_id):
    device = as_device(clients, running, device_id)
    assert device.connack is not None and device.connack.is_failure
    assert str(device.connack) in ("Not authorized", "Bad user name or password")


def test_a_password_derived_from_another_secret_is_refused(running, clients):
    device = connect(clients, running, "OXI-000001",
                     device_password(b"some-other-secret-0123456789", "OXI-000001"))
    assert device.connack is not None and device.connack.is_failure


def test_a_device_that_is_retired_loses_access_at_the_next_reload(
        database_url, running, clients, conn):
    assert not as_device(clients, running, "OXI-000002").connack.is_failure  # type: ignore[union-attr]
    return_device(conn, "OXI-000002", actor="anna")
    retire(conn, "OXI-000002", actor="anna")
    assert write_files(database_url, running) == 0
    assert running.process is not None
    running.process.send_signal(1)  # SIGHUP: Mosquitto reads its password and ACL files again
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the reload is asynchronous: retry until it took
        again = as_device(clients, running, "OXI-000002")
        if again.connack is not None and again.connack.is_failure:
            break
        time.sleep(0.1)
    assert again.connack is not None and again.connack.is_failure


def test_a_payload_naming_another_device_on_its_own_topic_becomes_a_device_mismatch(
        database_url, running, clients):
    # The broker lets it through (it is the device's own topic); the engine must not.
    engine = as_engine(clients, running)
    device = as_device(clients, running, "OXI-000001")
    assert not device.publish(topic("OXI-000001"), reading("OXI-000002")).is_failure
    (got_topic, payload), = engine.wait_for_message(topic("OXI-000001"))
    run_batches(database_url, [RawMessage(got_topic, payload, time.time())])
    with psycopg.connect(database_url) as c:
        assert c.execute("SELECT reason, device_id FROM dead_letters").fetchall() == [
            ("device_mismatch", "OXI-000001")]
        assert c.execute("SELECT count(*) FROM readings").fetchone() == (0,)


# --- the files ------------------------------------------------------------------------------


def test_the_files_are_private_and_list_only_deployed_devices(database_url, registry,
                                                              acl_broker, capsys):
    assert write_files(database_url, acl_broker) == 0
    for path in (acl_broker.passwords, acl_broker.acl):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    users = [line.split(":")[0] for line in acl_broker.passwords.read_text().splitlines()]
    assert users == [ENGINE_USER, "OXI-000001", "OXI-000002"]
    acl = acl_broker.acl.read_text()
    assert f"user OXI-000001\ntopic write {ROOT}/dev/OXI-000001/#\n" in acl
    assert f"user {ENGINE_USER}\ntopic read {ROOT}/dev/#\n" in acl
    assert "OXI-000003" not in acl and "OXI-000004" not in acl
    out, err = capsys.readouterr()
    assert SECRET not in out + err and ENGINE_PASSWORD not in out + err
    assert SECRET not in acl_broker.passwords.read_text()


def test_writing_the_files_is_audited(database_url, registry, acl_broker):
    write_files(database_url, acl_broker)
    assert registry.execute("SELECT actor, details FROM audit_log WHERE action = "
                            "'devices.broker_acl'").fetchall() == [
        ("anna", {"deployed_devices": 2, "engine_user": ENGINE_USER,
                  "via": f"cli:{getpass.getuser()}"})]


def test_the_audit_row_is_committed_before_the_files_are_written(database_url, registry,
                                                                  acl_broker, monkeypatch):
    """The broker takes the files in at its next reload: a database lost after they were
    written and before the row was committed would leave files no row says who wrote."""
    from vagt.devices import cli as devices_cli

    real = devices_cli.write_private
    rows_at_write: list[int] = []

    def watched(path, content):
        with psycopg.connect(database_url) as other:
            rows_at_write.append(other.execute(
                "SELECT count(*) FROM audit_log WHERE action = 'devices.broker_acl'"
            ).fetchone()[0])
        real(path, content)

    monkeypatch.setattr(devices_cli, "write_private", watched)
    assert write_files(database_url, acl_broker) == 0
    assert rows_at_write == [1, 1]


def test_the_same_registry_gives_the_same_files(database_url, registry, acl_broker):
    write_files(database_url, acl_broker)
    first = acl_broker.passwords.read_text()
    write_files(database_url, acl_broker)
    assert acl_broker.passwords.read_text() == first


def test_without_a_secret_nothing_is_written_and_the_message_says_how_to_give_one(
        database_url, registry, acl_broker, capsys):
    empty = acl_broker.directory / "empty"
    empty.write_text("", encoding="utf-8")
    assert write_files(database_url, acl_broker, secret_file=empty) == 2
    assert capsys.readouterr().err == f"vagt: {empty} is empty: it should hold the device secret\n"
    assert not acl_broker.passwords.exists()


def test_the_password_hash_is_mosquittos_pbkdf2_sha512_format():
    hashed = mosquitto_hash("hunter2", b"\x00" * 12)
    prefix, seven, iterations, salt, key = hashed.split("$")
    assert (prefix, seven, iterations, salt) == ("", "7", "101", "AAAAAAAAAAAAAAAA")
    assert len(key) == 88  # 64 bytes of SHA-512, base64


def register_before_ids_were_user_names(conn: psycopg.Connection, device_id: str) -> None:
    """A device registered when an id could still hold ':' (as one in the wild may), deployed."""
    conn.execute("INSERT INTO devices (device_id, vendor, model, type, municipality, status) "
                 "VALUES (%s, 'Nonin', '3230', 'pulse_oximeter', '', 'in_stock')", (device_id,))
    deploy(conn, device_id, citizen_ref="cit-0e5", municipality="Skive", actor="anna")


def test_a_device_whose_id_cannot_be_a_user_does_not_keep_a_lost_device_logged_in(
        database_url, running, clients, conn, capsys):
    register_before_ids_were_user_names(conn, "GW:01")
    report_lost(conn, "OXI-000002", actor="anna")
    assert write_files(database_url, running) == 0
    assert running.process is not None
    running.process.send_signal(1)  # SIGHUP: Mosquitto reads its password and ACL files again
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the reload is asynchronous: retry until it took
        lost = as_device(clients, running, "OXI-000002")
        if lost.connack is not None and lost.connack.is_failure:
            break
        time.sleep(0.1)
    assert lost.connack is not None and lost.connack.is_failure
    still = as_device(clients, running, "OXI-000001")
    assert still.connack is not None and not still.connack.is_failure
    err = capsys.readouterr().err
    assert ("vagt: warning: 1 deployed device(s) left out of the files, so they cannot log in "
            "to the broker:\n  GW:01: ':' separates the user name from the password in "
            "Mosquitto's password file\n") in err


def test_a_device_left_out_of_the_files_is_named_in_the_audit(database_url, registry,
                                                               acl_broker):
    register_before_ids_were_user_names(registry, "GW:01")
    write_files(database_url, acl_broker)
    assert "GW:01" not in acl_broker.passwords.read_text() + acl_broker.acl.read_text()
    assert registry.execute("SELECT details FROM audit_log WHERE action = "
                            "'devices.broker_acl'").fetchall() == [
        ({"deployed_devices": 2, "engine_user": ENGINE_USER, "left_out": ["GW:01"],
          "via": f"cli:{getpass.getuser()}"},)]


@pytest.mark.parametrize(("device_id", "why"), [
    ("GW:01", "':' separates the user name"),
    ("OXI 7", "a device's user name is 1 to 64 of A-Z a-z 0-9 . _ -"),
    ("OXI+", "a device's user name is 1 to 64 of A-Z a-z 0-9 . _ -"),
    (ENGINE_USER, "it is also the engine's user name"),
])
def test_a_device_whose_id_cannot_be_a_user_is_left_out_and_the_rest_written(device_id, why):
    access = broker_access(["OXI-000001", device_id, "OXI-000002"], secret=SECRET.encode(),
                           topic_root=ROOT, engine_user=ENGINE_USER,
                           engine_password=ENGINE_PASSWORD)
    assert access.devices == ["OXI-000001", "OXI-000002"]
    assert [line.split(":")[0] for line in access.passwords.splitlines()] == [
        ENGINE_USER, "OXI-000001", "OXI-000002"]
    assert access.acl.count("\nuser ") == 3
    assert list(access.left_out) == [device_id]
    assert access.left_out[device_id].startswith(why)


def test_a_short_secret_is_refused():
    with pytest.raises(BrokerAccessError, match="the device secret is too short"):
        broker_access([], secret=b"short", topic_root=ROOT, engine_user=ENGINE_USER,
                      engine_password=ENGINE_PASSWORD)


def test_deploying_a_device_gives_it_access_at_the_next_generation(
        database_url, registry, acl_broker, clients):
    deploy(registry, "OXI-000004", citizen_ref="cit-0d4", municipality="Odder", actor="anna")
    write_files(database_url, acl_broker)
    acl_broker.start()
    device = as_device(clients, acl_broker, "OXI-000004")
    assert device.connack is not None and not device.connack.is_failure


HOUSEHOLD = """device_id,vendor,model,type,municipality,citizen_ref,gateway_id
GWY-000001,Telit,HomeHub 4G,gateway,Aarhus,cit-0a1,
BPM-000001,A&D,UA-651BLE,bp_monitor,Aarhus,cit-0a1,GWY-000001
BPM-000002,A&D,UA-651BLE,bp_monitor,Aarhus,cit-0e5,GWY-000009
BPM-000003,A&D,UA-651BLE,bp_monitor,Aarhus,,GWY-000001
"""


def test_a_gateway_publishes_for_the_meters_behind_it_and_for_no_other_device(
        database_url, registry, acl_broker, clients):
    """A household's Bluetooth blood-pressure monitor has no connection of its own: its
    gateway publishes its readings on its topic. The registry's `gateway_id` says whose
    gateway it is; before, the files let a gateway publish under its own id only, and the
    readings were refused at the broker (an MQTT 3.1.1 gateway is told nothing)."""
    import_csv(registry, HOUSEHOLD, actor="anna")   # BPM-000003: in stock, not behind it now
    assert write_files(database_url, acl_broker) == 0
    acl_broker.start()
    engine = as_engine(clients, acl_broker)
    gateway = as_device(clients, acl_broker, "GWY-000001")
    payload = reading("BPM-000001")
    assert not gateway.publish(topic("BPM-000001"), payload).is_failure
    assert engine.wait_for_message(topic("BPM-000001"))[-1] == (topic("BPM-000001"), payload)
    for other in ("BPM-000002", "BPM-000003", "OXI-000001"):   # another's, in stock, unrelated
        assert str(gateway.publish(topic(other), reading(other))) == "Not authorized", other


def test_a_gateways_grant_names_only_deployed_devices_that_can_log_in():
    access = broker_access(["BPM-000001", "GWY-000001", "OXI-000001"], secret=SECRET.encode(),
                           topic_root=ROOT, engine_user=ENGINE_USER,
                           engine_password=ENGINE_PASSWORD,
                           behind={"GWY-000001": ["BPM-000001", "BPM-000002", "GWY-000001"],
                                   "GWY-000009": ["OXI-000001"]})
    assert (f"user GWY-000001\ntopic write {ROOT}/dev/GWY-000001/#\n"
            f"topic write {ROOT}/dev/BPM-000001/#\nuser OXI-000001\n") in access.acl
    assert "BPM-000002" not in access.acl and "GWY-000009" not in access.acl


def test_a_device_whose_gateway_id_names_no_deployed_gateway_is_named_in_a_warning(
        database_url, registry, acl_broker, capsys):
    """BPM-000002's gateway_id has a typo (no GWY-000009 is deployed): no gateway may
    publish for it, and an MQTT 3.1.1 gateway would lose its readings at the broker without
    a word. Whoever writes the files is told which device and which gateway id; the files
    are written all the same (exit 0), for every other device."""
    import_csv(registry, HOUSEHOLD, actor="anna")
    assert write_files(database_url, acl_broker) == 0
    err = capsys.readouterr().err
    assert ("vagt: warning: 1 deployed device(s) name in gateway_id a gateway that is not a "
            "deployed device in the files, so no gateway may publish for them:\n"
            "  BPM-000002: gateway_id 'GWY-000009'\n") in err
    assert "BPM-000001" not in err


def test_the_device_secret_from_the_environment_never_shows_in_the_configuration():
    from vagt.app.config import load_config

    config = load_config(env={"VAGT_DEVICE_SECRET": SECRET})
    assert config.device_secret == SECRET
    assert SECRET not in repr(config)


def test_an_actor_the_audit_log_refuses_writes_no_files(database_url, registry, acl_broker):
    """The files give devices their access; written, they are in force at the next reload,
    so they may not be written by someone the audit log cannot name."""
    secret_file = acl_broker.directory / "device-secret"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    config = Config(mqtt=MqttConfig(url=f"mqtt://{ENGINE_USER}:{ENGINE_PASSWORD}@127.0.0.1:1",
                                    topic_root=ROOT))
    args = cli_parser().parse_args(["devices", "broker-acl", "--passwords",
                                    str(acl_broker.passwords), "--acl", str(acl_broker.acl),
                                    "--secret-file", str(secret_file), "--actor", "x" * 200])
    assert args.handler(args, database_url, config) == 2
    assert not acl_broker.passwords.exists() and not acl_broker.acl.exists()
