"""The servers that come from pip packages, and the demo and simulator that run on them.

The demo tests here use a stand-in engine: they test the demo's plumbing (servers, fleet,
configuration handed over, alerts printed, clean stop), not the engine.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from tests.app.db_proxy import DatabaseProxy
from tests.support import free_port

from vagt.app import db
from vagt.app.config import Config, load_config
from vagt.app.demo import SimOptions, format_alert, run_demo, run_simulate, vagt_command
from vagt.app.embedded import EmbeddedServerError, embedded_broker, embedded_postgres
from vagt.app.engine import run_engine
from vagt.sim import publish_backlog


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def mqtt_client(port: int, client_id: str | None = None, *, clean: bool = True,
                manual_ack: bool = False) -> tuple[paho.Client, list[paho.MQTTMessage]]:
    """A connected MQTT 3.1.1 client (amqtt speaks nothing else) and the messages it gets."""
    got: list[paho.MQTTMessage] = []
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or uuid.uuid4().hex[:10],
                    protocol=paho.MQTTv311, clean_session=clean, manual_ack=manual_ack)
    c.on_message = lambda _c, _u, m: got.append(m)
    connected = threading.Event()
    c.on_connect = lambda *_: connected.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert connected.wait(5), "no CONNACK"
    return c, got


def subscribe(c: paho.Client, topic_filter: str) -> None:
    done = threading.Event()
    c.on_subscribe = lambda *_: done.set()
    c.subscribe(topic_filter, qos=1)
    assert done.wait(5), "no SUBACK"


def close(c: paho.Client) -> None:
    c.disconnect()
    c.loop_stop()


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(predicate())


# --- embedded PostgreSQL -----------------------------------------------------------------------

def test_the_embedded_postgres_starts_takes_the_schema_and_stops(tmp_path: Path):
    with embedded_postgres(tmp_path) as url:
        applied = db.migrate(url)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("vagt",)
    assert applied[0].startswith("0001_core")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)


def test_the_embedded_postgres_keeps_its_data_and_restarts_within_a_second(tmp_path: Path):
    with embedded_postgres(tmp_path) as url:
        db.migrate(url)
    started = time.monotonic()
    with embedded_postgres(tmp_path) as url:
        elapsed = time.monotonic() - started
        assert db.migrate(url) == []
    assert elapsed < 1.5


def postmaster_running(pgdata: Path) -> bool:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except ProcessLookupError:
        return False
    return True


def stop_postmaster(pgdata: Path) -> None:
    """Stop a server a test left behind (it failed), so that none outlives the tests."""
    if postmaster_running(pgdata):
        os.kill(int((pgdata / "postmaster.pid").read_text().split()[0]), signal.SIGINT)
        wait_until(lambda: not postmaster_running(pgdata), timeout=30)


def started_vagt(*argv: str, env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """A Python process (its log in a file: a pipe nobody reads would fill and stop it)."""
    with log.open("w") as stderr:
        return subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE,
                                stderr=stderr, text=True,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
                                     **env})


def holding_the_server(tmp_path: Path) -> subprocess.Popen[str]:
    """A process that starts the embedded server of `tmp_path`, prints "ready" and holds it
    (its log in holder.log)."""
    return started_vagt(
        "-c", "import sys, time; from pathlib import Path; "
              "from vagt.app.embedded import embedded_postgres\n"
              "with embedded_postgres(Path(sys.argv[1])):\n"
              "    print('ready', flush=True); time.sleep(600)", str(tmp_path), env={},
        log=tmp_path / "holder.log")


def test_a_server_left_by_a_killed_process_is_taken_over_and_stopped(tmp_path: Path):
    holder = holding_the_server(tmp_path)
    pgdata = tmp_path / "postgres"
    try:
        assert holder.stdout is not None
        # if it ends before "ready", its log says why (once seen on a new machine's first run)
        assert holder.stdout.readline() == "ready\n", (tmp_path / "holder.log").read_text()
        holder.kill()  # as a hard kill would: no clean-up of its own
        holder.wait()
        assert postmaster_running(pgdata)
        with embedded_postgres(tmp_path) as url:
            assert db.migrate(url)
        assert not postmaster_running(pgdata)
    finally:
        holder.kill()
        stop_postmaster(pgdata)


def test_a_server_that_died_with_the_machine_starts_again_when_its_pid_is_someone_elses(
        tmp_path: Path):
    """A power cut or a crashed container leaves postmaster.pid (and the socket's lock file)
    naming the server's pid; after the restart that pid is soon some other process's, and
    the data directory must still start, as it does when the pid is free."""
    with embedded_postgres(tmp_path) as url:
        db.migrate(url)
    pgdata = tmp_path / "postgres"
    holder = holding_the_server(tmp_path)
    other = subprocess.Popen(["sleep", "600"])
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
        locks = [pgdata / "postmaster.pid", *pgdata.glob(".s.PGSQL.*.lock")]
        left = {f: f.read_text() for f in locks}
        os.kill(postmaster, signal.SIGKILL)  # the machine went down: nothing cleaned up
        holder.kill()
        holder.wait()
        assert wait_until(lambda: not postmaster_running(pgdata), timeout=30)
        for f, text in left.items():  # as it was, its pid now another process's
            f.write_text(text.replace(str(postmaster), str(other.pid), 1))
        with embedded_postgres(tmp_path) as url:
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)
        assert not postmaster_running(pgdata) or postmaster_pid(pgdata) == other.pid
    finally:
        holder.kill()
        other.kill()
        other.wait()
        if postmaster_pid(pgdata) != other.pid:
            stop_postmaster(pgdata)


def postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except FileNotFoundError:
        return None


def test_a_closed_terminal_stops_the_demo_and_its_postgres(tmp_path: Path):
    demo = started_vagt("-m", "vagt.app.cli", "demo", "--devices", "20", "--duration", "300",
                        env={"VAGT_DATA_DIR": str(tmp_path), "VAGT_METRICS_PORT": "0"},
                        log=tmp_path / "demo.log")
    pgdata = tmp_path / "demo" / "postgres"
    try:
        assert demo.stdout is not None
        assert "Ctrl-C stops" in demo.stdout.readline()
        demo.send_signal(signal.SIGHUP)
        demo.communicate(timeout=120)
        assert demo.returncode == 0
        assert "event=embedded_postgres_stopped" in (tmp_path / "demo.log").read_text()
        assert not postmaster_running(pgdata)
    finally:
        demo.kill()
        stop_postmaster(pgdata)


def test_the_embedded_postgres_refuses_a_data_dir_its_package_cannot_use(tmp_path: Path):
    with pytest.raises(EmbeddedServerError, match="VAGT_DATA_DIR"):
        with embedded_postgres(tmp_path / "with space"):
            pass


@pytest.fixture(scope="module")
def embedded_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data directory whose embedded database has vagt's schema (the server stopped)."""
    data_dir = tmp_path_factory.mktemp("data")
    with embedded_postgres(data_dir) as url:
        db.migrate(url)
    yield data_dir
    stop_postmaster(data_dir / "postgres")


def vagt_on(data_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`VAGT_DATA_DIR=data_dir vagt ARGV`, no database URL set: the embedded database."""
    env = {k: v for k, v in os.environ.items() if k != "VAGT_DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "vagt.app.cli", *argv], capture_output=True,
                          text=True, timeout=120,
                          env={**env, "PYTHONPATH": os.pathsep.join(sys.path),
                               "VAGT_DATA_DIR": str(data_dir)})


def test_a_one_shot_command_on_the_embedded_database_prints_its_answer_alone(
        embedded_data_dir: Path):
    """The server's start and stop are the command's business, not its reader's: said at
    debug level only."""
    ran = vagt_on(embedded_data_dir, "alerts", "list")
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "no alerts\n", "")
    ran = vagt_on(embedded_data_dir, "--log-level", "debug", "alerts", "list")
    assert "level=DEBUG logger=vagt.embedded event=embedded_postgres_started" in ran.stderr
    assert "level=DEBUG logger=vagt.embedded event=embedded_postgres_stopped" in ran.stderr


def test_the_engine_on_the_embedded_database_logs_its_start_and_stop(
        embedded_data_dir: Path, broker, topic_root: str, tmp_path: Path):
    """A server's log says which database it runs on, and that it stopped it."""
    from tests.app.conftest import EngineProcess

    env = {k: v for k, v in os.environ.items() if k != "VAGT_DATABASE_URL"}
    env.update({"PYTHONPATH": os.pathsep.join(sys.path), "VAGT_DATA_DIR": str(embedded_data_dir),
                "VAGT_MQTT_URL": broker.url, "VAGT_MQTT_TOPIC_ROOT": topic_root,
                "VAGT_MQTT_CLIENT_ID": f"vagt-{uuid.uuid4().hex[:8]}",
                "VAGT_METRICS_PORT": "0"})
    engine = EngineProcess(env, tmp_path / "engine.log").start()
    try:
        engine.wait_ready(timeout=60)
        assert engine.terminate() == 0
    finally:
        engine.stop()
    log = engine.log()
    assert "level=INFO logger=vagt.embedded event=embedded_postgres_started" in log
    assert "level=INFO logger=vagt.embedded event=embedded_postgres_stopped" in log


# --- embedded MQTT broker ----------------------------------------------------------------------

def test_the_embedded_broker_carries_a_qos1_message_between_two_clients():
    with embedded_broker(free_port()) as url:
        sub, got = mqtt_client(port_of(url))
        subscribe(sub, "vagt/v1/dev/+/alarm")
        pub, _ = mqtt_client(port_of(url))
        info = pub.publish("vagt/v1/dev/ALM-000001/alarm", b"help", qos=1)
        info.wait_for_publish(5)
        assert info.is_published()  # the broker's PUBACK came
        assert wait_until(lambda: len(got) == 1)
        close(sub)
        close(pub)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("vagt/v1/dev/ALM-000001/alarm", b"help", 1)]


def test_the_embedded_broker_queues_for_a_persistent_session_while_its_client_is_away():
    with embedded_broker(free_port()) as url:
        engine, _ = mqtt_client(port_of(url), "engine-1", clean=False)
        subscribe(engine, "vagt/v1/dev/#")
        close(engine)
        publish_backlog(url, [(f"vagt/v1/dev/OXI-{i:06d}/telemetry", b"%d" % i)
                              for i in range(200)])
        time.sleep(1.5)  # amqtt sweeps sessions every second: this one must survive that
        engine, got = mqtt_client(port_of(url), "engine-1", clean=False)
        assert wait_until(lambda: len(got) == 200)
        close(engine)
    assert {m.payload for m in got} == {b"%d" % i for i in range(200)}


def test_the_embedded_broker_does_not_resend_what_a_client_left_unacknowledged():
    """amqtt's limit, as its docstring says: Mosquitto would send this message again."""
    with embedded_broker(free_port()) as url:
        engine, got = mqtt_client(port_of(url), "engine-2", clean=False, manual_ack=True)
        subscribe(engine, "vagt/v1/dev/#")
        publish_backlog(url, [("vagt/v1/dev/ALM-000001/alarm", b"fall")])
        assert wait_until(lambda: len(got) == 1)
        close(engine)  # without acknowledging it
        engine, again = mqtt_client(port_of(url), "engine-2", clean=False)
        time.sleep(1.0)
        close(engine)
    assert again == []


def test_a_second_embedded_broker_on_a_taken_port_says_so():
    port = free_port()
    with embedded_broker(port):
        with pytest.raises(EmbeddedServerError, match=f"127.0.0.1:{port}"):
            with embedded_broker(port):
                pass


# --- vagt simulate -----------------------------------------------------------------------------

def test_simulate_sends_traffic_at_the_rate_for_the_duration_and_writes_the_fleet(
        broker, topic_root, tmp_path: Path, capsys):
    sub, got = mqtt_client(broker.port)
    subscribe(sub, f"{topic_root}/dev/#")
    fleet_file = tmp_path / "fleet.csv"
    code = run_simulate(broker.url, topic_root, 40, 50.0, 1.0, SimOptions(seed=1), fleet_file, 5)
    assert wait_until(lambda: len(got) >= 45)
    close(sub)
    assert code == 0
    assert 45 <= len(got) <= 55
    assert len(fleet_file.read_text().splitlines()) == 41
    assert "every one acknowledged" in capsys.readouterr().out


def test_simulate_for_no_time_writes_the_fleet_to_register_first_and_needs_no_broker(
        tmp_path: Path, capsys):
    """The README's order: write the fleet, import it, then send its traffic (sent before
    the import, every message would be an unknown_device dead letter)."""
    fleet_file = tmp_path / "fleet.csv"
    nobody = f"mqtt://127.0.0.1:{free_port()}"
    assert run_simulate(nobody, "vagt/v1", 40, 50.0, 0, SimOptions(seed=1), fleet_file) == 0
    assert len(fleet_file.read_text().splitlines()) == 41
    out = capsys.readouterr().out
    assert f"register it with `vagt devices import {fleet_file}`" in out
    assert "vagt simulate:" not in out and "sent" not in out


class SlowToTakeConnections(DatabaseProxy):
    """The test's Mosquitto behind a proxy that takes a connection only `delay_s` after it
    came (a broker host under load): the client's CONNECT waits in the listen backlog."""

    def __init__(self, broker_port: int, delay_s: float) -> None:
        super().__init__(("127.0.0.1", broker_port))
        self.delay_s = delay_s

    def _accept(self, listener: socket.socket) -> None:
        time.sleep(self.delay_s)
        super()._accept(listener)


def test_simulate_runs_its_duration_from_when_the_broker_took_the_connection(
        broker, topic_root, capsys):
    """A broker slow to answer (1.5 s) must not eat the run: --rate 50 --duration 1 sends
    about 50 messages however long the connection took, not none."""
    sub, got = mqtt_client(broker.port)
    subscribe(sub, f"{topic_root}/dev/#")
    proxy = SlowToTakeConnections(broker.port, delay_s=1.5)
    proxy.up()
    try:
        code = run_simulate(f"mqtt://127.0.0.1:{proxy.port}", topic_root, 40, 50.0, 1.0,
                            SimOptions(seed=1), None, 5)
    finally:
        proxy.down()
    said = re.search(r"sent (\d+) messages, every one acknowledged", capsys.readouterr().out)
    assert code == 0 and said is not None
    assert wait_until(lambda: len(got) >= int(said[1]))
    close(sub)
    # the old clock, started before the connection, left none of the second; a busy machine
    # may send fewer than the rate allows, never more
    assert 25 <= len(got) == int(said[1]) <= 55


@pytest.mark.parametrize(("argv", "says"), [
    (["simulate", "--speed", "0"], "argument --speed: must be a number above 0, got 0"),
    (["simulate", "--rate", "-5"], "argument --rate: must be a number above 0, got -5"),
    (["simulate", "--devices", "0"], "argument --devices: must be 1 or more, got 0"),
    (["demo", "--faults", "lots"], "argument --faults: not a number: 'lots'"),
    (["demo", "--history", "-1"], "argument --history: must be a number of 0 or more, got -1"),
])
def test_simulate_and_demo_refuse_nonsense_options_naming_them(argv, says, capsys):
    from vagt.app.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


# --- vagt demo, with a stand-in engine ---------------------------------------------------------

class StandInEngine:
    """Takes the configuration the demo hands over, listens on its broker, and opens one alert
    in its database for the first message that arrives; then waits to be stopped."""

    def __init__(self) -> None:
        self.config: Config | None = None
        self.received = 0
        self.stopped = False

    def __call__(self, config: Config, stop: threading.Event) -> None:
        self.config = config
        client, got = mqtt_client(config.mqtt.port)
        subscribe(client, f"{config.mqtt.topic_root}/dev/+/+")
        try:
            if wait_until(lambda: got or stop.is_set(), timeout=30) and got:
                self._open_alert(config.database.url, got[0].topic.split("/")[-2])
            stop.wait()
            self.received = len(got)
        finally:
            close(client)
        self.stopped = True

    @staticmethod
    def _open_alert(db_url: str, device_id: str) -> None:
        with psycopg.connect(db_url) as conn:
            conn.execute(
                "INSERT INTO alerts (fingerprint, rule, device_id, summary, severity, priority,"
                " queue, opened_at, last_fired_at) VALUES (%s, 'stand_in', %s, %s, 'critical',"
                " 1, 'emergency', now(), now())",
                (f"stand_in:{device_id}", device_id, f"alarm.fall from {device_id}"))


def demo_config(tmp_path: Path) -> Config:
    return load_config(None, env={"VAGT_METRICS_PORT": "0", "VAGT_DATA_DIR": str(tmp_path)})


def test_the_demo_registers_the_fleet_hands_the_engine_its_servers_and_prints_alerts(
        database_url, tmp_path: Path, capsys):
    engine = StandInEngine()
    code = run_demo(demo_config(tmp_path), database=database_url, devices=60, duration=3,
                    options=SimOptions(seed=2),
                    run_engine=engine)
    out = capsys.readouterr().out
    assert code == 0
    assert engine.config is not None and engine.stopped
    assert engine.config.mqtt.protocol == 4
    assert engine.config.mqtt.url.startswith("mqtt://127.0.0.1:")
    assert engine.config.database.url == database_url
    assert engine.received > 0
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone() == (60,)
        (alert_id, device_id), = conn.execute("SELECT id, device_id FROM alerts").fetchall()
    assert "60 simulated devices in 19 municipalities (60 newly registered)" in out
    alert_lines = [line for line in out.splitlines() if line.startswith("ALERT")]
    assert len(alert_lines) == 1
    assert f"#{alert_id}" in alert_lines[0] and device_id in alert_lines[0]
    assert "emergency" in alert_lines[0] and f"alarm.fall from {device_id}" in alert_lines[0]
    assert "messages sent" in out and "readings stored" in out and "dead letters" in out


def test_the_demo_runs_its_own_postgres_when_no_database_is_configured(tmp_path: Path, capsys):
    seen: list[str] = []

    def engine(config: Config, stop: threading.Event) -> None:
        with psycopg.connect(config.database.url) as conn:
            seen.append(conn.execute("SELECT current_database()").fetchone()[0])
            seen.append(str(conn.execute("SELECT count(*) FROM devices").fetchone()[0]))
        stop.wait()

    config = load_config(None, env={"VAGT_DATA_DIR": str(tmp_path), "VAGT_METRICS_PORT": "0"})
    assert run_demo(config, devices=25, duration=1, run_engine=engine) == 0
    assert seen == ["vagt", "25"]
    assert (tmp_path / "demo" / "postgres" / "PG_VERSION").exists()


def test_the_demo_leaves_the_configured_database_and_webhooks_alone(
        database_url, tmp_path: Path, capsys, caplog):
    """A demo started where VAGT_DATABASE_URL and VAGT_ALERTS name the real ones registers
    its fleet in its own database and runs the built-in policy, which delivers nowhere."""
    policy = tmp_path / "alerts.toml"
    policy.write_text('[[delivery.webhook]]\nname = "callcentre"\n'
                      'url = "https://callcentre.example/hook"\n')
    config = load_config(None, env={"VAGT_DATABASE_URL": database_url, "VAGT_METRICS_PORT": "0",
                                    "VAGT_DATA_DIR": str(tmp_path), "VAGT_ALERTS": str(policy)})
    handed: list[Config] = []

    def engine(config: Config, stop: threading.Event) -> None:
        handed.append(config)
        stop.wait()

    caplog.set_level("INFO", logger="vagt.demo")
    assert run_demo(config, devices=25, duration=1, run_engine=engine) == 0
    assert handed[0].database.url != database_url and handed[0].alerts == ""
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)
    assert "event=demo_ignores_configuration database.url=" in caplog.text
    assert f"alerts={policy}" in caplog.text
    assert f"its database is its own, in {tmp_path / 'demo'}" in capsys.readouterr().out


def test_the_demo_takes_another_metrics_port_when_its_own_is_taken(
        database_url, tmp_path: Path, capsys):
    handed: list[Config] = []

    def engine(config: Config, stop: threading.Event) -> None:
        handed.append(config)
        stop.wait()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = load_config(None, env={"VAGT_METRICS_PORT": str(port),
                                        "VAGT_DATA_DIR": str(tmp_path)})
        assert run_demo(config, database=database_url, devices=20, duration=1,
                        run_engine=engine) == 0
    moved = handed[0].metrics_port
    assert moved not in (0, port)
    assert f"metrics at http://127.0.0.1:{moved}/metrics ({port} is in use)" \
        in capsys.readouterr().out


def test_each_demo_run_sends_new_traffic_and_prints_the_seed_that_repeats_it(
        database_url, tmp_path: Path, capsys):
    """The same traffic again would replay the last run's incidents, which the engine takes
    as copies: a second demo would show no alert for as long as the first ran."""
    seeds = []
    for options in (None, None, SimOptions(seed=7)):
        assert run_demo(demo_config(tmp_path), database=database_url, devices=20, duration=0.5,
                        run_engine=lambda _c, s: s.wait(), options=options) == 0
        said = re.search(r"traffic seed (\d+) \(the same traffic again: --seed (\d+)\)",
                         capsys.readouterr().out)
        assert said is not None and said[1] == said[2]
        seeds.append(int(said[1]))
    assert seeds[0] != seeds[1] and seeds[2] == 7


def test_a_demo_device_returned_or_lost_between_runs_stays_so_and_the_demo_runs_again(
        database_url, tmp_path: Path, capsys):
    """Someone walks the README's lifecycle on the demo's devices between two runs: the next
    run keeps what they did and starts, and registers the devices it did not have."""
    from vagt.devices import report_lost, return_device

    def run(devices: int) -> int:
        return run_demo(demo_config(tmp_path), database=database_url, devices=devices,
                        duration=0.5, run_engine=lambda _c, s: s.wait())

    assert run(20) == 0
    with psycopg.connect(database_url) as conn:
        lost, returned = (row[0] for row in conn.execute(
            "SELECT device_id FROM devices ORDER BY device_id LIMIT 2"))
        report_lost(conn, lost, actor="anna")
        return_device(conn, returned, actor="anna")
    capsys.readouterr()
    assert run(25) == 0
    assert "25 simulated devices in 19 municipalities (5 newly registered)" \
        in capsys.readouterr().out
    with psycopg.connect(database_url) as conn:
        statuses = dict(conn.execute("SELECT device_id, status FROM devices").fetchall())
    assert len(statuses) == 25
    assert statuses[lost] == "lost" and statuses[returned] == "in_stock"


def test_the_demo_stops_when_its_stop_event_is_set(database_url, tmp_path: Path, capsys):
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    started = time.monotonic()
    code = run_demo(demo_config(tmp_path), database=database_url, devices=20, duration=None,
                    run_engine=lambda _c, s: s.wait(), stop=stop)
    assert code == 0
    assert time.monotonic() - started < 15


def test_the_demo_stops_and_says_so_when_the_engine_fails(database_url, tmp_path: Path, capsys):
    def broken_engine(config: Config, stop: threading.Event) -> None:
        raise RuntimeError("the rules file is broken")

    code = run_demo(demo_config(tmp_path), database=database_url, devices=20, duration=30,
                    run_engine=broken_engine)
    assert code == 1
    assert "the engine failed: RuntimeError('the rules file is broken')" in capsys.readouterr().err


def open_alert(conn: psycopg.Connection, device_id: str) -> int:
    row = conn.execute(
        "INSERT INTO alerts (fingerprint, rule, device_id, summary, severity, priority, queue,"
        " opened_at, last_fired_at) VALUES (%s, 'stand_in', %s, %s, 'critical', 1, 'emergency',"
        " now(), now()) RETURNING id",
        (f"stand_in:{device_id}", device_id, f"alarm.fall from {device_id}")).fetchone()
    assert row is not None
    return int(row[0])


def printed_alerts(out: str) -> list[str]:
    return [line.split()[1] for line in out.splitlines() if line.startswith("ALERT")]


def test_an_alert_committed_after_a_later_one_was_printed_is_printed_too(
        database_url, tmp_path: Path, capsys):
    """The alarm lane commits within milliseconds while a bulk batch holding a lower alert
    id is still committing: the demo printed the higher id first, and must not then skip
    the lower one."""
    ids: list[int] = []

    def engine(config: Config, stop: threading.Event) -> None:
        with psycopg.connect(config.database.url) as bulk, \
                psycopg.connect(config.database.url, autocommit=True) as alarm:
            ids.append(open_alert(bulk, "SCL-000001"))   # the bulk batch, not yet committed
            ids.append(open_alert(alarm, "ALM-000001"))  # the alarm, committed at once
            stop.wait(3.0)                               # the demo prints it meanwhile
            bulk.commit()
        stop.wait()

    assert run_demo(demo_config(tmp_path), database=database_url, devices=20, duration=6,
                    run_engine=engine) == 0
    assert ids[0] < ids[1]
    assert printed_alerts(capsys.readouterr().out) == [f"#{ids[1]}", f"#{ids[0]}"]


def test_an_alert_the_engine_commits_while_it_stops_is_printed(
        database_url, tmp_path: Path, capsys):
    """Ctrl-C stops the demo's printing first and the engine after it, which commits the
    batch in hand: an alarm in it is printed before the demo ends."""
    ids: list[int] = []

    def engine(config: Config, stop: threading.Event) -> None:
        stop.wait()
        with psycopg.connect(config.database.url) as conn:
            ids.append(open_alert(conn, "ALM-000002"))

    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    assert run_demo(demo_config(tmp_path), database=database_url, devices=20, duration=None,
                    run_engine=engine, stop=stop) == 0
    assert printed_alerts(capsys.readouterr().out) == [f"#{ids[0]}"]


def test_the_demos_hint_runs_the_vagt_beside_it_when_the_path_finds_none(monkeypatch,
                                                                          tmp_path: Path):
    """scripts/demo runs .venv/bin/vagt without activating .venv: a hint saying `vagt ...`
    would be 'command not found' when pasted."""
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin")
    command = vagt_command()
    assert command != "vagt"
    ran = subprocess.run([command, "alerts", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert ran.returncode == 0 and "usage: vagt alerts" in ran.stdout


def test_the_demos_hint_says_vagt_when_the_path_finds_this_one(monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    assert vagt_command() == "vagt"


def test_an_alert_line_reads_left_to_right_as_an_operator_would():
    from datetime import UTC, datetime
    line = format_alert(42, datetime(2025, 11, 22, 9, 30, tzinfo=UTC), "emergency", 1,
                        "critical", "ALM-000017", "alarm.fall from ALM-000017")
    assert line.startswith("ALERT #42 ")
    opened = datetime(2025, 11, 22, 9, 30, tzinfo=UTC).astimezone()
    assert f"{opened:%Y-%m-%d %H:%M:%S}" in line
    assert line.index("P1") < line.index("emergency") < line.index("critical") \
        < line.index("ALM-000017") < line.index("alarm.fall")


# --- vagt demo, with the real engine -----------------------------------------------------------

def test_the_demo_with_the_real_engine_stores_the_simulated_readings(
        database_url, tmp_path: Path, capsys):
    """Registers, runs the real engine on amqtt (MQTT 3.1.1) and stores what the devices send.

    Not yet checked end to end: that an alarm becomes an alert within a second.
    """
    code = run_demo(demo_config(tmp_path), database=database_url, devices=100, duration=8,
                    options=SimOptions(seed=2),
                    run_engine=run_engine)
    out = capsys.readouterr().out
    assert code == 0
    with psycopg.connect(database_url) as conn:
        readings = conn.execute("SELECT count(*) FROM readings").fetchone()
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
    assert readings is not None and readings[0] > 0
    assert dead == (0,)
    assert "100 simulated devices in 19 municipalities" in out


def test_the_vendor_report_on_the_demos_database_counts_what_its_devices_sent(
        database_url, tmp_path: Path, capsys, monkeypatch):
    """The demo replays history (here the last 24 h) of devices with their citizens: the
    report on its database counts that time and what came in it (the devices were deployed
    when the history began, not when the demo started)."""
    import json
    from datetime import UTC, datetime, timedelta

    from vagt.app.cli import main

    assert run_demo(demo_config(tmp_path), database=database_url, devices=40, duration=6,
                    options=SimOptions(seed=2, history_h=24.0), run_engine=run_engine) == 0
    capsys.readouterr()
    monkeypatch.setenv("VAGT_DATABASE_URL", database_url)
    today = datetime.now(UTC).date()
    assert main(["report", "vendors", "--from", str(today - timedelta(days=2)),
                 "--to", str(today + timedelta(days=1)), "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert sum(g["devices"] for g in groups) == 40
    # 40 devices for a day with their citizens: 1.33 device-months
    assert sum(g["device_months"] for g in groups) > 1.3
    # and what they sent in it, all of it: how much passes in 6 s depends on the machine's
    # load (the heard share of a few minutes in a day rounds to 0.0 on a busy one)
    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT count(*) FILTER (WHERE metric NOT IN ('battery', "
                              "'signal')), count(*) FROM readings").fetchone()
    assert stored is not None and stored[1] > 0
    assert sum(g["measurements"] for g in groups) == stored[0]


def test_the_demo_serves_no_operator_api_where_the_configuration_names_one(
        database_url, tmp_path: Path, capsys, caplog):
    """VAGT_API_PORT names the operator API the call centre's systems read: a demo started
    where it is set neither answers there with the simulated fleet's alerts (while that
    engine is down) nor fails to bind it beside the engine serving it (here)."""
    handed: list[Config] = []

    def engine(config: Config, stop: threading.Event) -> None:
        handed.append(config)
        run_engine(config, stop)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = load_config(None, env={"VAGT_API_PORT": str(port), "VAGT_METRICS_PORT": "0",
                                        "VAGT_DATA_DIR": str(tmp_path)})
        caplog.set_level("INFO", logger="vagt")
        code = run_demo(config, database=database_url, devices=20, duration=3,
                        options=SimOptions(seed=2), run_engine=engine)
    assert code == 0 and handed[0].api_port == 0
    assert "address already in use" not in caplog.text
    assert f"event=demo_ignores_configuration api_port={port}" in caplog.text
