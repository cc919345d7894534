"""`vagt alerts ...`: the call-centre queue from the command line; every action is audited."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson
import psycopg

from vagt.alerts.actions import AlertError, acknowledge, claim, list_alerts, resolve


def add_parser(sub: Any) -> None:
    p = sub.add_parser("alerts", help="the alert queue")
    s = p.add_subparsers(metavar="ACTION", required=True)
    ls = s.add_parser("list", help="alerts, most urgent first")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--status", action="append",
                    choices=["open", "claimed", "acknowledged", "resolved", "suppressed"],
                    help="repeat for several (default: all)")
    ls.add_argument("--queue")
    ls.add_argument("--limit", type=int, default=500)
    ls.set_defaults(handler=cmd_list)
    for name, help_text in (("claim", "take an open alert: no one else can then"),
                            ("ack", "acknowledge an alert you hold"),
                            ("resolve", "resolve an alert")):
        a = s.add_parser(name, help=help_text)
        a.add_argument("id", type=int)
        a.add_argument("--operator", required=True, help="your operator name")
        if name != "claim":
            a.add_argument("--note", help="what was done")
        a.set_defaults(handler=cmd_action, action=name)


def cmd_list(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        rows = list_alerts(conn, status=args.status, queue=args.queue, limit=args.limit)
    if args.json:
        sys.stdout.write(orjson.dumps([r.to_json() for r in rows],
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(f"{'ID':>6} {'PRI':>3} {'QUEUE':<12} {'STATUS':<13} {'OPENED':<19} {'REPEATS':>7}  "
          "SUMMARY")
    for r in rows:
        holder = f" ({r.claimed_by})" if r.claimed_by and r.status != "resolved" else ""
        print(f"{r.id:>6} {r.priority:>3} {r.queue:<12} {r.status:<13} "
              f"{r.opened_at:%Y-%m-%d %H:%M:%S} {r.repeat_count:>7}  {r.summary}{holder}")
    return 0


def cmd_action(args: argparse.Namespace, conninfo: str) -> int:
    try:
        with psycopg.connect(conninfo) as conn:
            if args.action == "claim":
                row = claim(conn, args.id, args.operator)
            elif args.action == "ack":
                row = acknowledge(conn, args.id, args.operator, args.note)
            else:
                row = resolve(conn, args.id, args.operator, args.note)
    except AlertError as e:
        print(f"vagt: {e}", file=sys.stderr)
        return 2
    print(f"alert {row.id} is now {row.status} ({args.operator})")
    return 0
