"""`vagt alerts ...`: the call-centre queue from the command line; every action is audited."""

from __future__ import annotations

import argparse
from datetime import datetime

import orjson
import psycopg

from vagt.alerts.actions import (
    AlertError,
    AlertRow,
    AlertStatus,
    acknowledge,
    claim,
    list_alerts,
    resolve,
)
from vagt.app.cli_support import format_table, reports_errors


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `alerts list|claim|ack|resolve` to the `vagt` command."""
    alerts = subparsers.add_parser("alerts", help="the alert queue")
    actions = alerts.add_subparsers(metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="alerts, most urgent first")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    ls.add_argument("--status", action="append", choices=[s.value for s in AlertStatus],
                    help="only alerts with this status; repeat for several (default: all)")
    ls.add_argument("--queue", help="only alerts in this queue, e.g. emergency")
    ls.add_argument("--limit", type=int, default=500, help="at most this many (default: 500)")
    ls.set_defaults(handler=handle_list)
    for name, help_text, handler, takes_note in (
            ("claim", "take an open alert: then no one else can", handle_claim, False),
            ("ack", "acknowledge an alert you have claimed", handle_ack, True),
            ("resolve", "resolve an open alert or one you hold (final)", handle_resolve, True)):
        p = actions.add_parser(name, help=help_text)
        p.add_argument("id", type=int, help="the alert's id (see `vagt alerts list`)")
        p.add_argument("--operator", required=True, help="your operator name")
        if takes_note:
            p.add_argument("--note", help="what was done, for the audit trail")
        p.set_defaults(handler=handler)


@reports_errors(AlertError)
def handle_list(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        rows = list_alerts(conn, status=args.status, queue=args.queue, limit=args.limit)
    if args.json:
        print(orjson.dumps([r.to_json() for r in rows], option=orjson.OPT_INDENT_2).decode())
    elif rows:
        print(format_table(["ID", "PRI", "QUEUE", "STATUS", "HOLDER", "OPENED", "REPEATS",
                           "DEVICE", "SUMMARY"], [_cells(r) for r in rows]))
    else:
        print("no alerts match" if args.status or args.queue else "no alerts")
    return 0


def _cells(r: AlertRow) -> list[str]:
    holder = r.claimed_by if r.status in (AlertStatus.CLAIMED, AlertStatus.ACKNOWLEDGED) else ""
    return [str(r.id), str(r.priority), r.queue, r.status.value, holder or "",
            _local_time(r.opened_at), str(r.repeat_count), r.device_id or "-", r.summary]


def _local_time(at: datetime) -> str:
    return f"{at.astimezone():%Y-%m-%d %H:%M:%S %Z}"


@reports_errors(AlertError)
def handle_claim(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        return _done(claim(conn, args.id, args.operator))


@reports_errors(AlertError)
def handle_ack(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        return _done(acknowledge(conn, args.id, args.operator, args.note))


@reports_errors(AlertError)
def handle_resolve(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        return _done(resolve(conn, args.id, args.operator, args.note))


def _done(alert: AlertRow) -> int:
    who = {AlertStatus.CLAIMED: alert.claimed_by, AlertStatus.ACKNOWLEDGED: alert.acknowledged_by,
           AlertStatus.RESOLVED: alert.resolved_by}.get(alert.status)
    print(f"alert {alert.id} is now {alert.status.value} by {who}: {alert.summary}")
    return 0
