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
from typing import Any, Literal

import psycopg
from psycopg import sql

from vagt.devices.privacy import looks_like_cpr_name
from vagt.privacy import contains_cpr, mask_cpr


@dataclass(frozen=True)
class Column:
    """A column text from outside lands in. `kind` says how its text is read: `jsonb` by its
    strings (names and values), `bytea` as UTF-8. A column that is (part of) a key others
    refer to is reported and never rewritten (`scrubbed` False): it is renamed by hand."""
    table: str
    column: str
    kind: Literal["text", "jsonb", "bytea"] = "text"
    key: tuple[str, ...] = ("id",)
    scrubbed: bool = True


# Every column a person, a file or a device writes text into.
COLUMNS: tuple[Column, ...] = (
    Column("alerts", "note"),
    Column("alerts", "suppressed_reason"),
    Column("alerts", "summary"),                    # a rule's text, filled from labels
    Column("alerts", "labels", "jsonb"),
    Column("alert_audit", "actor"),
    Column("alert_audit", "note"),
    Column("alert_audit", "details", "jsonb"),
    Column("alert_outbox", "payload", "jsonb"),
    Column("alert_deliveries", "last_error", key=("outbox_id", "target")),  # a peer's answer
    Column("audit_log", "actor"),
    Column("audit_log", "subject"),
    Column("audit_log", "details", "jsonb"),
    Column("silences", "author"),
    Column("silences", "comment"),
    Column("silences", "matchers", "jsonb"),
    Column("silences", "expired_by"),
    Column("devices", "device_id", key=("device_id",), scrubbed=False),
    Column("devices", "municipality", key=("device_id",)),
    Column("devices", "attributes", "jsonb", key=("device_id",)),
    Column("devices", "firmware", key=("device_id",)),     # any printable text a device sends
    Column("device_assignments", "citizen_ref"),
    Column("device_assignments", "municipality"),
    Column("operators", "username", key=("username",), scrubbed=False),
    Column("operators", "municipality", key=("username",)),
    Column("api_tokens", "name"),
    Column("events", "code", key=("device_id", "code", "time"), scrubbed=False),
    Column("events", "details", "jsonb", key=("device_id", "code", "time")),  # not decoded
    Column("dead_letters", "payload", "bytea"),     # a device's bytes, any of them
    Column("dead_letters", "topic"),
    Column("dead_letters", "detail"),               # quotes what the device sent
    Column("dead_letters", "device_id"),            # what the topic claimed, unknown or not
)

# The text columns the scan leaves out, and why: each holds only what vagt itself or its
# configuration writes, a digest, or a copy of a column scanned above. A test lists the
# schema's text columns and fails on one in neither place.
SKIPPED: dict[tuple[str, str], str] = {
    **{(t, c): "a name from vagt's code, rules or alert policy" for t, c in [
        ("alert_audit", "action"), ("alert_audit", "from_status"), ("alert_audit", "to_status"),
        ("alert_outbox", "event"), ("alerts", "extra_queues"), ("alerts", "queue"),
        ("alerts", "route"), ("alerts", "rule"), ("alerts", "severity"),
        ("alerts", "status"), ("alerts", "resolution_code"), ("audit_log", "action"),
        ("dead_letters", "reason"), ("devices", "status"), ("events", "severity"),
        ("operators", "role"), ("operators", "queues"), ("rule_state_layouts", "spec"),
        ("schema_migrations", "name"), ("schema_migrations", "flavour"),
        ("hourly_refresh", "name"),
        ("delivery_targets", "kind"), ("delivery_targets", "events")]},
    **{(t, c): "a copy of devices.device_id" for t, c in [
        ("alerts", "device_id"), ("bad_readings", "device_id"), ("events", "device_id"),
        ("readings", "device_id"), ("rule_state", "device_id"),
        ("device_assignments", "device_id"), ("readings_hourly", "device_id"),
        ("events_hourly", "device_id"), ("device_daily", "device_id"),
        ("device_hours_folded", "device_id"),
        # plain PostgreSQL's alone (0023), and TimescaleDB's alone (0022's aggregates)
        ("device_weekly", "device_id"),
        ("readings_daily", "device_id"), ("events_daily", "device_id")]},
    **{(t, c): "a copy of operators.username" for t, c in [
        ("alerts", "acknowledged_by"), ("alerts", "claimed_by"), ("alerts", "resolved_by"),
        ("api_tokens", "username")]},
    **{(t, c): "a model or metric the catalogue and the decoder allow" for t, c in [
        ("bad_readings", "metric"), ("bad_readings", "model"), ("bad_readings", "vendor"),
        ("devices", "model"), ("devices", "type"), ("devices", "vendor"),
        ("readings", "metric"), ("readings", "unit")]},
    **{(t, c): "a digest, a hash or packed numbers" for t, c in [
        ("alerts", "fingerprint"), ("api_tokens", "token_sha256"), ("dead_letters", "digest"),
        ("operators", "password_hash"), ("rule_state", "slots"), ("rule_state", "vals"),
        ("rule_state", "prev_slots"), ("rule_state", "prev_vals")]},
    ("rule_state", "texts"): "event codes the rules wait on: copies of events.code",
    ("rule_state", "prev_texts"): "event codes the rules waited on: copies of events.code",
    ("alerts", "municipality"): "a copy of the device's or assignment's municipality",
    ("delivery_targets", "name"): "a name from the configuration file, and a key",
    ("alert_deliveries", "target"): "a copy of delivery_targets.name",
}

# Six digits, the pairs at most a few other characters apart (a separator, white space, or
# its escape in JSON's text, "\n"): every CPR shape passes, most text does not, and
# PostgreSQL does the first sifting. Bytes are not sifted: a non-ASCII separator has no
# fixed length in PostgreSQL's escaped text of them.
_SIFT = "[0-9]{2}[^0-9]{0,8}[0-9]{2}[^0-9]{0,8}[0-9]{2}"
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
    for column in COLUMNS:
        finding = Finding(column.table, column.column)
        for key, value in candidates(conn, column):
            if holds_cpr(column, value):
                finding.rows += 1
                if len(finding.keys) < SHOWN:
                    finding.keys.append(shown_key(key))
        if finding.rows:
            found.append(finding)
    return found


def holds_cpr(column: Column, value: Any) -> bool:
    return any(contains_cpr(text, cpr_column=cpr_named)
               for text, cpr_named in texts(column, value))


def texts(column: Column, value: Any) -> Iterator[tuple[str, bool]]:
    """The texts a value of the column holds, as a reader would see them, each with whether
    it is read as in a column named for CPR numbers (see `json_strings`)."""
    if column.kind == "bytea":
        # Bytes that are no UTF-8 become lone surrogates, which no CPR shape takes in (as
        # PostgreSQL's escaped octal digits would be) and which encode back to the same bytes.
        yield bytes(value).decode("utf-8", "surrogateescape"), False
    elif column.kind == "jsonb":
        yield from json_strings(value)
    else:
        yield str(value), False


def json_strings(doc: Any, cpr_named: bool = False) -> Iterator[tuple[str, bool]]:
    """The strings of a JSON document, names and values, each with whether a name above it
    announces a CPR number (`cpr_named`): there, as in an import's column so named, nine
    digits are one too, whose zero a spreadsheet dropped (`{"CPR-nr": "101901234"}`).
    Numbers are left out: a time in epoch seconds (1712345678) is shaped as a CPR number,
    and a number cannot be masked."""
    if isinstance(doc, str):
        yield doc, cpr_named
    elif isinstance(doc, dict):
        for name, value in doc.items():
            yield name, cpr_named
            yield from json_strings(value, announces_cpr(name, cpr_named))
    elif isinstance(doc, list):
        for value in doc:
            yield from json_strings(value, cpr_named)


def announces_cpr(name: str, cpr_named: bool) -> bool:
    """What is under the JSON name `name` is named for CPR numbers: a name above it was, or
    this one is, as the import judges a column's name (`looks_like_cpr_name`)."""
    return cpr_named or looks_like_cpr_name(name)


def candidates(conn: psycopg.Connection, column: Column
               ) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(key, value) of the rows whose column passes PostgreSQL's sifting, read in portions
    (a server-side cursor: an audit log of years is not read into memory at once)."""
    name = sql.Identifier(column.column)
    sifted = (sql.SQL("TRUE") if column.kind == "bytea" else
              sql.SQL("{}::text ~ {}").format(name, sql.Literal(_SIFT)))
    keys = sql.SQL(", ").join(map(sql.Identifier, column.key))
    query = sql.SQL("SELECT {}, {} FROM {} WHERE {} ORDER BY {}").format(
        keys, name, sql.Identifier(column.table), sifted, keys)
    with conn.transaction(), conn.cursor(name=f"vagt_privacy_{column.table}") as cur:
        cur.execute(query)
        for row in cur:
            yield tuple(row[:-1]), row[-1]


def shown_key(key: tuple[Any, ...]) -> str:
    """A row's key as the report shows it; a key that is itself one (a device id) masked."""
    return mask_cpr("/".join(str(part) for part in key))[0]
