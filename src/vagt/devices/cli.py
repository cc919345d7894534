"""`vagt devices ...`: import the registry from CSV and list it (a table, or JSON)."""

from __future__ import annotations

import argparse
import functools
import getpass
import sys
from collections.abc import Callable, Sequence
from datetime import datetime

import orjson
import psycopg

from vagt.devices.registry import DeviceImportError, DeviceRow, import_csv, list_devices

Handler = Callable[[argparse.Namespace, str], int]
EXIT_ERROR = 2


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `devices import FILE` and `devices list` to the `vagt` command."""
    devices = subparsers.add_parser("devices", help="the device registry")
    actions = devices.add_subparsers(metavar="ACTION", required=True)
    imp = actions.add_parser("import", help="register or update devices from a CSV file")
    imp.add_argument("file", help="CSV with the header device_id,vendor,model,type,municipality "
                                  "(any order); further columns are kept as attributes")
    imp.add_argument("--actor", help="who imports, for the audit log (default: your user name)")
    imp.set_defaults(handler=handle_import)
    ls = actions.add_parser("list", help="registered devices with their fleet state")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    ls.add_argument("--municipality", help="only devices in this municipality")
    ls.add_argument("--vendor", help="only devices of this vendor")
    ls.add_argument("--type", help="only devices of this type, e.g. pulse_oximeter")
    ls.set_defaults(handler=handle_list)


def _reports_errors(handler: Handler) -> Handler:
    """Refusals and database trouble go to stderr with exit code 2; bugs still raise."""

    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace, conninfo: str) -> int:
        try:
            return handler(args, conninfo)
        except DeviceImportError as e:
            return _fail(str(e), one_line=False)  # one line per problem to fix
        except psycopg.errors.UndefinedTable:
            return _fail("the database has no vagt schema yet: run `vagt db migrate`")
        except psycopg.OperationalError as e:
            return _fail(f"cannot reach the database: {e}")

    return wrapped


def _fail(message: str, *, one_line: bool = True) -> int:
    print(f"vagt: {' '.join(message.split()) if one_line else message}", file=sys.stderr)
    return EXIT_ERROR


@_reports_errors
def handle_import(args: argparse.Namespace, conninfo: str) -> int:
    actor = args.actor or _user_name()
    if actor is None:
        return _fail("cannot tell who you are: give --actor NAME (for the audit log)")
    with psycopg.connect(conninfo) as conn:
        result = import_csv(conn, args.file, actor=actor)
    print(f"imported {args.file}: {result.created} created, {result.updated} updated, "
          f"{result.unchanged} unchanged")
    return 0


def _user_name() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment nor the password database
        return None


@_reports_errors
def handle_list(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        rows = list_devices(conn, municipality=args.municipality, vendor=args.vendor,
                            type=args.type)
    if args.json:
        print(orjson.dumps([r.to_json() for r in rows], option=orjson.OPT_INDENT_2).decode())
    elif rows:
        print(_format_table(["DEVICE", "TYPE", "VENDOR", "MODEL", "MUNICIPALITY", "STATUS",
                            "BATTERY", "FIRMWARE", "LAST SEEN"], [_cells(r) for r in rows]))
    else:
        print("no devices match" if _filtered(args) else "no devices registered")
    return 0


def _filtered(args: argparse.Namespace) -> bool:
    return any(v is not None for v in (args.municipality, args.vendor, args.type))


def _cells(r: DeviceRow) -> list[str]:
    battery = "-" if r.battery is None else f"{r.battery:.0f} %"
    return [r.device_id, r.type, r.vendor, r.model, r.municipality, r.status, battery,
            r.firmware or "-", _local_time(r.last_seen, "never")]


def _local_time(at: datetime | None, missing: str) -> str:
    return missing if at is None else f"{at.astimezone():%Y-%m-%d %H:%M %Z}"


def _format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns as wide as their widest cell, two spaces apart."""
    widths = [max(len(c) for c in column) for column in zip(headers, *rows)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
             for line in [headers, *rows]]
    return "\n".join(lines)
