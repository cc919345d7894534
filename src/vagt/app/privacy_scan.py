"""Where the database holds something shaped like a CPR number: `vagt privacy scan`.

vagt refuses a CPR number wherever a person or a device writes text (`vagt.privacy`), but a
database written before a check was there, or widened since (migration 0017 took citizen
references in hand; the other columns are reported here), may hold one. The scan reads every
column where text from outside lands and reports, per table and column, how many rows hold
one and which (by their key): never the value, which the report must not spread either.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg

from vagt.privacy import contains_cpr

# (table, key, column as text): every column a person, a file or a device writes text into.
# Table and column names are ours, never input: they are safe in the SQL.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("alerts", "id", "note"),
    ("alerts", "id", "suppressed_reason"),
    ("alerts", "id", "labels::text"),
    ("alert_audit", "id", "actor"),
    ("alert_audit", "id", "note"),
    ("alert_audit", "id", "details::text"),
    ("alert_outbox", "id", "payload::text"),
    ("audit_log", "id", "actor"),
    ("audit_log", "id", "subject"),
    ("audit_log", "id", "details::text"),
    ("silences", "id", "author"),
    ("silences", "id", "comment"),
    ("silences", "id", "matchers::text"),
    ("silences", "id", "expired_by"),
    ("devices", "device_id", "device_id"),
    ("devices", "device_id", "municipality"),
    ("devices", "device_id", "attributes::text"),
    ("device_assignments", "id", "citizen_ref"),
    ("device_assignments", "id", "municipality"),
    ("operators", "username", "username"),
    ("operators", "username", "municipality"),
    ("api_tokens", "id", "name"),
    ("dead_letters", "id", "encode(payload, 'escape')"),   # a device's bytes, any of them
    ("dead_letters", "id", "topic"),
)

# Six digits with at most one other character between each pair: every CPR shape passes,
# most text does not, and PostgreSQL does the first sifting.
_SIFT = "[0-9]{2}[^0-9]?[0-9]{2}[^0-9]?[0-9]{2}"
# Rows named per column in the report; the count is of all.
SHOWN = 20


@dataclass
class Finding:
    table: str
    column: str
    rows: int = 0
    keys: list[str] = field(default_factory=list)    # the first SHOWN

    def to_json(self) -> dict[str, object]:
        return {"table": self.table, "column": self.column, "rows": self.rows,
                "keys": self.keys}


def scan(conn: psycopg.Connection) -> list[Finding]:
    """Per column of COLUMNS that holds one in some row: how many rows, and their keys."""
    found = []
    for table, key, column in COLUMNS:
        finding = Finding(table, _name(column))
        for row_key, text in _sifted(conn, table, key, column):
            if contains_cpr(text):
                finding.rows += 1
                if len(finding.keys) < SHOWN:
                    finding.keys.append(str(row_key))
        if finding.rows:
            found.append(finding)
    return found


def _sifted(conn: psycopg.Connection, table: str, key: str, column: str
            ) -> Iterator[tuple[object, str]]:
    """The rows whose column passes PostgreSQL's sifting, read in portions (a server-side
    cursor: an audit log of years is not read into memory at once)."""
    query = (f"SELECT {key}, {column} FROM {table} "          # names are ours (COLUMNS)
             f"WHERE {column} ~ %s ORDER BY {key}")
    with conn.transaction(), conn.cursor(name=f"vagt_privacy_{table}") as cur:
        cur.execute(query, (_SIFT,))
        for row_key, text in cur:
            yield row_key, str(text)


def _name(column: str) -> str:
    """The column's name in its expression ("labels::text", "encode(payload, 'escape')")."""
    return column.split("::")[0].replace("encode(", "").split(",")[0]
