"""The device registry: CSV import (validated whole before anything is written) and listing.

No civil registration (CPR) numbers are ever stored: a column or value that looks like one
refuses the whole file.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg

from vagt.ingest.topics import DEVICE_ID

REQUIRED = ("device_id", "vendor", "model", "type", "municipality")
_CPR_COLUMN = re.compile(r"^(cpr|cpr_?nr|cpr_?number|personnummer|civil_?registration.*)$", re.IGNORECASE)
_CPR_VALUE = re.compile(r"^\d{6}-?\d{4}$")
_MAX_PROBLEMS = 20


class DeviceImportError(ValueError):
    """The file was refused; nothing was written. `problems` lists what to fix."""

    def __init__(self, source: str, problems: list[str]) -> None:
        shown = problems[:_MAX_PROBLEMS]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__(f"{source}: nothing imported:\n  " + "\n  ".join(shown) + more)
        self.problems = problems


@dataclass(frozen=True)
class ImportResult:
    created: int
    updated: int


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    vendor: str
    model: str
    type: str
    municipality: str
    status: str
    attributes: dict[str, Any]
    registered_at: datetime
    last_seen: datetime | None
    battery: float | None
    signal: float | None
    firmware: str | None
    seq_gaps: int

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, datetime):
                d[k] = v.isoformat()
        return d


def import_csv(conn: psycopg.Connection, source: str | Path, *, actor: str,
               text: str | None = None) -> ImportResult:
    """Register or update the devices of a CSV file (or of `text`, named `source`)."""
    if text is None:
        text = Path(source).read_text(encoding="utf-8-sig")
    rows = _validated_rows(str(source), text)
    with conn.transaction():
        conn.execute("""CREATE TEMP TABLE IF NOT EXISTS stage_devices (
                            device_id text, vendor text, model text, type text,
                            municipality text, attributes text) ON COMMIT DELETE ROWS""")
        with conn.cursor().copy("COPY stage_devices FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
        created, updated = conn.execute("""
            WITH up AS (
                INSERT INTO devices (device_id, vendor, model, type, municipality, attributes)
                SELECT device_id, vendor, model, type, municipality, attributes::jsonb
                FROM stage_devices
                ON CONFLICT (device_id) DO UPDATE SET
                    vendor = EXCLUDED.vendor, model = EXCLUDED.model, type = EXCLUDED.type,
                    municipality = EXCLUDED.municipality, attributes = EXCLUDED.attributes
                RETURNING (xmax = 0) AS created)
            SELECT count(*) FILTER (WHERE created), count(*) FILTER (WHERE NOT created) FROM up
        """).fetchone() or (0, 0)
        conn.execute("INSERT INTO audit_log (actor, action, subject, details) "
                     "VALUES (%s, 'devices.import', %s, %s::jsonb)",
                     (actor, str(source),
                      orjson.dumps({"created": created, "updated": updated}).decode()))
    return ImportResult(int(created), int(updated))


def _validated_rows(source: str, text: str) -> list[tuple[str, ...]]:
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    problems: list[str] = []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise DeviceImportError(source, [f"the header lacks the column(s) {', '.join(missing)}; "
                                         f"required: {','.join(REQUIRED)}"])
    cpr_cols = [h for h in header if _CPR_COLUMN.match(h)]
    if cpr_cols:
        raise DeviceImportError(source, [f"column '{c}' looks like a civil registration (CPR) "
                                         "number; vagt never stores those: use a pseudonymous "
                                         "citizen reference" for c in cpr_cols])
    pos = {h: i for i, h in enumerate(header)}
    extra = [h for h in header if h not in REQUIRED and h]
    seen: dict[str, int] = {}
    rows: list[tuple[str, ...]] = []
    for line, values in enumerate(reader, start=2):
        if not any(v.strip() for v in values):
            continue
        values = [v.strip() for v in values] + [""] * (len(header) - len(values))
        problems += _row_problems(line, values, pos, header, seen)
        attributes = {h: values[pos[h]] for h in extra if values[pos[h]]}
        rows.append((*(values[pos[c]] for c in REQUIRED), orjson.dumps(attributes).decode()))
    if problems:
        raise DeviceImportError(source, problems)
    return rows


def _row_problems(line: int, values: list[str], pos: dict[str, int], header: list[str],
                  seen: dict[str, int]) -> list[str]:
    problems = [f"line {line}: '{c}' is empty" for c in REQUIRED if not values[pos[c]]]
    device_id = values[pos["device_id"]]
    if device_id and not DEVICE_ID.match(device_id):
        problems.append(f"line {line}: device_id '{device_id}' must be 1 to 64 of "
                        "A-Z a-z 0-9 . _ : -")
    if device_id in seen:
        problems.append(f"line {line}: device_id '{device_id}' is also on line {seen[device_id]}")
    seen.setdefault(device_id, line)
    for h, v in zip(header, values):
        if _CPR_VALUE.match(v):
            problems.append(f"line {line}: column '{h}' holds what looks like a civil "
                            "registration (CPR) number; vagt never stores those")
    return problems


def list_devices(conn: psycopg.Connection, *, municipality: str | None = None,
                 vendor: str | None = None, type: str | None = None) -> list[DeviceRow]:
    rows = conn.execute(
        """SELECT device_id, vendor, model, type, municipality, status, attributes,
                  registered_at, last_seen, battery, signal, firmware, seq_gaps
           FROM devices
           WHERE (%(m)s::text IS NULL OR municipality = %(m)s)
             AND (%(v)s::text IS NULL OR vendor = %(v)s)
             AND (%(t)s::text IS NULL OR type = %(t)s)
           ORDER BY device_id""",
        {"m": municipality, "v": vendor, "t": type}).fetchall()
    return [DeviceRow(*r) for r in rows]
