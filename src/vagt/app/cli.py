"""The `vagt` command: run the engine, migrate, manage devices and alerts, demo and simulate."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from vagt import __version__
from vagt.app.config import LOG_FORMAT, Config, ConfigError, load_config
from vagt.text import shown

if TYPE_CHECKING:
    from vagt.app.demo import SimOptions
    from vagt.rules import Rule

log = logging.getLogger("vagt")


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code. A reader that stopped reading (`vagt devices list |
    head -3`) ends it quietly, as it ends any Unix tool: exit code 1, the code Python's
    documentation gives for it (signal module, "Note on SIGPIPE"), and nothing on stderr."""
    try:
        result = _main(argv)
        sys.stdout.flush()   # here, not at exit, where a closed pipe is only "ignored" (120)
    except BrokenPipeError:
        if not _stdout_closed():
            raise   # a socket or a child's pipe: a fault to see, not a reader gone
        # Python flushes stdout again at exit: what is left in its buffer goes nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return result


def _stdout_closed() -> bool:
    """Whether standard output is a pipe or socket whose reader has gone (poll says POLLERR
    on a pipe's write end with no reader left, POLLHUP on a socket closed by its peer)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        events = poller.poll(0)
    except (OSError, ValueError):   # no file descriptor (a test's captured stdout)
        return False
    return any(mask & (select.POLLERR | select.POLLHUP) for _, mask in events)


def _main(argv: list[str] | None) -> int:
    from vagt.app import heap

    heap.limit_arenas()     # before any thread: every command's (a server's, the engine's)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"vagt: configuration error: {e}", file=sys.stderr)
        return 2
    result: int = args.func(args, config)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vagt", description=__doc__)
    p.add_argument("--config", help="a TOML configuration file (VAGT_* variables win over it)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"vagt {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    run = sub.add_parser("run", help="run the engine until SIGTERM or Ctrl-C (SIGHUP reloads "
                                     "the rules)")
    run.set_defaults(func=cmd_run)

    dbp = sub.add_parser("db", help="database schema")
    dbsub = dbp.add_subparsers(metavar="ACTION", required=True)
    mig = dbsub.add_parser("migrate", help="apply the numbered migrations not yet applied")
    mig.set_defaults(func=cmd_db_migrate)
    prune = dbsub.add_parser("prune", help="delete readings, events and dead letters older "
                                           "than their retention and fold the vendor report's "
                                           "old hourly counts into days (the engine does it "
                                           "daily)")
    prune.add_argument("--actor", help="who prunes, for the audit log (default: your user "
                                       "name)")
    prune.set_defaults(func=cmd_db_prune)

    from vagt.alerts import accounts_cli
    from vagt.alerts import cli as alerts_cli
    from vagt.devices import cli as devices_cli

    for module in (devices_cli, alerts_cli, accounts_cli):
        before = set(sub.choices)
        module.add_parser(sub)
        for name in set(sub.choices) - before:
            _wrap_db_handlers(sub.choices[name])

    fleet = sub.add_parser("fleet", help="the fleet's state: overdue, offline, low battery, "
                                         "counts by municipality, vendor, model, type")
    from vagt.devices import fleet_cli

    fleet_cli.add_arguments(fleet)
    fleet.set_defaults(func=cmd_fleet)

    report = sub.add_parser("report", help="reports for the service centre")
    rpsub = report.add_subparsers(metavar="REPORT", required=True)
    vendors = rpsub.add_parser(
        "vendors", help="how each vendor's or model's devices behaved while with citizens "
                        "over a period: faults, implausible readings, contact, battery")
    vendors.add_argument("--from", dest="start", required=True,
                         help="device time to start at: ISO 8601 (UTC unless a zone is "
                              "given, e.g. 2026-01-01) or epoch seconds")
    vendors.add_argument("--to", dest="end", required=True,
                         help="device time to stop before (not included); a time after now "
                              "means now")
    vendors.add_argument("--by", choices=("vendor", "model"), default="vendor",
                         help="one row per vendor (default) or per vendor and model")
    vendors.add_argument("--municipality", default=None,
                         help="only the time devices spent with citizens of this municipality")
    vendors.add_argument("--low-battery", type=float, default=None, metavar="PERCENT",
                         help="a last battery level below this is low (default: the "
                              "battery_low rule's threshold, else 15)")
    vendors.add_argument("--json", action="store_true", help="print JSON")
    vendors.set_defaults(func=cmd_report_vendors)

    rules = sub.add_parser("rules", help="rule files")
    rsub = rules.add_subparsers(metavar="ACTION", required=True)
    check = rsub.add_parser("check", help="validate a rules file or folder")
    check.add_argument("path", nargs="?", default=None,
                       help="a rules file or folder (default: the configured rules)")
    check.set_defaults(func=cmd_rules_check)
    bt = rsub.add_parser("backtest", help="replay stored readings and events through rules "
                                          "and count the alerts they would open and clear")
    bt.add_argument("--rules", default=None,
                    help="a rules file or folder (default: the configured rules)")
    bt.add_argument("--from", dest="start", required=True,
                    help="time to start at: ISO 8601 (UTC unless a zone is given) or epoch "
                         "seconds; the rules take rows by device time, the silence and "
                         "clock sweep by when they reached us")
    bt.add_argument("--to", dest="end", required=True, help="time to stop before")
    bt.add_argument("--database-url", default=None,
                    help="the database to read (default: the configured one)")
    bt.add_argument("--batch", type=int, default=5000,
                    help="rows per replayed batch (default: 5000)")
    bt.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bt.set_defaults(func=cmd_rules_backtest)

    privacy = sub.add_parser("privacy", help="where the database holds a CPR number")
    psub = privacy.add_subparsers(metavar="ACTION", required=True)
    scan = psub.add_parser("scan", help="report the rows, by table and column, that hold "
                                        "something shaped like a CPR number (never the "
                                        "value); exit 1 if any do")
    scan.add_argument("--json", action="store_true", help="print JSON instead of a table")
    scan.set_defaults(func=cmd_privacy_scan)
    scrub = psub.add_parser("scrub", help="replace what the scan finds with "
                                          "'[cpr removed]', auditing each changed row")
    scrub.add_argument("--actor", required=True, help="who scrubs, for the audit log")
    scrub.add_argument("--reason", required=True, help="why, for the audit log")
    scrub.add_argument("--dry-run", action="store_true",
                       help="report what would change; change nothing")
    scrub.add_argument("--json", action="store_true", help="print JSON instead of a table")
    scrub.set_defaults(func=cmd_privacy_scrub)

    demo = sub.add_parser("demo", help="embedded broker, database, simulated devices and engine")
    demo.add_argument("--devices", type=_count, default=300,
                      help="how many simulated devices (default: 300)")
    demo.add_argument("--duration", type=float, default=None, help="seconds (default: until Ctrl-C)")
    _simulation_options(demo, DEMO_DEFAULTS)
    demo.set_defaults(func=cmd_demo)

    api = sub.add_parser("api", help="serve the operator REST API (OpenAPI at /docs)")
    api.add_argument("--host", default=None, help="default: api_host (127.0.0.1)")
    api.add_argument("--port", type=int, default=None, help="default: api_port, else 8080")
    api.set_defaults(func=cmd_api)

    sim = sub.add_parser("simulate", help="send simulated device traffic to a broker")
    sim.add_argument("--devices", type=_count, default=300,
                     help="how many simulated devices (default: 300)")
    sim.add_argument("--rate", type=_positive, default=100.0,
                     help="messages per second, at most (default: 100)")
    sim.add_argument("--duration", type=float, default=None,
                     help="seconds (default: forever); 0 with --fleet-csv: write the file, "
                          "send nothing")
    _simulation_options(sim, SIMULATE_DEFAULTS)
    sim.add_argument("--fleet-csv", type=Path, default=None,
                     help="also write the simulated fleet as a devices CSV to this file")
    sim.set_defaults(func=cmd_simulate)
    return p


@dataclasses.dataclass(frozen=True)
class _SimHelp:
    """What the help says of the defaults of vagt.app.demo's SimOptions and DEMO_OPTIONS
    (not imported here: it is slow)."""

    seed: str
    history_h: str
    faults: str


SIMULATE_DEFAULTS = _SimHelp(
    seed="the same seed gives the same fleet and the same messages (default: 1)",
    history_h="24", faults="1")
DEMO_DEFAULTS = _SimHelp(
    seed="the seed of the traffic, to repeat a run (default: a new one each run, printed "
         "at the start); the fleet is the same every run",
    history_h="72", faults="20")


def _simulation_options(parser: argparse.ArgumentParser, defaults: _SimHelp) -> None:
    parser.add_argument("--seed", type=int, default=None, help=defaults.seed)
    parser.add_argument("--history", type=_not_negative, default=None, metavar="HOURS",
                        help=f"simulated time starts this many hours ago "
                             f"(default: {defaults.history_h})")
    parser.add_argument("--speed", type=_positive, default=None,
                        help="simulated seconds per real second until the present is reached "
                             "(default: as fast as the rate allows); then real time")
    parser.add_argument("--faults", type=_not_negative, default=None,
                        help=f"incident and fault rates, times the defaults "
                             f"(default: {defaults.faults})")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def _positive(text: str) -> float:
    try:
        value = _not_negative(text)
    except argparse.ArgumentTypeError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def _not_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of 0 or more, got {text}")
    return value


def _wrap_db_handlers(parser: argparse.ArgumentParser) -> None:
    """The devices/alerts handlers take (args, conninfo); give them the configured database."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _wrap_db_handlers(child)
    handler = parser.get_default("handler")
    if handler is not None:
        parser.set_defaults(func=lambda args, config, h=handler: _with_database(args, config, h))
    policy_handler = parser.get_default("policy_handler")
    if policy_handler is not None:  # needs the alert policy, not the database
        parser.set_defaults(func=lambda args, config, h=policy_handler: h(
            args, config.alerts, config.rules))


def _install_alert_policy(config: Config) -> None:
    """Operators' commands check resolution codes etc. against the configured policy."""
    from vagt.alerts.policy import install_policy, load_policy

    install_policy(load_policy(config.alerts or None, secrets=False))


def _with_database(args: argparse.Namespace, config: Config, handler: object) -> int:
    """Call handler(args, url), or handler(args, url, config) for one that says it needs
    the configuration (`handler_takes_config`: the catalogue, the topic root)."""
    from vagt.alerts.policy import PolicyError

    try:
        _install_alert_policy(config)
    except PolicyError as e:
        print(f"vagt: {e}", file=sys.stderr)
        return 2
    refused = _no_database(config)
    if refused is not None:
        return refused
    with database_url(config) as url:
        extra = (config,) if getattr(args, "handler_takes_config", False) else ()
        result: int = handler(args, url, *extra)  # type: ignore[operator]
        return result


def _no_database(config: Config) -> int | None:
    """Exit code 2 and why, for a command run with no database configured and no embedded
    one made yet (None: there is one to use)."""
    if config.database.url or embedded_database_exists(config):
        return None
    from vagt.app.cli_support import fail

    return fail(f"no VAGT_DATABASE_URL is set, and there is no embedded database in "
                f"{embedded_pgdata(config)} yet: set VAGT_DATABASE_URL to the engine's "
                f"database, or create the embedded one with `vagt db migrate`")


def _reads_the_database(handler: Callable[[argparse.Namespace, Config], int]
                        ) -> Callable[[argparse.Namespace, Config], int]:
    """For a command that works on the engine's database: none configured and none embedded
    is said as such (an empty embedded one is not made), and the database away or without
    vagt's schema is one line and exit code 2 (`cli_support.reports_errors`), as the
    devices and alerts commands do; a tool checking the exit code (`privacy scan`: 1 when
    it finds something) can tell them apart."""
    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace, config: Config) -> int:
        from vagt.app.cli_support import reports_errors
        from vagt.app.device_hours import NotMigrated

        given = getattr(args, "database_url", None)
        refused = None if given else _no_database(config)
        if refused is not None:
            return refused
        return reports_errors(NotMigrated)(handler)(args, config)

    return wrapped


def embedded_pgdata(config: Config) -> Path:
    return Path(config.data_dir).resolve() / "postgres"


def embedded_database_exists(config: Config) -> bool:
    """An operator's command with no database configured would otherwise make an empty
    embedded one, and then say only that it has no schema."""
    return (embedded_pgdata(config) / "PG_VERSION").exists()


@contextlib.contextmanager
def database_url(config: Config, *, serving: bool = False) -> Iterator[str]:
    """The configured database, or the embedded one in the data directory. Its start and
    stop are logged at INFO for a process that `serving` (the engine, the API), at DEBUG
    for a one-shot command (`vagt alerts list`), whose output they would only clutter."""
    if config.database.url:
        yield config.database.url
        return
    from vagt.app.embedded import embedded_postgres

    level = logging.INFO if serving else logging.DEBUG
    with embedded_postgres(Path(config.data_dir), log_level=level) as url:
        yield url


def _stop_on_signals(*, hangup: bool = False) -> threading.Event:
    """SIGTERM and Ctrl-C (and with `hangup`, a closed terminal's SIGHUP) set the event: the
    process then stops its servers itself; killed by the default handler, it would leave
    the embedded PostgreSQL running."""
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("event=signal_received signal=%s note=finishing_batch_in_hand",
                 signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    if hangup:
        signal.signal(signal.SIGHUP, handle)
    return stop


def _reload_on_sighup() -> threading.Event:
    """SIGHUP asks the engine to read its rules again (the lanes go on meanwhile)."""
    reload = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("event=signal_received signal=SIGHUP note=reloading_rules")
        reload.set()

    signal.signal(signal.SIGHUP, handle)
    return reload


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from vagt.alerts.policy import PolicyError
    from vagt.app.engine import run_engine
    from vagt.app.metrics import MetricsPortError
    from vagt.devices.catalogue import CatalogueError
    from vagt.rules import RuleConfigError

    stop = _stop_on_signals()
    reload = _reload_on_sighup()
    try:
        with database_url(config, serving=True) as url:
            run_engine(dataclasses.replace(
                config, database=dataclasses.replace(config.database, url=url)), stop,
                reload=reload)
    except (RuleConfigError, CatalogueError, PolicyError, MetricsPortError) as e:
        print(f"vagt: {e}", file=sys.stderr)
        return 2
    return 0


@_reads_the_database
def cmd_fleet(args: argparse.Namespace, config: Config) -> int:
    import psycopg

    from vagt.devices import fleet_cli
    from vagt.devices.catalogue import CatalogueError, load_catalogue

    try:
        catalogue = load_catalogue(config.catalogue or None)
    except CatalogueError as e:
        print(f"vagt: {e}", file=sys.stderr)
        return 2
    with database_url(config) as url, psycopg.connect(url) as conn:
        print(fleet_cli.render(fleet_cli.query(conn, catalogue, args), args))
    return 0


@_reads_the_database
def cmd_report_vendors(args: argparse.Namespace, config: Config) -> int:
    import time

    import psycopg

    from vagt.app import device_hours, retention
    from vagt.devices import report
    from vagt.devices.catalogue import CatalogueError, load_catalogue
    from vagt.rules import RuleConfigError, load_rules

    try:
        catalogue = load_catalogue(config.catalogue or None)
        low = args.low_battery if args.low_battery is not None else _low_battery(
            load_rules(config.rules or None))
    except (CatalogueError, RuleConfigError) as e:
        print(f"vagt: {e}", file=sys.stderr)
        return 2
    times = _from_to(args)
    if times is None:
        return 2
    start, end = times
    end = min(end, time.time())   # what has not happened yet is expected of no device
    if end <= start:
        print("vagt: --to must be after --from, and --from before now", file=sys.stderr)
        return 2
    period = report.Period(start, end, args.municipality)
    with database_url(config) as url, psycopg.connect(url, autocommit=True) as conn:
        device_hours.refresh(conn, start, end)
        weeks = device_hours.flavour(conn) == "plain"   # TimescaleDB keeps days, not weeks
        table = report.summary(report.per_device(conn, catalogue, period, weeks), args.by, low,
                               marks_kept=start >= retention.readings_horizon(conn))
    print(report.render(table, period, args.json, low))
    return 0


def _from_to(args: argparse.Namespace) -> tuple[float, float] | None:
    """--from and --to in epoch seconds; None, and why on stderr, if either is no time."""
    from vagt.app.backtest import parse_time

    try:
        return parse_time(args.start), parse_time(args.end)
    except ValueError as e:
        print(f"vagt: --from/--to must be ISO 8601 times or epoch seconds: {e}", file=sys.stderr)
        return None


def _low_battery(rules: list[Rule]) -> float:
    """The threshold of the first rule that fires on a battery level below a value."""
    from vagt.devices.report import LOW_BATTERY

    for r in rules:
        if r.kind == "threshold" and r.metric == "battery" and r.below is not None:
            return float(r.below)
    return LOW_BATTERY


def cmd_api(args: argparse.Namespace, config: Config) -> int:
    """The API alone, with its own /metrics; `vagt run` serves it too when api_port is set."""
    import os

    import uvicorn
    from fastapi import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from vagt.alerts.api.app import create_app
    from vagt.alerts.policy import PolicyError, load_policy
    from vagt.alerts.silence_scope import install_rule_book
    from vagt.app import db
    from vagt.app.metrics import EngineMetrics
    from vagt.rules import RuleConfigError, load_rules

    try:
        policy = load_policy(config.alerts or None, os.environ, secrets=False)
        # silences are judged by the rules the engine runs: which of their alerts are critical
        install_rule_book(load_rules(config.rules or None))
    except (PolicyError, RuleConfigError) as e:
        print(f"vagt: {e}", file=sys.stderr)
        return 2
    _install_alert_policy(config)
    metrics = EngineMetrics()
    with database_url(config, serving=True) as url:
        db.migrate(url)
        with db.open_pool(url, config.database.pool_min, config.database.pool_max) as pool:
            app = create_app(pool, policy, observer=metrics)

            # its own only: the engine's families here would say 0 for what the engine does
            # (a rule tick never done, alerting on this target as on the engine's)
            served = metrics.api_registry()

            @app.get("/metrics", include_in_schema=False)
            def exposition() -> Response:
                return Response(generate_latest(served), media_type=CONTENT_TYPE_LATEST)

            port = args.port or config.api_port or 8080
            log.info("event=api_listening host=%s port=%d", args.host or config.api_host, port)
            uvicorn.run(app, host=args.host or config.api_host, port=port, log_config=None,
                        access_log=False)
    return 0


def cmd_db_migrate(args: argparse.Namespace, config: Config) -> int:
    import psycopg

    from vagt.app import db
    from vagt.app.cli_support import unreachable

    with database_url(config) as url:
        try:
            applied = db.migrate(url)
        except psycopg.OperationalError as e:
            return unreachable(url, e)
    print("\n".join(f"applied {name}" for name in applied) or "the schema is up to date")
    return 0


@_reads_the_database
def cmd_db_prune(args: argparse.Namespace, config: Config) -> int:
    import psycopg

    from vagt.app import retention
    from vagt.app.cli_support import cli_login, fail, login_name
    from vagt.devices.actions import checked_actor
    from vagt.devices.errors import DeviceError

    try:   # before anything goes: a prune the audit log cannot name its actor of is none
        actor = checked_actor(args.actor or login_name() or "")
    except DeviceError as e:
        return fail(f"{e} (--actor)")
    with database_url(config) as url:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                done = retention.prune_if_first(conn, before=lambda: retention.audit_prune_asked(
                    conn, actor, cli_login()))
                if done is not None:
                    retention.audit_prune(conn, done, actor, cli_login())
        except psycopg.errors.UndefinedTable:
            return fail("the database has no vagt schema yet: run `vagt db migrate`")
    if done is None:
        return fail("another process is pruning now (an engine does it daily); try later")
    print(retention.describe(done))
    return 0


@_reads_the_database
def cmd_privacy_scan(args: argparse.Namespace, config: Config) -> int:
    import orjson
    import psycopg

    from vagt.app.cli_support import format_table
    from vagt.app.privacy_scan import SHOWN, scan

    with database_url(config) as url, psycopg.connect(url) as conn:
        found = scan(conn)
    if args.json:
        print(orjson.dumps([f.to_json() for f in found]).decode())
    elif not found:
        print("no column holds anything shaped like a CPR number")
    else:
        print(format_table(["table", "column", "rows", f"keys (the first {SHOWN})"],
                           [[f.table, f.column, str(f.rows), " ".join(f.keys)]
                            for f in found]))
    return 1 if found else 0


@_reads_the_database
def cmd_privacy_scrub(args: argparse.Namespace, config: Config) -> int:
    import orjson
    import psycopg

    from vagt.app.cli_support import cli_login, format_table
    from vagt.app.privacy_scrub import ScrubRefused, scrub
    from vagt.privacy import HoldsCpr

    try:
        with database_url(config) as url, psycopg.connect(url) as conn:
            done = scrub(conn, args.actor, args.reason, dry_run=args.dry_run,
                         via=cli_login())
    except (ScrubRefused, HoldsCpr) as e:
        print(f"vagt: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps([d.to_json() for d in done]).decode())
    elif not done:
        print("no column holds anything shaped like a CPR number")
    else:
        changed = "rows to change" if args.dry_run else "rows changed"
        print(format_table(["table", "column", changed, "masked", "left (a key: rename it)"],
                           [[d.table, d.column, str(d.rows), str(d.masked), str(d.left)]
                            for d in done]))
    # 1: rows still hold one (in a key column), which the scan goes on reporting
    return 1 if any(d.left for d in done) else 0


def cmd_rules_check(args: argparse.Namespace, config: Config) -> int:
    from vagt.rules import RuleConfigError, load_rules

    path = args.path or config.rules or None
    try:
        rules = load_rules(path)
    except RuleConfigError as e:
        print(f"vagt: {e}", file=sys.stderr)
        return 2
    for r in rules:
        scope = ",".join(r.types) or "all types"
        print(f"ok  {r.name:<24} {r.kind:<10} {scope:<32} severity={r.severity} "
              f"queue={r.queue} priority={r.priority}")
    return 0


@_reads_the_database
def cmd_rules_backtest(args: argparse.Namespace, config: Config) -> int:
    import orjson
    import psycopg

    from vagt.app.backtest import HEARD_BEFORE_S, reaching_further, run_backtest
    from vagt.devices.catalogue import CatalogueError, load_catalogue
    from vagt.devices.fleet import Fleet
    from vagt.rules import RuleConfigError, load_rules
    from vagt.rules.engine import SWEPT

    try:
        rules = load_rules(args.rules or config.rules or None)
        catalogue = load_catalogue(config.catalogue or None)
    except (RuleConfigError, CatalogueError) as e:
        print(f"vagt: {e}", file=sys.stderr)
        return 2
    period = _from_to(args)
    if period is None:
        return 2
    start, end = period
    if end <= start:
        print("vagt: --to must be after --from", file=sys.stderr)
        return 2
    if args.batch < 1:
        print("vagt: --batch must be at least 1", file=sys.stderr)
        return 2
    url_config = dataclasses.replace(config, database=dataclasses.replace(
        config.database, url=args.database_url or config.database.url))
    with database_url(url_config) as url, psycopg.connect(url) as conn:
        fleet = Fleet(catalogue)
        fleet.load(conn)
        result = run_backtest(conn, fleet, rules, start, end, args.batch,
                              config.ingest.max_future_skew_s)
        conn.rollback()  # a backtest writes nothing
    rows = result.rows()
    if args.json:
        print(orjson.dumps({"from": start, "to": end, "readings": result.readings,
                            "events": result.events, "batches": result.batches,
                            "heard": result.heard, "state_from": result.state_from,
                            "all_rows_from": result.all_rows_from,
                            "alerts": rows}).decode())
        return 0
    print(f"replayed {result.readings} readings and {result.events} events in "
          f"{result.batches} batches")
    print(f"{'rule':<24} {'municipality':<16} {'opened':>7} {'cleared':>8} {'open at end':>12}")
    for row in rows:
        print(f"{row['rule']!s:<24} {shown(str(row['municipality'])):<16} {row['opened']!s:>7} "
              f"{row['cleared']!s:>8} {row['open_at_end']!s:>12}")
    print()
    print(f"rules' state from every row dated from {_utc_text(result.all_rows_from)} "
          f"({(start - result.all_rows_from) / 3600:.0f} h before --from)", end="")
    further = reaching_further(rules)
    if further:
        print(f",\nand from {_utc_text(result.state_from)} those of the rules that reach "
              f"further ({', '.join(r.name for r in further)})", end="")
    print(";\nnot known from before those rows: a run of values (stuck, validity), a level "
          "held by hysteresis, a rate's last reading")
    if any(r.kind in SWEPT for r in rules):
        print(f"silence and clocks judged by when each device's stored rows reached us, as "
              f"live ({result.heard} rows within the period), from its last row before;")
        print("not heard: a message that stored no row (a status of firmware only, a repeat "
              "of a row's device time), rows dated more than "
              f"{HEARD_BEFORE_S / 3600:.0f} h before those read that reached us after them "
              "(a clock restarted at 2000-01-01), rows the store has pruned")
    return 0


def _utc_text(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _sim_options(args: argparse.Namespace, defaults: SimOptions) -> SimOptions:
    return dataclasses.replace(
        defaults, seed=defaults.seed if args.seed is None else args.seed, speed=args.speed,
        history_h=defaults.history_h if args.history is None else args.history,
        faults=defaults.faults if args.faults is None else args.faults)


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from vagt.app.demo import DEMO_OPTIONS, run_demo
    from vagt.app.engine import run_engine

    stop = _stop_on_signals(hangup=True)
    return run_demo(config, devices=args.devices, duration=args.duration, stop=stop,
                    run_engine=run_engine, options=_sim_options(args, DEMO_OPTIONS))


def cmd_simulate(args: argparse.Namespace, config: Config) -> int:
    from vagt.app.demo import SimOptions, run_simulate

    return run_simulate(config.mqtt.url, config.mqtt.topic_root, args.devices, args.rate,
                        args.duration, _sim_options(args, SimOptions()), args.fleet_csv,
                        config.mqtt.protocol)


if __name__ == "__main__":
    sys.exit(main())
