"""`vagt devices ...`: the registry and each device's lifecycle from the command line.

Every change is audited with who made it (`--actor`, by default your user name).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import psycopg

from vagt.app.cli_support import (
    cli_login,
    fail,
    format_table,
    local_time,
    login_name,
    reports_errors,
)
from vagt.app.config import Config
from vagt.devices import actions
from vagt.devices.broker_access import (
    BROKER_USER_CHARS,
    broker_access,
    deployed_devices,
    relayed_devices,
    write_private,
)
from vagt.devices.catalogue import Catalogue, CatalogueError, load_catalogue
from vagt.devices.csvfile import DeviceImportError
from vagt.devices.errors import DeviceError
from vagt.devices.history import DeviceHistory, device_history
from vagt.devices.lifecycle import Status
from vagt.devices.registry import export_csv, import_csv, list_devices
from vagt.devices.rows import DeviceRow
from vagt.text import shown

_refusals = reports_errors(DeviceError, CatalogueError, multi_line=(DeviceImportError,))

def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `devices register|deploy|return|repair|retire|lost|show|list|import|export|
    broker-acl` to the `vagt` command."""
    devices = subparsers.add_parser("devices", help="the device registry and lifecycle")
    sub = devices.add_subparsers(metavar="ACTION", required=True)

    p = _action(sub, "register", "add a device of an approved model to the stock",
                handle_register)
    p.add_argument("--vendor", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--type", help="checked against the catalogue (default: the model's)")
    p.add_argument("--municipality", default="",
                   help="whose stock holds it (default: the centre's own stock)")
    p.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE",
                   help="an attribute to keep (serial number, asset tag); repeat for more")

    p = _action(sub, "deploy", "give a device in stock to a citizen", handle_deploy)
    p.add_argument("--citizen", required=True, metavar="REF",
                   help="the citizen's pseudonymous reference (never a CPR number)")
    p.add_argument("--municipality", required=True)

    p = _action(sub, "return", "a deployed device comes back (to stock or repair)",
                handle_return)
    p.add_argument("--to", choices=["stock", "repair"], default="stock")

    p = _action(sub, "repair", "the repair is done: back to stock (--send: a device in "
                               "stock goes to repair)", handle_repair)
    p.add_argument("--send", action="store_true",
                   help="send a device in stock to repair instead")
    _action(sub, "retire", "take a device in stock or repair out of use (final)",
            handle_retire)
    _action(sub, "lost", "the device is lost (final); an assignment it had ends", handle_lost)

    show = sub.add_parser("show", help="a device, its model, status, assignments and audit")
    show.add_argument("id", help="the device id")
    show.add_argument("--json", action="store_true", help="print a JSON object")
    show.set_defaults(handler=handle_show, handler_takes_config=True)

    ls = sub.add_parser("list", help="registered devices with their fleet state")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    _filters(ls)
    ls.set_defaults(handler=handle_list, handler_takes_config=True)

    imp = sub.add_parser("import", help="register, update or deploy devices from a CSV file")
    imp.add_argument("file", help="CSV with the header device_id,vendor,model,type,municipality "
                                  "(any order); optional status and citizen_ref; further "
                                  "columns are kept as attributes")
    imp.add_argument("--actor", help="who imports, for the audit log (default: your user name)")
    imp.set_defaults(handler=handle_import, handler_takes_config=True)

    exp = sub.add_parser("export", help="write the registry as a CSV that import reads back")
    exp.add_argument("file", help="the CSV file to write, or - for standard output")
    _filters(exp)
    exp.set_defaults(handler=handle_export, handler_takes_config=True)

    acl = sub.add_parser("broker-acl", help="write Mosquitto's password and ACL files: each "
                                            "deployed device may publish on its own topic")
    acl.add_argument("--passwords", required=True, type=Path, help="password file to write")
    acl.add_argument("--acl", required=True, type=Path, help="ACL file to write")
    acl.add_argument("--secret-file", type=Path,
                     help="the secret device passwords derive from (default: "
                          "VAGT_DEVICE_SECRET)")
    acl.add_argument("--engine-user",
                     help="the engine's broker user (default: the user in VAGT_MQTT_URL)")
    acl.add_argument("--engine-password-file", type=Path,
                     help="the engine user's password (default: the one in VAGT_MQTT_URL)")
    acl.add_argument("--actor", help="who writes them, for the audit log (default: your "
                                     "user name)")
    acl.set_defaults(handler=handle_broker_acl, handler_takes_config=True)


def _action(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str,
            handler: Callable[..., int]) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    p.add_argument("id", help="the device id")
    p.add_argument("--note", help="why, for the audit trail (never a CPR number)")
    p.add_argument("--actor", help="who does it, for the audit log (default: your user name)")
    p.set_defaults(handler=handler, handler_takes_config=True)
    return p


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", choices=[s.value for s in Status])
    p.add_argument("--municipality", help="only devices in this municipality")
    p.add_argument("--vendor", help="only devices of this vendor")
    p.add_argument("--model", help="only devices of this model")
    p.add_argument("--type", help="only devices of this type, e.g. pulse_oximeter")


def _filter_values(args: argparse.Namespace) -> dict[str, str | None]:
    return {k: getattr(args, k) for k in ("status", "municipality", "vendor", "model", "type")}


def _actor(args: argparse.Namespace) -> str:
    """Who acts, as the audit log will take it: checked before anything is done, since a
    step that writes outside the database (broker-acl's files) cannot be undone when its
    audit row is refused afterwards."""
    actor = args.actor or login_name()
    if actor is None:
        raise DeviceError("cannot tell who you are: give --actor NAME (for the audit log)")
    return actions.checked_actor(str(actor))


def _catalogue(config: Config) -> Catalogue:
    return load_catalogue(config.catalogue or None)


# --- lifecycle -----------------------------------------------------------------------------


@_refusals
def handle_register(args: argparse.Namespace, conninfo: str, config: Config) -> int:
    attributes = {}
    for item in args.attr:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            return fail(f"--attr {item!r}: give KEY=VALUE")
        attributes[key.strip()] = value.strip()
    with psycopg.connect(conninfo) as conn:
        row = actions.register(conn, args.id, args.vendor, args.model, type_=args.type,
                               municipality=args.municipality, attributes=attributes,
                               catalogue=_catalogue(config), actor=_actor(args),
                               note=args.note, via=cli_login())
    where = f"the stock of {row.municipality}" if row.municipality else "the centre's stock"
    print(f"{row.device_id} is registered: {row.vendor} {row.model} ({row.type}), in_stock "
          f"in {where}")
    return 0


@_refusals
def handle_deploy(args: argparse.Namespace, conninfo: str, config: Config) -> int:
    with psycopg.connect(conninfo) as conn:
        row = actions.deploy(conn, args.id, citizen_ref=args.citizen,
                             municipality=args.municipality, actor=_actor(args),
                             note=args.note, via=cli_login())
    return _done(row, f" to {args.citizen.strip()} in {row.municipality}")


@_refusals
def handle_return(args: argparse.Namespace, conninfo: str, config: Config) -> int:
    to = Status.IN_REPAIR if args.to == "repair" else Status.IN_STOCK
    with psycopg.connect(conninfo) as conn:
        return _done(actions.return_device(conn, args.id, to=to, actor=_actor(args),
                                           note=args.note, via=cli_login()))


@_refusals
def handle_repair(args: argparse.Namespace, conninfo: str, config: Config) -> int:
    change = actions.send_to_repair if args.send else actions.repaired
    with psycopg.connect(conninfo) as conn:
        return _done(change(conn, args.id, actor=_actor(args), note=args.note,
                            via=cli_login()))


@_refusals
def handle_retire(args: argparse.Namespace, conninfo: str, config: Config) -> int:
    with psycopg.connect(conninfo) as conn:
        return _done(actions.retire(conn, args.id, actor=_actor(args), note=args.note,
                                    via=cli_login()))


@_refusals
def handle_lost(args: argparse.Namespace, conninfo: str, config: Config) -> int:
    with psycopg.connect(conninfo) as conn:
        return _done(actions.report_lost(conn, args.id, actor=_actor(args), note=args.note,
                                         via=cli_login()))


def _done(row: DeviceRow, where: str = "") -> int:
    print(f"{row.device_id} is now {row.status}{where}")
    return 0


# --- show and list ---------------------------------------------------------------------------


@_refusals
def handle_show(args: argparse.Namespace, conninfo: str, config: Config) -> int:
    with psycopg.connect(conninfo) as conn:
        history = device_history(conn, args.id, _catalogue(config))
    if args.json:
        print(orjson.dumps(history.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_history(history))
    return 0


def format_history(h: DeviceHistory) -> str:
    """`vagt devices show` for people: the device, then its assignments, then its audit."""
    d = h.device
    lines = [shown(f"{d.device_id}  {d.vendor} {d.model} ({d.type})")]
    fields = [("status", f"{d.status} since {local_time(d.status_since, '-')}"
                         + (f" ({h.stock_days_now:g} days)" if h.stock_days_now is not None
                            else "")),
              ("municipality", d.municipality or "- (the centre's stock)")]
    current = h.current
    if current is not None:
        fields.append(("citizen", f"{current.citizen_ref} since "
                                  f"{local_time(current.since, '-')}"))
    if h.model is None:
        fields.append(("model", "no longer in the catalogue"))
    else:
        fields.append(("model", f"heartbeat every {h.model.heartbeat_s} s, battery "
                                f"{h.model.battery}, firmware "
                                f"{', '.join(h.model.firmware) or 'any'}"))
    battery = "-" if d.battery is None else f"{d.battery:.0f} %"
    fields.append(("fleet", f"last seen {local_time(d.last_seen, 'never')}, battery "
                            f"{battery}, firmware {d.firmware or '-'}"))
    fields.append(("reuse", f"{h.citizens_served} citizen(s) in "
                            f"{len(h.municipalities)} municipality(ies)"
                            + (f": {', '.join(h.municipalities)}" if h.municipalities else "")))
    width = max(len(k) for k, _ in fields)
    lines += [f"{k.ljust(width)}  {shown(v)}" for k, v in fields]
    if h.assignments:
        lines += ["", "ASSIGNMENTS", format_table(
            ["CITIZEN", "MUNICIPALITY", "FROM", "TO", "STOCK DAYS BEFORE"],
            [[a.citizen_ref, a.municipality, local_time(a.since, "-"),
              local_time(a.until, "(now)"),
              "?" if a.stock_days_before is None else f"{a.stock_days_before:g}"]
             for a in h.assignments])]
    if h.audit:
        lines += ["", "AUDIT", format_table(
            ["AT", "ACTOR", "ACTION", "DETAILS"],
            [[local_time(e.at, "-"), e.actor, e.action.removeprefix("devices."),
              _details(e.details)] for e in h.audit])]
    return "\n".join(lines)


def _details(details: dict[str, object]) -> str:
    parts = []
    if "from" in details or "to" in details:
        parts.append(f"{details.get('from', '(new)')} -> {details.get('to')}")
    parts += [f"{k}={v}" for k, v in details.items() if k not in ("from", "to") and v != ""]
    return " ".join(parts)


@_refusals
def handle_list(args: argparse.Namespace, conninfo: str, config: Config) -> int:
    with psycopg.connect(conninfo) as conn:
        rows = list_devices(conn, **_filter_values(args))
    if args.json:
        print(orjson.dumps([r.to_json() for r in rows], option=orjson.OPT_INDENT_2).decode())
    elif rows:
        print(format_table(["DEVICE", "TYPE", "VENDOR", "MODEL", "MUNICIPALITY", "STATUS",
                            "BATTERY", "FIRMWARE", "LAST SEEN"], [_cells(r) for r in rows]))
    else:
        filtered = any(v is not None for v in _filter_values(args).values())
        print("no devices match" if filtered else "no devices registered")
    return 0


def _cells(r: DeviceRow) -> list[str]:
    battery = "-" if r.battery is None else f"{r.battery:.0f} %"
    return [r.device_id, r.type, r.vendor, r.model, r.municipality or "-", r.status, battery,
            r.firmware or "-", local_time(r.last_seen, "never")]


# --- import and export ---------------------------------------------------------------------


@_refusals
def handle_import(args: argparse.Namespace, conninfo: str, config: Config) -> int:
    actor = _actor(args)
    catalogue = _catalogue(config)
    with psycopg.connect(conninfo) as conn:
        result = import_csv(conn, args.file, actor=actor, catalogue=catalogue,
                            via=cli_login())
    deployed = f" ({result.deployed} deployed)" if result.deployed else ""
    print(f"imported {args.file}: {result.created} created, {result.updated} updated"
          f"{deployed}, {result.unchanged} unchanged")
    return 0


@_refusals
def handle_export(args: argparse.Namespace, conninfo: str, config: Config) -> int:
    with psycopg.connect(conninfo) as conn:
        if args.file == "-":
            export_csv(conn, sys.stdout, **_filter_values(args))
            return 0
        path = Path(args.file)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with tmp.open("w", encoding="utf-8", newline="") as out:
                n = export_csv(conn, out, **_filter_values(args))
            tmp.replace(path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            return fail(f"cannot write {path}: {e.strerror}")
    print(f"exported {n} device(s) to {path}", file=sys.stderr)
    return 0


# --- broker access ---------------------------------------------------------------------------


@_refusals
def handle_broker_acl(args: argparse.Namespace, conninfo: str, config: Config) -> int:
    actor = _actor(args)
    secret = _read_secret(args.secret_file, config.device_secret, "--secret-file",
                          "VAGT_DEVICE_SECRET", "the device secret")
    engine_user = args.engine_user or config.mqtt.username
    if not engine_user:
        return fail("who is the engine at the broker? give --engine-user NAME, or a user in "
                    "VAGT_MQTT_URL (mqtt://user:password@host)")
    same_as_config = engine_user == config.mqtt.username
    engine_password = _read_secret(args.engine_password_file,
                                   (config.mqtt.password or "") if same_as_config else "",
                                   "--engine-password-file", "VAGT_MQTT_URL",
                                   f"the password of the engine user {engine_user}")
    with psycopg.connect(conninfo) as conn:
        access = broker_access(deployed_devices(conn), secret=secret.encode(),
                               topic_root=config.mqtt.topic_root, engine_user=engine_user,
                               engine_password=engine_password,
                               behind=relayed_devices(conn))
        for path in (args.passwords, args.acl):
            if not path.parent.is_dir():
                return fail(f"cannot write {path}: no such directory {path.parent}")
        # committed before the files are written: files the broker takes in at its next
        # reload that no row says who wrote (the database lost between) would be worse than
        # a row for files a full disk kept from being written (the command fails then)
        actions.audit_broker_access(conn, actor, str(args.acl), len(access.devices),
                                    engine_user, left_out=sorted(access.left_out),
                                    via=cli_login())
        conn.commit()
        write_private(args.passwords, access.passwords)
        write_private(args.acl, access.acl)
    # Devices left out are a warning, not a failure (exit 0): the files are right for every
    # other device and must be applied; a failure would stop `broker-acl && systemctl reload
    # mosquitto` and keep the old files, and the access of devices lost since, in force.
    if access.left_out:
        print(format_left_out(access.left_out), file=sys.stderr)
    if access.unrelayed:
        print(format_unrelayed(access.unrelayed), file=sys.stderr)
    left_out = f" ({len(access.left_out)} left out, see above)" if access.left_out else ""
    print(f"wrote {args.passwords} and {args.acl}: {len(access.devices)} deployed device(s)"
          f"{left_out} and the engine user {engine_user}; reload Mosquitto to apply "
          "(kill -HUP)")
    return 0


def format_left_out(left_out: dict[str, str]) -> str:
    """The warning for deployed devices that are not in the files: who, why, what to do."""
    lines = [f"vagt: warning: {len(left_out)} deployed device(s) left out of the files, so "
             "they cannot log in to the broker:"]
    lines += [f"  {device_id}: {why}" for device_id, why in sorted(left_out.items())]
    lines.append(f"  give each a new id (1 to 64 of {BROKER_USER_CHARS}) and set it on the "
                 "device; register and deploy it under the new id, then return and retire "
                 "the old one")
    return "\n".join(lines)


def format_unrelayed(unrelayed: dict[str, str]) -> str:
    """The warning for deployed devices whose gateway_id names no device in the files:
    their gateway cannot publish for them, and an MQTT 3.1.1 gateway is not told so."""
    lines = [f"vagt: warning: {len(unrelayed)} deployed device(s) name in gateway_id a "
             "gateway that is not a deployed device in the files, so no gateway may publish "
             "for them:"]
    lines += [f"  {device_id}: gateway_id '{shown(gateway)}'"
              for device_id, gateway in unrelayed.items()]
    lines.append("  set gateway_id to the id of the gateway the device sends through, or "
                 "deploy that gateway, and write the files again")
    return "\n".join(lines)


def _read_secret(path: Path | None, configured: str, option: str, variable: str,
                 what: str) -> str:
    """A secret from a file (its first line) or the configuration; never from the command
    line itself, where other users of the machine could see it."""
    if path is not None:
        try:
            value = path.read_text(encoding="utf-8").splitlines()[0:1]
        except OSError as e:
            raise DeviceError(f"cannot read {what} from {path}: {e.strerror}") from e
        if not value or not value[0].strip():
            raise DeviceError(f"{path} is empty: it should hold {what}")
        return value[0].strip()
    if configured:
        return configured
    raise DeviceError(f"{what} is not given: put it in a file and give {option} FILE, or set "
                      f"{variable}")
