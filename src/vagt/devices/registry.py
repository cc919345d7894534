"""The device registry in bulk: CSV import (validated whole, then applied in one
transaction), CSV export that imports back, and listing with filters.

An import registers new devices (in stock, or deployed when the row names a citizen, or in
the status the row gives), updates what the file says about known devices, and deploys a
device in stock to the citizen the row names. Any other change of status is refused, naming
the command that makes it: the lifecycle's other steps are taken one device at a time.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from vagt.devices import lifecycle
from vagt.devices.actions import (
    CENTRAL_STOCK,
    MAX_ACTOR_LENGTH,
    NAMING_SILENCES,
    UNRESOLVED_ALERTS,
    begin_deployment,
    checked_actor,
    lock_for_deployment,
    new_device_id_problem,
    silenced_refusal,
    spelled_otherwise,
    unresolved_refusal,
)
from vagt.devices.catalogue import Catalogue, load_catalogue
from vagt.devices.csvfile import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    DeviceImportError,
    FileRow,
    parse_devices_csv,
    read_source,
)
from vagt.devices.errors import InvalidValue
from vagt.devices.lifecycle import FINAL, Status
from vagt.devices.privacy import PrivacyError
from vagt.devices.rows import DEVICE_COLUMNS, DeviceRow, device_cursor

IMPORT_LOCK_TIMEOUT = "30s"   # the engine holds a device's row only for one batch
EXPORT_COLUMNS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)


@dataclass(frozen=True)
class ImportResult:
    """What an import did: devices new to the registry, changed, and already as in the file.
    `deployed` counts the known devices it deployed (they are among `updated`)."""

    created: int
    updated: int
    unchanged: int
    deployed: int = 0

    @property
    def total(self) -> int:
        return self.created + self.updated + self.unchanged


# --- import ------------------------------------------------------------------------------


def import_csv(conn: psycopg.Connection, path_or_text: str | os.PathLike[str], *, actor: str,
               text: str | None = None, catalogue: Catalogue | None = None,
               at: datetime | None = None, via: str | None = None) -> ImportResult:
    """Register new devices and update known ones from a CSV file, in one transaction.

    `path_or_text` is a file path, or the CSV itself (a str with a line break). With `text`,
    `path_or_text` only names the source. The file is checked whole first, against the
    catalogue (the built-in one unless given) and then against the registry: any problem
    raises `DeviceImportError` listing them all, and nothing is written. Each device created
    or changed gets an audit row, and the import one more; `via` (how the actor came:
    `cli:USER`) is in each.
    """
    name, label, content = read_source(path_or_text, text)
    try:
        actor = checked_actor(actor)
    except PrivacyError as e:
        raise DeviceImportError(label, [str(e)]) from None
    except InvalidValue:
        raise DeviceImportError(label, [
            f"who imports must be named (actor): 1 to {MAX_ACTOR_LENGTH} characters"]) from None
    rows = parse_devices_csv(content, catalogue or load_catalogue(), source=label)
    with conn.transaction():
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (IMPORT_LOCK_TIMEOUT,))
        when = _clock(conn, at)
        spelled = spelled_otherwise(conn, {r.municipality for r in rows})
        if spelled:
            raise DeviceImportError(label, spelled)
        current = _current(conn, [r.device_id for r in rows],
                           [r.device_id for r in rows if r.citizen_ref])
        plan = _Plan(name, when, via)
        for row in rows:
            plan.add(row, current.get(row.device_id))
        if plan.problems:
            raise DeviceImportError(label, plan.problems)
        try:
            _write(conn, plan, actor)
        except psycopg.errors.UniqueViolation as e:
            # Rows of known devices are locked; a new one can only have been registered by
            # someone else since this import looked.
            raise DeviceImportError(label, [
                "a device in the file was registered by someone else while this import ran "
                f"({e.diag.message_detail or 'a duplicate'}); nothing imported: import again"
            ]) from e
        result = plan.result()
        _audit_import(conn, when, actor, name, result, via)
    return result


def _clock(conn: psycopg.Connection, at: datetime | None) -> datetime:
    if at is not None:
        return at
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    when: datetime = row[0]
    return when


@dataclass(frozen=True)
class _Current:
    """A known device as the import finds it (its row locked)."""

    status: Status
    data: tuple[str, str, str, str, dict[str, Any]]   # vendor, model, type, municipality, attrs
    citizen_ref: str | None
    assigned_in: str | None
    assigned_since: datetime | None
    unresolved_alerts: str | None     # see actions.UNRESOLVED_ALERTS
    naming_silences: str | None       # see actions.NAMING_SILENCES


_CURRENT = """
SELECT d.device_id, d.status, d.vendor, d.model, d.type, d.municipality, d.attributes,
       a.citizen_ref, a.municipality, a.since, """ + UNRESOLVED_ALERTS.format(
    device="d.device_id") + ", " + NAMING_SILENCES.format(device="d.device_id") + """
FROM devices d
LEFT JOIN device_assignments a ON a.device_id = d.device_id AND a.until IS NULL
WHERE d.device_id = ANY(%s)"""

# In id order, so that two imports wait for each other rather than deadlock.
_LOCK = "SELECT 1 FROM devices WHERE device_id = ANY(%s) ORDER BY device_id FOR UPDATE"


def _current(conn: psycopg.Connection, device_ids: list[str],
             deploying: list[str]) -> dict[str, _Current]:
    """The known devices among `device_ids`, their rows locked (`_LOCK`), then read: in a
    statement of its own, after the lock. One statement that locks and joins re-reads the
    device row it waited for, but not its assignment: a deploy committed meanwhile was
    "deployed without an assignment", and an import wrote another municipality on it. The
    devices the file gives a citizen (`deploying`) are locked against alarms being
    committed (`lock_for_deployment`) before their alerts are read."""
    conn.execute(_LOCK, (device_ids,))
    if deploying:
        lock_for_deployment(conn, deploying)
    found: dict[str, _Current] = {}
    for (device_id, status, vendor, model, type_, municipality, attributes, citizen_ref,
         assigned_in, since, unresolved, silences) in conn.execute(_CURRENT, (device_ids,)):
        found[device_id] = _Current(Status(status), (vendor, model, type_, municipality,
                                                     attributes), citizen_ref, assigned_in,
                                    since, unresolved, silences)
    return found


_FIELDS = ("vendor", "model", "type", "municipality", "attributes")


@dataclass
class _Plan:
    """What the import will do, device by device; problems when it cannot."""

    file_name: str
    at: datetime
    via: str | None
    problems: list[str] = field(default_factory=list)
    devices: list[tuple[object, ...]] = field(default_factory=list)      # staged rows
    assignments: list[tuple[object, ...]] = field(default_factory=list)
    deployed: list[str] = field(default_factory=list)    # from stock: their rules begin anew
    audit: list[tuple[object, ...]] = field(default_factory=list)        # action, id, details
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def result(self) -> ImportResult:
        return ImportResult(self.created, self.updated, self.unchanged, len(self.deployed))

    def add(self, row: FileRow, current: _Current | None) -> None:
        if current is None:
            # A known device keeps its id (an id that cannot log in is named by broker-acl);
            # a new one must be able to log in.
            if problem := new_device_id_problem(row.device_id):
                self.problems.append(f"line {row.line}: {problem}")
            else:
                self._create(row)
        else:
            self._change(row, current)

    def _create(self, row: FileRow) -> None:
        status = row.new_status
        self.created += 1
        self._stage("create", row, row.municipality, status)
        details: dict[str, object] = {"to": status.value, "vendor": row.vendor,
                                      "model": row.model, "type": row.type,
                                      "municipality": row.municipality}
        if row.citizen_ref:
            self.assignments.append((row.device_id, row.citizen_ref, row.municipality, self.at))
            details["citizen_ref"] = row.citizen_ref
        self._audit(lifecycle.REGISTER, row.device_id, details)

    def _change(self, row: FileRow, cur: _Current) -> None:
        at = f"line {row.line}: {row.device_id}"
        problems_before = len(self.problems)
        deploy = assign = False
        if row.citizen_ref is not None:
            if cur.status is Status.IN_STOCK and cur.unresolved_alerts:
                self.problems.append(f"line {row.line}: " + unresolved_refusal(
                    row.device_id, cur.unresolved_alerts))
            elif cur.status is Status.IN_STOCK and cur.naming_silences:
                self.problems.append(f"line {row.line}: " + silenced_refusal(
                    row.device_id, cur.naming_silences))
            elif cur.status is Status.IN_STOCK:
                deploy = True
            elif cur.status is not Status.DEPLOYED:
                self.problems.append(f"line {row.line}: " + lifecycle.refusal(
                    row.device_id, cur.status, lifecycle.DEPLOY))
            elif cur.citizen_ref is None:
                assign = True  # deployed before vagt kept assignments: now it has one
            elif cur.citizen_ref != row.citizen_ref:
                self.problems.append(
                    f"{at} is deployed to another citizen since {_day(cur.assigned_since)}: "
                    f"return it first (vagt devices return {row.device_id}) to deploy it to "
                    "this one")
        elif row.status is not None and row.status is not cur.status:
            advice = _status_advice(row.device_id, cur.status, row.status)
            self.problems.append(f"{at} is {cur.status} in the registry, the file says "
                                 f"{row.status}: {advice}")
        if (cur.status is Status.DEPLOYED and cur.assigned_in is not None
                and row.municipality != cur.assigned_in):
            self.problems.append(
                f"{at} is deployed in {cur.assigned_in} since {_day(cur.assigned_since)}, the "
                f"file says {row.municipality or '(empty)'}: to move it, return it and deploy "
                "it again")
        if cur.status in FINAL and len(self.problems) == problems_before:
            differs = _final_differences(row, cur)
            if differs:
                self.problems.append(
                    f"{at} is {cur.status}, which is final: an import changes nothing of it, "
                    f"but the file gives another {', '.join(differs)}: give it as the registry "
                    f"has it (vagt devices show {row.device_id}), or leave the row out")
        if len(self.problems) > problems_before:
            return
        status = Status.DEPLOYED if deploy else cur.status
        new = (row.vendor, row.model, row.type, row.municipality, row.attributes)
        changed = {name: {"from": old, "to": value}
                   for name, old, value in zip(_FIELDS, cur.data, new) if old != value}
        if not (changed or deploy or assign):
            self.unchanged += 1
            return
        self.updated += 1
        self._stage("update", row, row.municipality, status)
        details: dict[str, object] = {"changed": changed} if changed else {}
        if deploy or assign:
            assert row.citizen_ref is not None
            self.assignments.append((row.device_id, row.citizen_ref, row.municipality, self.at))
            details.update(citizen_ref=row.citizen_ref, municipality=row.municipality)
        if deploy:
            self.deployed.append(row.device_id)
            details.update({"from": cur.status.value, "to": Status.DEPLOYED.value})
        action = "deploy" if deploy else "assign" if assign else "update"
        self._audit(action, row.device_id, details)

    def _stage(self, op: str, row: FileRow, municipality: str, status: Status) -> None:
        self.devices.append((op, row.device_id, row.vendor, row.model, row.type, municipality,
                             orjson.dumps(row.attributes).decode(), status.value))

    def _audit(self, action: str, device_id: str, details: dict[str, object]) -> None:
        details["file"] = self.file_name
        if self.via:
            details["via"] = self.via
        self.audit.append((f"devices.{action}", device_id, orjson.dumps(details).decode()))


def _final_differences(row: FileRow, cur: _Current) -> list[str]:
    """What the file would change of a retired or lost device: nothing may change (a lost
    device keeps the municipality it was lost in). Attributes are compared as the export
    writes them, so that an export imports back unchanged."""
    vendor, model, type_, municipality, attributes = cur.data
    differs = [name for name, old, new in (("vendor", vendor, row.vendor),
                                           ("model", model, row.model),
                                           ("type", type_, row.type)) if old != new]
    if municipality != row.municipality:
        held = municipality or "the centre's stock"
        differs.append(f"municipality ({row.municipality or 'empty'}; the registry has {held})")
    known = {c.lower() for c in EXPORT_COLUMNS}
    # by name whatever its case: the export writes "Serial" and "serial" as one column
    exported = {k.lower(): _cell(v) for k, v in attributes.items() if k.lower() not in known}
    if {k: v for k, v in exported.items() if v} != {k.lower(): v
                                                   for k, v in row.attributes.items()}:
        differs.append("attributes")
    return differs


def _status_advice(device_id: str, current: Status, wanted: Status) -> str:
    action = lifecycle.allowed(current, wanted)
    if action is not None:
        command = f"vagt devices {action.command} {device_id}"
        if action is lifecycle.RETURN and wanted is Status.IN_REPAIR:
            command += " --to repair"
        return ("an import changes a status only by deploying a device in stock; "
                f"use `{command}`")
    if current in FINAL:
        return f"{current} is final"
    return f"no step of the lifecycle leads from {current} to {wanted}"


def _day(at: datetime | None) -> str:
    return "an unknown date" if at is None else f"{at:%Y-%m-%d}"


_STAGE = """CREATE TEMP TABLE vagt_devices_import (
                op text, device_id text, vendor text, model text, type text,
                municipality text, attributes jsonb, status text) ON COMMIT DROP"""

_INSERT = """
INSERT INTO devices (device_id, vendor, model, type, municipality, attributes, status,
                     status_since, registered_at)
SELECT device_id, vendor, model, type, municipality, attributes, status, %(at)s, %(at)s
FROM vagt_devices_import WHERE op = 'create'"""

_UPDATE = """
UPDATE devices d SET vendor = s.vendor, model = s.model, type = s.type,
    municipality = s.municipality, attributes = s.attributes, status = s.status,
    status_since = CASE WHEN d.status = s.status THEN d.status_since ELSE %(at)s END
FROM vagt_devices_import s
WHERE s.op = 'update' AND d.device_id = s.device_id"""


def _write(conn: psycopg.Connection, plan: _Plan, actor: str) -> None:
    conn.execute(_STAGE)
    _copy(conn, "COPY vagt_devices_import FROM STDIN", plan.devices)
    conn.execute(_INSERT, {"at": plan.at})
    conn.execute(_UPDATE, {"at": plan.at})
    # Dropped now, not only at commit: the caller's transaction may import again.
    conn.execute("DROP TABLE vagt_devices_import")
    _copy(conn, "COPY device_assignments (device_id, citizen_ref, municipality, since) "
                "FROM STDIN", plan.assignments)
    if plan.deployed:
        begin_deployment(conn, plan.deployed, plan.at)
    _copy(conn, "COPY audit_log (at, actor, action, subject, details) FROM STDIN",
          ((plan.at, actor, *entry) for entry in plan.audit))


def _copy(conn: psycopg.Connection, statement: str, rows: Iterable[tuple[object, ...]]) -> None:
    with conn.cursor().copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def _audit_import(conn: psycopg.Connection, at: datetime, actor: str, file_name: str,
                  result: ImportResult, via: str | None) -> None:
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, subject, details) "
        "VALUES (%s, %s, %s, %s, %s)",
        (at, actor, "devices.import", file_name,
         Jsonb({"rows": result.total, "created": result.created, "updated": result.updated,
                "deployed": result.deployed, "unchanged": result.unchanged,
                **({"via": via} if via else {})})))


# --- listing and export ------------------------------------------------------------------

_FILTERS = ("status", "municipality", "vendor", "model", "type")


def _where(filters: dict[str, str | None]) -> tuple[sql.Composable, list[str]]:
    wanted = {name: value for name, value in filters.items() if value is not None}
    conditions: list[sql.Composable] = [
        sql.SQL("d.{} = %s").format(sql.Identifier(name)) for name in wanted]
    return sql.SQL(" AND ").join(conditions or [sql.SQL("true")]), list(wanted.values())


def list_devices(conn: psycopg.Connection, *, status: str | None = None,
                 municipality: str | None = None, vendor: str | None = None,
                 model: str | None = None, type: str | None = None) -> list[DeviceRow]:
    """Registered devices with their fleet state, ordered by device_id; filters are exact."""
    where, params = _where({"status": status, "municipality": municipality, "vendor": vendor,
                            "model": model, "type": type})
    query = sql.SQL("SELECT {} FROM devices d WHERE {} ORDER BY device_id").format(
        DEVICE_COLUMNS, where)
    with device_cursor(conn) as cur:
        return cur.execute(query, params).fetchall()


_EXPORT = """
SELECT d.device_id, d.vendor, d.model, d.type, d.municipality, d.status,
       coalesce(a.citizen_ref, ''), d.attributes
FROM devices d
LEFT JOIN device_assignments a ON a.device_id = d.device_id AND a.until IS NULL
WHERE {} ORDER BY d.device_id"""


def export_csv(conn: psycopg.Connection, out: IO[str], *, status: str | None = None,
               municipality: str | None = None, vendor: str | None = None,
               model: str | None = None, type: str | None = None) -> int:
    """Write the registry (or the devices the filters pick) as a CSV that `import_csv`
    reads back: the required columns, status, citizen_ref (the open assignment), then one
    column per attribute. How many devices were written."""
    where, params = _where({"status": status, "municipality": municipality, "vendor": vendor,
                            "model": model, "type": type})
    rows = conn.execute(sql.SQL(_EXPORT).format(where), params).fetchall()
    known = {c.lower() for c in EXPORT_COLUMNS}
    # An attribute named like a known column could only come from before 0003 (or a register
    # that let one through): it is left out rather than written twice, which the import
    # would refuse. So are two names that differ in case only ("Serial" of one device,
    # "serial" of another, from two files): one column, under the first of them.
    spellings: dict[str, list[str]] = {}
    for name in sorted({k for *_, attrs in rows for k in attrs if k.lower() not in known}):
        spellings.setdefault(name.lower(), []).append(name)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*EXPORT_COLUMNS, *(names[0] for names in spellings.values())])
    for *values, attrs in rows:
        writer.writerow([*values, *(_cell(next((attrs[k] for k in names if k in attrs), None))
                                    for names in spellings.values())])
    return len(rows)


def _cell(value: object) -> str:
    return "" if value is None else value if isinstance(value, str) else orjson.dumps(
        value).decode()


__all__ = ["CENTRAL_STOCK", "DeviceImportError", "ImportResult", "export_csv", "import_csv",
           "list_devices"]
