"""`vagt demo` and `vagt simulate`: simulated devices, and the whole engine with nothing installed.

The demo runs an embedded MQTT broker and an embedded PostgreSQL of its own, registers a
simulated fleet, runs the engine with the built-in alert policy and prints alerts as they open.
It never touches a configured database, broker or webhook: it may be run anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from vagt.app import db
from vagt.app.config import Config, MqttConfig, redact_url
from vagt.app.embedded import embedded_broker, embedded_postgres, free_port, port_is_free
from vagt.devices import import_csv
from vagt.sim import (
    Pacing,
    PublishError,
    PublishStats,
    SimConfig,
    SimDevice,
    SimMessage,
    Simulation,
    fleet_csv,
    make_fleet,
    publish,
)
from vagt.text import shown

log = logging.getLogger("vagt.demo")

EngineRunner = Callable[[Config, threading.Event], None]

NEW_ALERTS = ("SELECT id, opened_at, queue, priority, severity, device_id, summary "
              "FROM alerts WHERE id > %s AND id <> ALL(%s::bigint[]) ORDER BY id")
STORED = ("SELECT (SELECT count(*) FROM readings), (SELECT count(*) FROM dead_letters), "
          "(SELECT coalesce(max(id), 0) FROM alerts)")


def demo_rate(devices: int) -> float:
    """Messages a second in the demo: each device about every 20 s, and at least 5."""
    return max(5.0, devices / 20)


@dataclasses.dataclass(frozen=True)
class SimOptions:
    """How the simulated fleet behaves and how its time runs: it starts `history_h` hours ago
    and runs `speed` times real time (None: as fast as the rate allows) until it reaches the
    present, then in step with it; incident and fault rates are `faults` times the defaults."""

    seed: int | None = 1  # None: a new one each run (the demo's default)
    speed: float | None = None
    history_h: float = 24.0
    faults: float = 1.0

    def simulation(self, fleet: list[SimDevice], topic_root: str,
                   start: float | None = None) -> Simulation:
        """The fleet's traffic from `start` (default: `history_h` hours ago) on."""
        return Simulation(fleet, seed=self.run_seed(),
                          start=self.start() if start is None else start,
                          topic_root=topic_root, config=SimConfig().with_faults(self.faults))

    def start(self) -> float:
        """When simulated time begins, if it begins now: `history_h` hours ago."""
        return time.time() - self.history_h * 3600

    def run_seed(self) -> int:
        """The seed of this run: 1 when none was chosen."""
        return self.seed if self.seed is not None else 1

    def with_a_seed(self) -> SimOptions:
        """These options with a seed of their own if they have none."""
        if self.seed is not None:
            return self
        return dataclasses.replace(self, seed=secrets.randbelow(1_000_000))


# The demo: three days of history to replay before it reaches the present, and incidents and
# faults 20 times as often as a real fleet has them, so that there is something to see; new
# traffic each run, since the same seed again would replay the incidents of the last run,
# which the engine takes as the copies they are, and no new alert would open.
DEMO_OPTIONS = SimOptions(seed=None, history_h=72.0, faults=20.0)
# ... while the fleet is the same every run: its database keeps the registry of the last run,
# and a device deployed there to another citizen could not be registered again.
DEMO_FLEET_SEED = 1


# --- vagt simulate ------------------------------------------------------------------------------

def run_simulate(url: str, topic_root: str, devices: int, rate: float, duration: float | None,
                 options: SimOptions, fleet_file: Path | None = None, protocol: int = 4) -> int:
    """Send a simulated fleet's traffic to any broker, at most `rate` messages a second, until
    `duration` seconds have passed since the broker took the connection, or Ctrl-C. The
    devices must be registered: `fleet_file` writes them as a CSV for `vagt devices import`;
    with a `duration` of 0, that is all, and no broker is needed."""
    fleet = make_fleet(devices, options.run_seed())
    only_the_file = duration is not None and duration <= 0
    if fleet_file is not None:
        fleet_file.write_text(fleet_csv(fleet), encoding="utf-8")
        print(f"wrote the simulated fleet to {fleet_file}; register it with "
              f"`vagt devices import {fleet_file}`"
              + ("" if only_the_file else " (until then the engine keeps their messages as "
                 "unknown_device dead letters; --duration 0 writes the file and sends nothing)"))
    if only_the_file:
        return 0
    sim = options.simulation(fleet, topic_root)
    speed = "as fast as the rate allows" if options.speed is None else f"{options.speed:g}x"
    print(f"vagt simulate: {devices} devices, at most {rate:g} messages/s to {redact_url(url)} "
          f"under {topic_root}/, simulated time from {options.history_h:g} h ago at {speed} "
          "until the present, then in real time; Ctrl-C stops", flush=True)
    stats = PublishStats()
    try:
        asyncio.run(publish(url, sim.messages(), rate, pacing=Pacing(sim.start, options.speed),
                            duration=duration, protocol=protocol, stats=stats))
    except KeyboardInterrupt:
        print(f"interrupted: {stats.acknowledged} messages acknowledged by the broker")
        return 130
    except PublishError as e:
        print(f"vagt simulate: {e}", file=sys.stderr)
        return 1
    print(f"sent {stats.acknowledged} messages, every one acknowledged by the broker")
    return 0


def _deadline(duration: float | None) -> float | None:
    return None if duration is None else time.monotonic() + duration


# --- vagt demo ----------------------------------------------------------------------------------

def run_demo(config: Config, *, devices: int, duration: float | None,
             run_engine: EngineRunner, stop: threading.Event | None = None,
             options: SimOptions | None = None, database: str | None = None) -> int:
    """Broker, database, simulated devices and `run_engine`, all in this process, printing
    each new alert and a summary every second, until `stop` (or Ctrl-C) or `duration` s.

    The database is the demo's own embedded one (in `data_dir/demo`), whatever the
    configuration names; `database` gives another (tests, which have one ready).
    Returns 0, or 1 if the engine or the simulator failed.
    """
    stop = stop if stop is not None else threading.Event()
    options = options if options is not None else DEMO_OPTIONS
    options = options.with_a_seed()
    fleet = make_fleet(devices, DEMO_FLEET_SEED)
    rate = demo_rate(devices)
    sent = PublishStats()
    workers: list[_Worker] = []
    _say_what_is_ignored(config)
    try:
        with contextlib.ExitStack() as stack:
            mqtt_url = stack.enter_context(embedded_broker(free_port()))
            db_url = stack.enter_context(
                contextlib.nullcontext(database) if database else _database(config))
            db.migrate(db_url)
            # deployed when their history begins, so that it is their citizens' time (the
            # vendor report counts only that); a fleet the database already has keeps the
            # deployments of the run that registered it, whose history began earlier
            start = options.start()
            created = register_fleet(db_url, fleet, at=start)
            print(f"vagt demo: {len(fleet)} simulated devices in 19 municipalities "
                  f"({created} newly registered), {rate:g} messages/s; Ctrl-C stops", flush=True)
            print(f"vagt demo: traffic seed {options.seed} (the same traffic again: "
                  f"--seed {options.seed})", flush=True)
            if not database:
                where = demo_data_dir(config)
                print(f"vagt demo: its database is its own, in {where}; see it with "
                      f"`VAGT_DATA_DIR={where} {vagt_command()} alerts list`", flush=True)
            engine_config = demo_engine_config(config, mqtt_url, db_url)
            engine_config = dataclasses.replace(
                engine_config, metrics_port=_metrics_port(config.metrics_host, config.metrics_port))
            sim = options.simulation(fleet, config.mqtt.topic_root, start)
            alerts = _AlertPrinter(db_url)
            # entered in this order, stopped in the reverse: devices, engine, the alerts the
            # engine committed while it stopped (its last batch may hold an alarm), database,
            # broker
            stack.callback(alerts.print_last)
            workers.append(stack.enter_context(
                _Worker("engine", functools.partial(run_engine, engine_config))))
            workers.append(stack.enter_context(
                _Worker("simulator", functools.partial(_simulate, mqtt_url, sim, options, rate, sent))))
            _report_until(db_url, stop, _deadline(duration), sent, workers, alerts)
    except KeyboardInterrupt:
        print("vagt demo: stopped", flush=True)
    return _outcome(workers)


def demo_engine_config(config: Config, mqtt_url: str, db_url: str) -> Config:
    """The configuration the engine runs with: the embedded broker (MQTT 3.1.1, no shared
    subscriptions), the demo's database, the built-in alert policy, which delivers
    nowhere, and no operator API: a configured policy's webhooks would send the simulated
    fleet's alerts to the call centre's real systems, and a configured API port is where
    those systems read alerts (or where the engine serving them already listens)."""
    return dataclasses.replace(
        config,
        mqtt=dataclasses.replace(config.mqtt, url=mqtt_url, protocol=4, share_group=""),
        database=dataclasses.replace(config.database, url=db_url),
        alerts="", api_port=0)


def vagt_command() -> str:
    """How to run vagt from here: `vagt` when the PATH finds this one, else the script beside
    this interpreter (`.venv/bin/vagt` after scripts/demo, which activates no environment)."""
    beside = Path(sys.executable).parent / "vagt"
    on_path = shutil.which("vagt")
    if not beside.is_file() or (on_path is not None
                                and Path(on_path).resolve() == beside.resolve()):
        return "vagt"
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


def _say_what_is_ignored(config: Config) -> None:
    """One log line naming the configured settings the demo leaves alone, so that nobody
    thinks the demo's devices and alerts went where the configuration points."""
    ignored = []
    if config.database.url:
        ignored.append(f"database.url={redact_url(config.database.url)}")
    if config.mqtt.url != MqttConfig().url:
        ignored.append(f"mqtt.url={redact_url(config.mqtt.url)}")
    if config.alerts:
        ignored.append(f"alerts={config.alerts}")
    if config.api_port:
        ignored.append(f"api_port={config.api_port}")
    if ignored:
        log.info("event=demo_ignores_configuration %s note=the demo uses its own database "
                 "and broker and the built-in alert policy, and serves no API",
                 " ".join(ignored))


def _metrics_port(host: str, port: int) -> int:
    """The configured metrics port, or, when something (an engine) listens there, a free one:
    the demo should run beside whatever runs on the machine."""
    if port == 0 or port_is_free(host, port):
        return port
    free = free_port()
    print(f"vagt demo: metrics at http://{host}:{free}/metrics ({port} is in use)", flush=True)
    return free


def register_fleet(db_url: str, fleet: list[SimDevice], at: float | None = None) -> int:
    """Register the simulated devices the registry does not have yet, deployed to their
    citizens at `at` (epoch seconds; default now); how many were new. Those it has stay as
    they are: someone trying the lifecycle on the demo's database may have returned, moved,
    lost or retired one, and importing the fleet as it began would refuse every later run."""
    when = None if at is None else datetime.fromtimestamp(at, UTC)
    with psycopg.connect(db_url) as conn:
        known = {row[0] for row in conn.execute(
            "SELECT device_id FROM devices WHERE device_id = ANY(%s)",
            ([d.device_id for d in fleet],))}
        new = [d for d in fleet if d.device_id not in known]
        if not new:
            return 0
        return import_csv(conn, fleet_csv(new), actor="demo", at=when).created


def demo_data_dir(config: Config) -> Path:
    """Where the demo keeps its database: apart from the embedded database `vagt run` uses
    when no database is configured, so a demo never writes into an engine's data."""
    return Path(config.data_dir) / "demo"


def _database(config: Config) -> contextlib.AbstractContextManager[str]:
    return embedded_postgres(demo_data_dir(config))


def _outcome(workers: list[_Worker]) -> int:
    failed = [w for w in workers if w.failure is not None]
    for w in failed:
        print(f"vagt demo: the {w.name} failed: {w.failure!r}", file=sys.stderr)
    return 1 if failed else 0


def _simulate(url: str, sim: Simulation, options: SimOptions, rate: float,
              stats: PublishStats, stop: threading.Event) -> None:
    messages: Iterator[SimMessage] = sim.messages()
    asyncio.run(publish(url, messages, rate, pacing=Pacing(sim.start, options.speed),
                        stop=stop.is_set, protocol=4, stats=stats))


class _Worker:
    """`target(stop)` in a thread of its own; leaving the block sets `stop` and waits for it."""

    def __init__(self, name: str, target: Callable[[threading.Event], None]) -> None:
        self.name = name
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._target = target
        self._thread = threading.Thread(target=self._run, name=f"vagt-demo-{name}", daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> _Worker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        if self._thread.is_alive():
            log.warning("event=demo_worker_still_running worker=%s waited_s=60", self.name)

    def _run(self) -> None:
        try:
            self._target(self._stop)
        except Exception as e:  # reported when the demo stops
            log.exception("event=demo_worker_failed worker=%s", self.name)
            self.failure = e


class _AlertPrinter:
    """Prints each alert committed since the demo began, once. Ids are not committed in their
    order: the alarm lane commits an alarm within milliseconds while a bulk batch that took a
    lower id is still committing, so a lower id may come after a higher one was printed."""

    def __init__(self, db_url: str) -> None:
        self._db_url = db_url
        with psycopg.connect(db_url, autocommit=True) as conn:
            self._before = _stored(conn)[2]
        self._printed: list[int] = []

    def print_new(self, conn: psycopg.Connection) -> None:
        for row in conn.execute(NEW_ALERTS, (self._before, self._printed)).fetchall():
            print(format_alert(*row), flush=True)
            self._printed.append(row[0])

    def print_last(self) -> None:
        """The alerts committed since the last print: called once the engine has stopped."""
        try:
            with psycopg.connect(self._db_url, autocommit=True) as conn:
                self.print_new(conn)
        except psycopg.Error as e:
            log.warning("event=demo_last_alerts_unread error=%r", e)


def _report_until(db_url: str, stop: threading.Event, deadline: float | None,
                  sent: PublishStats, workers: list[_Worker], alerts: _AlertPrinter) -> None:
    """Every second: the alerts opened since, and one line of counts and rates; until `stop`,
    the deadline, or a worker ending (which it does only when it fails)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        readings_before, dead_before, _ = _stored(conn)
        started = previous = time.monotonic()
        seen = _Counts(0, 0, 0)
        while not stop.wait(1.0):
            alerts.print_new(conn)
            readings, dead, _ = _stored(conn)
            now = time.monotonic()
            counts = _Counts(sent.sent, readings - readings_before, dead - dead_before)
            print(format_summary(now - started, counts, seen, now - previous), flush=True)
            seen, previous = counts, now
            if (deadline is not None and now >= deadline) or not all(w.running for w in workers):
                return


@dataclasses.dataclass(frozen=True)
class _Counts:
    sent: int
    readings: int
    dead: int


def _stored(conn: psycopg.Connection) -> tuple[int, int, int]:
    row = conn.execute(STORED).fetchone()
    return (int(row[0]), int(row[1]), int(row[2])) if row is not None else (0, 0, 0)


def format_alert(alert_id: int, opened_at: datetime, queue: str, priority: int, severity: str,
                 device_id: str | None, summary: str) -> str:
    """One alert as a line: id, local date and time, priority, queue, severity, device,
    summary. The date too: the demo's devices replay days of history."""
    return (f"ALERT #{alert_id:<5} {opened_at.astimezone():%Y-%m-%d %H:%M:%S}  P{priority} "
            f"{queue:<10} {severity:<8} {device_id or '-':<11} {shown(summary)}")


def format_summary(elapsed: float, counts: _Counts, before: _Counts, seconds: float) -> str:
    def rate(now: int, then: int) -> str:
        return f"{(now - then) / seconds:.0f}/s" if seconds > 0 else "-"

    return (f"-- {elapsed:4.0f} s: {counts.sent} messages sent ({rate(counts.sent, before.sent)}),"
            f" {counts.readings} readings stored ({rate(counts.readings, before.readings)}),"
            f" {counts.dead} dead letters")
