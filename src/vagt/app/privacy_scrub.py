"""Removing what `vagt privacy scan` finds: `vagt privacy scrub`.

Each CPR-shaped run in a scanned column is replaced by `vagt.privacy.CPR_MASK`, the rest of
the text kept; each changed row is audited in `audit_log` (`privacy.scrubbed`: who, why,
which table, column and row, how many), never with the value.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from vagt.app.privacy_scan import COLUMNS, Column, announces_cpr, candidates, holds_cpr, shown_key
from vagt.privacy import mask_cpr, without_cpr

# Rows changed per transaction: the rows a scrub locks are few and briefly held, and the
# engine, which writes some of the same tables, waits at most one batch.
BATCH = 200


class ScrubRefused(ValueError):
    """Who scrubs or why is missing, or holds a CPR number itself; nothing was changed."""


@dataclass
class Scrubbed:
    table: str
    column: str
    rows: int = 0           # rows changed (in a dry run: that would be)
    masked: int = 0         # CPR-shaped runs replaced
    left: int = 0           # rows holding one in a key column, which a scrub never changes

    def to_json(self) -> dict[str, object]:
        return {"table": self.table, "column": self.column, "rows": self.rows,
                "masked": self.masked, "left": self.left}


def scrub(conn: psycopg.Connection, actor: str, reason: str, *,
          dry_run: bool = False, via: str | None = None) -> list[Scrubbed]:
    """Mask every CPR-shaped run in the columns of COLUMNS; per column that held one, what
    was done. A dry run changes nothing and writes no audit row. `via`: how the actor came
    (`cli:USER`, the command's login: `--actor` is typed)."""
    actor, reason = _checked(actor, "actor"), _checked(reason, "reason")
    done = []
    for column in COLUMNS:
        hits = [key for key, value in candidates(conn, column) if holds_cpr(column, value)]
        if not hits:
            continue
        result = Scrubbed(column.table, column.column)
        if not column.scrubbed:
            result.left = len(hits)
        elif dry_run:
            result.rows = len(hits)
            with conn.transaction():
                result.masked = sum(_masked(column, _value(conn, column, key))[1]
                                    for key in hits)
        else:
            for batch in _batches(hits):
                with conn.transaction():
                    for key in batch:
                        _scrub_row(conn, column, key, actor, reason, via, result)
        done.append(result)
    return done


def _checked(text: str, what: str) -> str:
    text = " ".join(text.split())
    if not text:
        raise ScrubRefused(f"give the {what} (--{what}): every scrub is audited with who "
                           "did it and why; nothing was changed")
    return without_cpr(text, what)


def _batches(keys: list[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    for start in range(0, len(keys), BATCH):
        yield keys[start:start + BATCH]


def _scrub_row(conn: psycopg.Connection, column: Column, key: tuple[Any, ...], actor: str,
               reason: str, via: str | None, result: Scrubbed) -> None:
    """Mask the row's value as it is now (read again under a lock: the engine or an operator
    may have changed it since the scan) and audit it."""
    masked, found = _masked(column, _value(conn, column, key, lock=True))
    if not found:
        return
    conn.execute(sql.SQL("UPDATE {} SET {} = %s WHERE {}").format(
        sql.Identifier(column.table), sql.Identifier(column.column), _where(column)),
        (masked, *key))
    if column.table == "dead_letters":
        _redigest(conn, key[0])
    conn.execute("INSERT INTO audit_log (actor, action, subject, details) "
                 "VALUES (%s, 'privacy.scrubbed', %s, %s)",
                 (actor, f"{column.table}.{column.column}",
                  Jsonb({"table": column.table, "column": column.column,
                         "key": shown_key(key), "found": found, "reason": reason,
                         **({"via": via} if via else {})})))
    result.rows += 1
    result.masked += found


def _value(conn: psycopg.Connection, column: Column, key: tuple[Any, ...],
           lock: bool = False) -> Any:
    row = conn.execute(sql.SQL("SELECT {} FROM {} WHERE {}{}").format(
        sql.Identifier(column.column), sql.Identifier(column.table), _where(column),
        sql.SQL(" FOR NO KEY UPDATE" if lock else "")), key).fetchone()
    return None if row is None else row[0]     # None: the row is gone since


def _where(column: Column) -> sql.Composable:
    return sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k))
                                 for k in column.key)


def _masked(column: Column, value: Any) -> tuple[Any, int]:
    """The value with its CPR-shaped runs masked, of the column's type, and how many."""
    if value is None:
        return None, 0
    if column.kind == "bytea":
        text, found = mask_cpr(bytes(value).decode("utf-8", "surrogateescape"))
        return text.encode("utf-8", "surrogateescape"), found
    if column.kind == "jsonb":
        doc, found = _masked_json(value)
        return Jsonb(doc), found
    return mask_cpr(str(value))


def _masked_json(doc: Any, cpr_named: bool = False) -> tuple[Any, int]:
    """The JSON document with its strings masked, names too, as the scan reads them
    (`json_strings`: under a name announcing a CPR number, nine digits are one); still valid
    JSON."""
    if isinstance(doc, str):
        return mask_cpr(doc, cpr_column=cpr_named)
    if isinstance(doc, list):
        items = [_masked_json(v, cpr_named) for v in doc]
        return [v for v, _ in items], sum(n for _, n in items)
    if isinstance(doc, dict):
        names = {name: mask_cpr(name, cpr_column=cpr_named) for name in doc}
        # A name that held none keeps it, though it is the mask (an earlier scrub wrote it):
        # a masked name that comes out as one takes a number after it instead.
        kept = {name for name, (_, in_name) in names.items() if not in_name}
        out: dict[str, Any] = {}
        found = 0
        for name, value in doc.items():
            masked, in_name = names[name]
            value, in_value = _masked_json(value, announces_cpr(name, cpr_named))
            # Two names masked alike ("cpr 010190-1234", "cpr 020290-1234") keep both values.
            unique, n = masked, 1
            while in_name and (unique in out or unique in kept):
                n += 1
                unique = f"{masked} {n}"
            out[unique] = value
            found += in_name + in_value
        return out, found
    return doc, 0


def _redigest(conn: psycopg.Connection, dead_letter: int) -> None:
    """A dead letter's digest is of its topic and payload as stored now. The digest of the
    bytes with the CPR number would let anyone who reads the masked row find the number by
    trying every date and serial; and a redelivery of the old message is no concern: a dead
    letter is acknowledged when stored. Two messages that differ only in their CPR numbers
    are alike when masked: the later keeps a digest that also covers its id (unique)."""
    conn.execute(
        "UPDATE dead_letters d SET digest = CASE WHEN EXISTS (SELECT 1 FROM dead_letters o "
        "    WHERE o.digest = n.digest AND o.id <> d.id) "
        "  THEN sha256(n.digest || convert_to(d.id::text, 'UTF8')) ELSE n.digest END "
        "FROM (SELECT sha256(convert_to(topic, 'UTF8') || '\\x00'::bytea || payload) AS digest "
        "      FROM dead_letters WHERE id = %s) n "
        "WHERE d.id = %s", (dead_letter, dead_letter))
