"""A device's story: its assignments (how it was reused), how long it waited in stock
between them, and its audit trail. What `vagt devices show` prints.

Time in stock is read from the audit trail's status changes (each has `from` and `to`), so
it counts only the days a device really sat in stock, not the days it was in repair.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from vagt.devices.catalogue import Catalogue, Model
from vagt.devices.errors import UnknownDevice
from vagt.devices.lifecycle import Status
from vagt.devices.rows import DEVICE_COLUMNS, DeviceRow, device_cursor

DAY_S = 86400.0


@dataclass(frozen=True)
class Assignment:
    citizen_ref: str
    municipality: str
    since: datetime
    until: datetime | None              # None: the citizen has it now
    stock_days_before: float | None     # in stock since the previous assignment (or since
                                        # registration); None when the trail cannot tell

    def to_json(self) -> dict[str, object]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    details: dict[str, Any]

    def to_json(self) -> dict[str, object]:
        return {"at": self.at.isoformat(), "actor": self.actor, "action": self.action,
                "details": self.details}


@dataclass(frozen=True)
class DeviceHistory:
    device: DeviceRow
    model: Model | None                 # None: the model is no longer in the catalogue
    assignments: list[Assignment]       # oldest first
    audit: list[AuditEntry]             # oldest first
    stock_days_now: float | None        # in stock now: for how long (None otherwise)

    @property
    def current(self) -> Assignment | None:
        last = self.assignments[-1] if self.assignments else None
        return last if last is not None and last.until is None else None

    @property
    def citizens_served(self) -> int:
        return len({a.citizen_ref for a in self.assignments})

    @property
    def municipalities(self) -> list[str]:
        """Where the device has served, in the order it first served there."""
        return list(dict.fromkeys(a.municipality for a in self.assignments))

    def to_json(self) -> dict[str, object]:
        model = None if self.model is None else {
            "vendor": self.model.vendor, "model": self.model.model, "type": self.model.type,
            "heartbeat_s": self.model.heartbeat_s, "battery": self.model.battery,
            "firmware": list(self.model.firmware)}
        current = self.current
        return {"device": self.device.to_json(), "model": model,
                "current_assignment": None if current is None else current.to_json(),
                "citizens_served": self.citizens_served,
                "municipalities": self.municipalities,
                "stock_days_now": self.stock_days_now,
                "assignments": [a.to_json() for a in self.assignments],
                "audit": [e.to_json() for e in self.audit]}


def device_history(conn: psycopg.Connection, device_id: str, catalogue: Catalogue, *,
                   now: datetime | None = None) -> DeviceHistory:
    """Everything vagt knows about one device's life; UnknownDevice if it is not registered."""
    with device_cursor(conn) as cur:
        device = cur.execute(sql.SQL("SELECT {} FROM devices WHERE device_id = %s").format(
            DEVICE_COLUMNS), (device_id,)).fetchone()
        if device is None:
            raise UnknownDevice(f"{device_id[:70]} is not registered; `vagt devices list` "
                                "shows the registry")
        if now is None:
            row = conn.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            now = row[0]
    assert now is not None
    audit = [AuditEntry(*r) for r in conn.execute(
        "SELECT at, actor, action, details FROM audit_log WHERE subject = %s "
        "AND action LIKE 'devices.%%' ORDER BY at, id", (device_id,))]
    timeline = _status_timeline(audit)
    raw = conn.execute("SELECT citizen_ref, municipality, since, until FROM device_assignments "
                       "WHERE device_id = %s ORDER BY since, id", (device_id,)).fetchall()
    assignments: list[Assignment] = []
    previous_end = timeline[0][0] if timeline else None
    for citizen_ref, municipality, since, until in raw:
        before = (None if previous_end is None or not timeline
                  else _days_in(timeline, Status.IN_STOCK, previous_end, since))
        assignments.append(Assignment(citizen_ref, municipality, since, until, before))
        previous_end = until
    stock_now = None
    if device.status == Status.IN_STOCK and timeline:
        stock_now = round((now - device.status_since).total_seconds() / DAY_S, 2)
    return DeviceHistory(device, catalogue.get(device.vendor, device.model), assignments,
                         audit, stock_now)


def _status_timeline(audit: list[AuditEntry]) -> list[tuple[datetime, Status]]:
    """(time, status from then on) from the trail's status changes; [] when the trail does
    not start at registration (a device registered before vagt kept one)."""
    changes = [(e.at, Status(e.details["to"])) for e in audit
               if isinstance(e.details.get("to"), str)]
    if not audit or audit[0].action != "devices.register":
        return []
    return changes


def _days_in(timeline: list[tuple[datetime, Status]], status: Status, start: datetime,
             end: datetime) -> float:
    """Days within [start, end] that the device spent in `status`."""
    total = 0.0
    for (at, s), nxt in zip(timeline, [*timeline[1:], (None, None)]):
        if s is not status:
            continue
        lo = max(at, start)
        hi = end if nxt[0] is None else min(nxt[0], end)
        if hi > lo:
            total += (hi - lo).total_seconds()
    return round(total / DAY_S, 2)


def _jsonable(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value
