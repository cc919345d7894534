"""The registry's CSV file: read and validated whole, every problem named by line and column.

Columns: device_id, vendor, model, type, municipality (required, any order, any case);
status and citizen_ref (optional); any other column is kept as an attribute. No civil
registration (CPR) number passes: a column named like one, or a value with one in it,
refuses the file, and the number is never repeated in a message. Nor does a column named
for a citizen's name, address, phone number or e-mail.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vagt.devices.broker_access import BROKER_USER_CHARS
from vagt.devices.catalogue import Catalogue, CatalogueError
from vagt.devices.lifecycle import Status
from vagt.devices.privacy import (
    CPR_ADVICE,
    PERSONAL_DATA_ADVICE,
    citizen_ref_problem,
    looks_like_cpr_name,
    looks_like_personal_data_name,
    municipality_problem,
    same_spelling,
)
from vagt.ingest.topics import DEVICE_ID
from vagt.privacy import contains_cpr, looks_like_cpr
from vagt.text import shown, unprintable_problem

if TYPE_CHECKING:
    import _csv

REQUIRED_COLUMNS = ("device_id", "vendor", "model", "type", "municipality")
OPTIONAL_COLUMNS = ("status", "citizen_ref")
MAX_PROBLEMS_SHOWN = 20

_STATUSES = ", ".join(s.value for s in Status)


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
class FileRow:
    """One device as the file gives it; vendor, model and type as the catalogue spells them."""

    line: int
    device_id: str
    vendor: str
    model: str
    type: str
    municipality: str                  # "" = the centre's own stock
    attributes: dict[str, str]
    status: Status | None              # None: the file does not say
    citizen_ref: str | None            # given: the device is deployed to this citizen

    @property
    def new_status(self) -> Status:
        """The status of a device this row registers."""
        if self.status is not None:
            return self.status
        return Status.DEPLOYED if self.citizen_ref else Status.IN_STOCK


def read_source(path_or_text: str | os.PathLike[str],
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


def parse_devices_csv(text: str, catalogue: Catalogue, *,
                      source: str = "(CSV text)") -> list[FileRow]:
    """Validate a registry CSV whole: its rows, or DeviceImportError listing every problem."""
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
    checker = _RowChecker(header, catalogue)
    rows: list[FileRow] = []
    try:
        for line, values in _records(reader):
            row_problems, row = checker.check(line, values)
            problems += row_problems
            if row is not None:
                rows.append(row)
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
    problems += [f"the column {_column_name(header, i)} looks like a civil registration (CPR) "
                 f"number; {CPR_ADVICE}" for i, h in enumerate(header) if looks_like_cpr_name(h)]
    problems += [f"line 1, column {_column_name(header, i)}: {problem}"
                 for i, h in enumerate(header) if (problem := unprintable_problem(h, "its name"))]
    problems += [f"the column '{h}' looks like personal data about a citizen; "
                 f"{PERSONAL_DATA_ADVICE}" for h in header
                 if h.lower() not in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
                 and not looks_like_cpr_name(h) and looks_like_personal_data_name(h)]
    return problems


class _RowChecker:
    """Checks the data rows of one file against its header, remembering device ids seen."""

    def __init__(self, header: list[str], catalogue: Catalogue) -> None:
        self.header = header
        self.catalogue = catalogue
        names = [h.lower() for h in header]
        self.required = [names.index(c) for c in REQUIRED_COLUMNS]
        self.optional = {c: names.index(c) for c in OPTIONAL_COLUMNS if c in names}
        known = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
        self.extra = [i for i, h in enumerate(names)
                      if h and h not in known and names.index(h) == i]
        # what is read or kept; a column without a name (the staff's own jottings) is not
        self.kept = {*self.required, *self.optional.values(), *self.extra}
        self.seen: dict[str, int] = {}
        self.cpr_columns = {i for i, h in enumerate(header) if looks_like_cpr_name(h)}

    def check(self, line: int, values: list[str]) -> tuple[list[str], FileRow | None]:
        """The row's problems, and the row when it has none."""
        width = len(self.header)
        if len(values) > width and any(values[width:]):
            return [f"line {line}: {len(values)} values but the header has {width} columns "
                    "(a value with a comma in it must be in double quotes)"], None
        values = values + [""] * (width - len(values))
        cpr = [f"line {line}, column {_column_name(self.header, i)}: {problem}; {CPR_ADVICE}"
               for i, v in enumerate(values) if (problem := self._cpr_problem(i, v))]
        unprintable = [f"line {line}, column {_column_name(self.header, i)}: {problem}"
                       for i, v in enumerate(values) if i in self.kept and (
                           problem := unprintable_problem(v, "the value",
                                                          line_breaks=i in self.extra))]
        if unprintable:   # the checks below would repeat the value in their messages
            return [*cpr, *unprintable], None
        device_id, vendor, model, type_, municipality = (values[i] for i in self.required)
        empty = [f"line {line}: column '{REQUIRED_COLUMNS[k]}' is empty"
                 for k, i in enumerate(self.required[:4]) if not values[i]]
        status, citizen_ref = self._get("status", values), self._get("citizen_ref", values)
        problems = [*cpr, *empty, *self._device_id_problems(line, device_id)]
        model_problem, approved = self._model(vendor, model, type_)
        if model_problem:
            problems.append(f"line {line}: {model_problem}")
        problems += self._assignment_problems(line, status, citizen_ref, municipality)
        if problems or approved is None:
            return problems, None
        return [], FileRow(
            line=line, device_id=device_id, vendor=approved[0], model=approved[1],
            type=approved[2], municipality=same_spelling(municipality),
            attributes={self.header[i]: values[i] for i in self.extra if values[i]},
            status=Status(status) if status else None, citizen_ref=citizen_ref or None)

    def _cpr_problem(self, i: int, value: str) -> str | None:
        """Why the value in column `i` cannot be kept for a CPR number in it, or None. The
        citizen_ref column says it itself; a device id is a CPR number only when the whole
        of it is one, as a known device may have ten digits in it (a new one may not:
        the registry says so)."""
        if i == self.optional.get("citizen_ref"):
            return None
        if looks_like_cpr(value):
            return "the value looks like a civil registration (CPR) number"
        if i != self.required[0] and contains_cpr(value, cpr_column=i in self.cpr_columns):
            return "the value holds something shaped like a civil registration (CPR) number"
        return None

    def _get(self, column: str, values: list[str]) -> str:
        i = self.optional.get(column)
        return "" if i is None else values[i]

    def _model(self, vendor: str, model: str,
               type_: str) -> tuple[str | None, tuple[str, str, str] | None]:
        if not (vendor and model and type_):
            return None, None  # already reported as empty
        try:
            m = self.catalogue.require(vendor, model, type_)
        except CatalogueError as e:
            return str(e), None
        return None, (m.vendor, m.model, m.type)

    def _assignment_problems(self, line: int, status: str, citizen_ref: str,
                             municipality: str) -> list[str]:
        at = f"line {line}:"
        if status and status not in Status.__members__.values():
            return [f"{at} status '{status[:40]}' is not a lifecycle status; one of {_STATUSES}"]
        problems: list[str] = []
        if municipality and (problem := municipality_problem(municipality)):
            problems.append(f"{at} {problem}")
        if citizen_ref:
            if problem := citizen_ref_problem(citizen_ref):
                problems.append(f"{at} column 'citizen_ref': {problem}")
            if status and status != Status.DEPLOYED:
                problems.append(f"{at} a citizen_ref means the device is deployed to that "
                                f"citizen, but its status is {status}: leave one of them out")
        elif status == Status.DEPLOYED:
            problems.append(f"{at} a deployed device needs the citizen_ref of the citizen "
                            "who has it")
        if (citizen_ref or status == Status.DEPLOYED) and not municipality:
            problems.append(f"{at} a deployed device needs its municipality (column "
                            "'municipality' is empty)")
        return problems

    def _device_id_problems(self, line: int, device_id: str) -> list[str]:
        if not device_id or looks_like_cpr(device_id):
            return []  # already reported; a CPR-like value is never repeated in a message
        first = self.seen.setdefault(device_id, line)
        if first != line:
            return [f"line {line}: device_id '{_shorten(device_id)}' is also on line {first}"]
        if not DEVICE_ID.match(device_id):
            return [f"line {line}: device_id '{_shorten(device_id)}' is not valid: use 1 to 64 "
                    f"of {BROKER_USER_CHARS}"]
        return []



def _column_name(header: list[str], i: int) -> str:
    """How a message names a column: its name in quotes, or its place when it has no name
    or its name holds a CPR number (which a message never repeats)."""
    name = header[i]
    if not name:
        return f"#{i + 1} (no name)"
    if contains_cpr(name):
        return f"#{i + 1} (its name not shown)"
    return f"'{shown(name)}'"


def _shorten(value: str, limit: int = 70) -> str:
    return value if len(value) <= limit else value[:limit] + "..."
