"""`vagt devices ...`: import the registry from CSV and list it."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

import orjson
import psycopg

from vagt.devices.registry import DeviceImportError, import_csv, list_devices


def add_parser(sub: Any) -> None:
    p = sub.add_parser("devices", help="the device registry")
    s = p.add_subparsers(metavar="ACTION", required=True)
    imp = s.add_parser("import", help="register or update devices from a CSV file "
                                      "(device_id,vendor,model,type,municipality,...)")
    imp.add_argument("file")
    imp.add_argument("--actor", default=None, help="who does this (default: your user name)")
    imp.set_defaults(handler=cmd_import)
    ls = s.add_parser("list", help="list registered devices with their fleet state")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--municipality")
    ls.add_argument("--vendor")
    ls.add_argument("--type")
    ls.set_defaults(handler=cmd_list)


def cmd_import(args: argparse.Namespace, conninfo: str) -> int:
    try:
        with psycopg.connect(conninfo) as conn:
            result = import_csv(conn, args.file, actor=args.actor or getpass.getuser())
    except (DeviceImportError, FileNotFoundError) as e:
        print(f"vagt: {e}", file=sys.stderr)
        return 2
    print(f"imported {args.file}: {result.created} created, {result.updated} updated")
    return 0


def cmd_list(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        rows = list_devices(conn, municipality=args.municipality, vendor=args.vendor,
                            type=args.type)
    if args.json:
        sys.stdout.write(orjson.dumps([r.to_json() for r in rows],
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(f"{'DEVICE':<16} {'TYPE':<18} {'VENDOR / MODEL':<28} {'MUNICIPALITY':<18} "
          f"{'BATTERY':>7}  LAST SEEN")
    for r in rows:
        battery = "" if r.battery is None else f"{r.battery:.0f} %"
        seen = "never" if r.last_seen is None else f"{r.last_seen:%Y-%m-%d %H:%M:%S}"
        print(f"{r.device_id:<16} {r.type:<18} {r.vendor + ' ' + r.model:<28} "
              f"{r.municipality:<18} {battery:>7}  {seen}")
    return 0
