"""A registered device as stored: the row the registry, the lifecycle and the CLI share."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import set_json_loads


@dataclass(frozen=True)
class DeviceRow:
    """A registered device with its fleet state, as stored."""

    device_id: str
    vendor: str
    model: str
    type: str
    municipality: str
    status: str
    status_since: datetime
    attributes: dict[str, object]
    registered_at: datetime
    last_seen: datetime | None
    battery: float | None
    battery_at: datetime | None
    signal: float | None
    signal_at: datetime | None
    firmware: str | None
    last_seq: int | None
    seq_gaps: int

    def to_json(self) -> dict[str, object]:
        """The row as JSON-ready values: datetimes become ISO 8601 strings."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


def _jsonable(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


DEVICE_COLUMNS = sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(DeviceRow))


def device_cursor(conn: psycopg.Connection) -> psycopg.Cursor[DeviceRow]:
    """A cursor that returns DeviceRows (attributes decoded by orjson on this cursor only)."""
    cur = conn.cursor(row_factory=class_row(DeviceRow))
    set_json_loads(orjson.loads, cur)  # this cursor only: the caller's adapters stay
    return cur
