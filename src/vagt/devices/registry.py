"""The device registry: CSV import (validated whole before anything is written) and listing.

No civil registration (CPR) numbers are ever stored: a column or value that looks like one
refuses the whole file.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb, set_json_loads

from vagt.ingest.topics import DEVICE_ID

if TYPE_CHECKING:
    import _csv

REQUIRED_COLUMNS = ("device_id", "vendor", "model", "type", "municipality")
MAX_PROBLEMS_SHOWN = 20
MAX_ACTOR_LENGTH = 100

# Matched against a column name in lower case with separators as "_": cpr, cpr_nr, CPR-nummer,
# personnummer, person_nr, civil_registration_number, ...
_CPR_COLUMN = re.compile(r"^(cpr|person_?n(umme)?r|person_?number|civil_?reg)")
_CPR_VALUE = re.compile(r"^\d{6}-?\d{4}$")
_CPR_ADVICE = "vagt never stores CPR numbers: remove it (a pseudonymous citizen reference may stay)"

# One validated row: the required columns in REQUIRED_COLUMNS order, then attributes as JSON.
_StagedRow = tuple[str, str, str, str, str, str]


class DeviceImportError(ValueError):
    """The file was refused and nothing was written; `problems` lists everything to fix."""

    def __init__(self, source: str, problems: list[str]) -> None:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        lines = [f"{source}: nothing imported, {len(problems)} problem(s):", *shown]
        if more:
            lines.append(f"... and {more} more")
        super().__init__("\n  ".join(lines))
        self.source = source
        self.problems = problems


@dataclass(frozen=True)
class ImportResult:
    """What an import did: devices new to the registry, changed, and already as in the file."""

    created: int
    updated: int
    unchanged: int

    @property
    def total(self) -> int:
        return self.created + self.updated + self.unchanged


@dataclass(frozen=True)
class DeviceRow:
    """A registered device with its fleet state, as stored."""

    device_id: str
    vendor: str
    model: str
    type: str
    municipality: str
    status: str
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


# --- import ------------------------------------------------------------------------------


def import_csv(conn: psycopg.Connection, path_or_text: str | os.PathLike[str], *, actor: str,
               text: str | None = None) -> ImportResult:
    """Register new devices and update known ones from a CSV file, in one transaction.

    `path_or_text` is a file path, or the CSV itself (a str with a line break). With `text`,
    `path_or_text` only names the source. The file is checked whole first: any problem raises
    `DeviceImportError` listing them all, and nothing is written. One audit_log row per import.
    """
    name, label, content = _read_source(path_or_text, text)
    actor = _checked_actor(label, actor)
    rows = _parse_devices_csv(content, source=label)
    with conn.transaction():
        result = _upsert_devices(conn, rows)
        _audit_import(conn, actor, name, result)
    return result


def _read_source(path_or_text: str | os.PathLike[str],
                 text: str | None) -> tuple[str, str, str]:
    """(file name for the audit log, name for messages, CSV text)."""
    if text is not None:
        name = str(path_or_text)
        return Path(name).name or name, name, text.removeprefix("\ufeff")
    if isinstance(path_or_text, str) and "\n" in path_or_text:
        return "(CSV text)", "(CSV text)", path_or_text.removeprefix("\ufeff")
    path = Path(path_or_text)
    try:
        return path.name, str(path), path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DeviceImportError(str(path), [
            f"the file is not UTF-8 text (byte {e.start}): save it as 'CSV UTF-8'"]) from e
    except OSError as e:
        raise DeviceImportError(str(path), [f"cannot read the file: {e.strerror}"]) from e


def _checked_actor(source: str, actor: str) -> str:
    actor = actor.strip()
    if not 0 < len(actor) <= MAX_ACTOR_LENGTH:
        raise DeviceImportError(source, [
            f"who imports must be named (actor): 1 to {MAX_ACTOR_LENGTH} characters"])
    return actor


def _parse_devices_csv(text: str, *, source: str = "(CSV text)") -> list[_StagedRow]:
    """Validate a registry CSV whole; the rows ready to stage, or DeviceImportError."""
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(text), strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DeviceImportError(source, [
            "the file is empty: the first line must be the header "
            f"{','.join(REQUIRED_COLUMNS)}"]) from None
    except csv.Error as e:
        raise DeviceImportError(source, [f"line 1: {e}"]) from e
    problems = _header_problems(header)
    if _missing_columns(header):
        raise DeviceImportError(source, problems)
    checker = _RowChecker(header)
    rows: list[_StagedRow] = []
    try:
        for line, values in _records(reader):
            row_problems = checker.problems(line, values)
            problems += row_problems
            if not row_problems:
                rows.append(checker.staged(values))
    except csv.Error as e:
        problems.append(f"line {reader.line_num}: {e} (is a double quote left open?)")
    if problems:
        raise DeviceImportError(source, problems)
    return rows


def _delimiter(text: str) -> str:
    """',' as the header says; ';' too, as a spreadsheet set to Danish saves CSV."""
    first_line = text.split("\n", 1)[0]
    return ";" if ";" in first_line and "," not in first_line else ","


def _records(reader: _csv.Reader) -> Iterator[tuple[int, list[str]]]:
    """Each non-blank record with the line it starts on (a quoted value may span lines)."""
    start = reader.line_num + 1
    for values in reader:
        if any(v.strip() for v in values):
            yield start, [v.strip() for v in values]
        start = reader.line_num + 1


def _missing_columns(header: list[str]) -> list[str]:
    names = [h.lower() for h in header]
    return [c for c in REQUIRED_COLUMNS if c not in names]


def _header_problems(header: list[str]) -> list[str]:
    problems: list[str] = []
    missing = _missing_columns(header)
    if missing:
        problems.append(f"the header lacks the column(s) {', '.join(missing)}; required "
                        f"(in any order): {','.join(REQUIRED_COLUMNS)}")
    names = [h.lower() for h in header]
    repeated = sorted({h for h in names if h and names.count(h) > 1})
    if repeated:
        problems.append(f"the header names the column(s) {', '.join(repeated)} more than once")
    problems += [f"the column '{h}' looks like a civil registration (CPR) number; {_CPR_ADVICE}"
                 for h in header if _looks_like_cpr_column(h)]
    return problems


def _looks_like_cpr_column(name: str) -> bool:
    return bool(_CPR_COLUMN.match(re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")))


class _RowChecker:
    """Checks the data rows of one file against its header, remembering device ids seen."""

    def __init__(self, header: list[str]) -> None:
        self.header = header
        names = [h.lower() for h in header]
        self.required = [names.index(c) for c in REQUIRED_COLUMNS]
        self.extra = [i for i, h in enumerate(names)
                      if h and h not in REQUIRED_COLUMNS and names.index(h) == i]
        self.seen: dict[str, int] = {}

    def problems(self, line: int, values: list[str]) -> list[str]:
        width = len(self.header)
        if len(values) > width and any(values[width:]):
            return [f"line {line}: {len(values)} values but the header has {width} columns "
                    "(a value with a comma in it must be in double quotes)"]
        values = self._padded(values)
        cpr = [f"line {line}, column '{self._name(i)}': the value looks like a civil "
               f"registration (CPR) number; {_CPR_ADVICE}"
               for i, v in enumerate(values) if _CPR_VALUE.match(v)]
        empty = [f"line {line}: column '{REQUIRED_COLUMNS[k]}' is empty"
                 for k, i in enumerate(self.required) if not values[i]]
        return cpr + empty + self._device_id_problems(line, values[self.required[0]])

    def _device_id_problems(self, line: int, device_id: str) -> list[str]:
        if not device_id or _CPR_VALUE.match(device_id):
            return []  # already reported; a CPR-like value is never repeated in a message
        first = self.seen.setdefault(device_id, line)
        if first != line:
            return [f"line {line}: device_id '{_shorten(device_id)}' is also on line {first}"]
        if not DEVICE_ID.match(device_id):
            return [f"line {line}: device_id '{_shorten(device_id)}' is not valid: use 1 to 64 "
                    "of A-Z a-z 0-9 . _ : -"]
        return []

    def staged(self, values: list[str]) -> _StagedRow:
        values = self._padded(values)
        device_id, vendor, model, type_, municipality = (values[i] for i in self.required)
        attributes = {self.header[i]: values[i] for i in self.extra if values[i]}
        return (device_id, vendor, model, type_, municipality,
                orjson.dumps(attributes).decode())

    def _padded(self, values: list[str]) -> list[str]:
        return values + [""] * (len(self.header) - len(values))

    def _name(self, i: int) -> str:
        return self.header[i] or f"#{i + 1} (no name)"


def _shorten(value: str, limit: int = 70) -> str:
    return value if len(value) <= limit else value[:limit] + "..."


_STAGE = """CREATE TEMP TABLE vagt_devices_import (
                device_id text, vendor text, model text, type text, municipality text,
                attributes jsonb) ON COMMIT DROP"""

# (xmax = 0) tells a row inserted now from one updated; unchanged rows are not rewritten.
_UPSERT = """
WITH upserted AS (
    INSERT INTO devices AS d (device_id, vendor, model, type, municipality, attributes)
    SELECT device_id, vendor, model, type, municipality, attributes FROM vagt_devices_import
    ON CONFLICT (device_id) DO UPDATE SET
        vendor = EXCLUDED.vendor, model = EXCLUDED.model, type = EXCLUDED.type,
        municipality = EXCLUDED.municipality, attributes = EXCLUDED.attributes
    WHERE (d.vendor, d.model, d.type, d.municipality, d.attributes)
          IS DISTINCT FROM (EXCLUDED.vendor, EXCLUDED.model, EXCLUDED.type,
                            EXCLUDED.municipality, EXCLUDED.attributes)
    RETURNING (xmax = 0) AS created)
SELECT count(*) FILTER (WHERE created), count(*) FILTER (WHERE NOT created) FROM upserted
"""


def _upsert_devices(conn: psycopg.Connection, rows: list[_StagedRow]) -> ImportResult:
    conn.execute(_STAGE)
    with conn.cursor().copy("COPY vagt_devices_import FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    counts = conn.execute(_UPSERT).fetchone()
    # Dropped now, not only at commit: the caller's transaction may import again.
    conn.execute("DROP TABLE vagt_devices_import")
    created, updated = counts if counts is not None else (0, 0)
    return ImportResult(created, updated, len(rows) - created - updated)


def _audit_import(conn: psycopg.Connection, actor: str, file_name: str,
                  result: ImportResult) -> None:
    conn.execute(
        "INSERT INTO audit_log (actor, action, subject, details) VALUES (%s, %s, %s, %s)",
        (actor, "devices.import", file_name,
         Jsonb({"rows": result.total, "created": result.created, "updated": result.updated,
                "unchanged": result.unchanged})))


# --- listing -----------------------------------------------------------------------------

_DEVICE_COLUMNS = sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(DeviceRow))


def list_devices(conn: psycopg.Connection, *, municipality: str | None = None,
                 vendor: str | None = None, type: str | None = None) -> list[DeviceRow]:
    """Registered devices with their fleet state, ordered by device_id; filters are exact."""
    wanted = {name: value for name, value in
              (("municipality", municipality), ("vendor", vendor), ("type", type))
              if value is not None}
    conditions: list[sql.Composable] = [
        sql.SQL("{} = %s").format(sql.Identifier(name)) for name in wanted]
    where = sql.SQL(" AND ").join(conditions or [sql.SQL("true")])
    query = sql.SQL("SELECT {} FROM devices WHERE {} ORDER BY device_id").format(
        _DEVICE_COLUMNS, where)
    with conn.cursor(row_factory=class_row(DeviceRow)) as cur:
        set_json_loads(orjson.loads, cur)  # this cursor only: the caller's adapters stay
        return cur.execute(query, list(wanted.values())).fetchall()
