"""Silences and maintenance windows: label matchers with a start, an end, an author and a comment.

An alert whose labels match every matcher of a silence that is in force is kept as
`suppressed` with the silence as its reason; when the silence ends (or is expired early)
it comes back. Creating and expiring are audited in `audit_log`. The comment becomes the
reason of the alerts it holds, which the call centre's systems are sent: one holding a CPR
number is refused (`vagt.privacy.HoldsCpr`).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import psycopg
from psycopg.rows import dict_row

from vagt.alerts.actions import AlertError, checked_operator
from vagt.alerts.matchers import Matcher, Op
from vagt.alerts.policy import AlertPolicy
from vagt.alerts.suppression import reconcile
from vagt.privacy import without_cpr
from vagt.rules.config import SEVERITIES

MAX_COMMENT = 1000


class SilenceError(AlertError):
    """A silence cannot be created or expired; the message says why."""


class SilenceNotFound(SilenceError):
    """No silence has that id (or it is outside the caller's municipality)."""


@dataclass(frozen=True)
class Silence:
    id: int
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    author: str
    comment: str
    created_at: datetime
    expired_at: datetime | None
    expired_by: str | None

    def state(self, now: datetime) -> str:
        end = min(self.ends_at, self.expired_at) if self.expired_at else self.ends_at
        if end <= now:
            return "expired"
        return "active" if self.starts_at <= now else "pending"

    def to_json(self, now: datetime) -> dict[str, object]:
        return {"id": self.id, "matchers": [str(m) for m in self.matchers],
                "starts_at": self.starts_at.isoformat(), "ends_at": self.ends_at.isoformat(),
                "author": self.author, "comment": self.comment,
                "created_at": self.created_at.isoformat(),
                "expired_at": self.expired_at.isoformat() if self.expired_at else None,
                "expired_by": self.expired_by, "state": self.state(now)}


def _silence(row: dict[str, object]) -> Silence:
    raw = row["matchers"]
    assert isinstance(raw, list)
    return Silence(id=int(str(row["id"])), matchers=tuple(Matcher.from_json(m) for m in raw),
                   starts_at=row["starts_at"], ends_at=row["ends_at"],  # type: ignore[arg-type]
                   author=str(row["author"]), comment=str(row["comment"]),
                   created_at=row["created_at"],  # type: ignore[arg-type]
                   expired_at=row["expired_at"],  # type: ignore[arg-type]
                   expired_by=row["expired_by"])  # type: ignore[arg-type]


def create_silence(conn: psycopg.Connection, matchers: Sequence[Matcher], *,
                   starts_at: datetime | None, ends_at: datetime, author: str, comment: str,
                   municipality: str | None = None, now: datetime | None = None,
                   policy: AlertPolicy | None = None) -> Silence:
    """Store a silence and suppress the open alerts it matches, in one transaction.

    A municipal author's silence is limited to their municipality (a matcher is added).
    """
    now = now or datetime.now(UTC)
    author = checked_operator(author)
    comment = without_cpr(" ".join(comment.split()), "silence's comment")
    if not comment or len(comment) > MAX_COMMENT:
        raise SilenceError(f"a silence needs a comment saying why, of 1 to {MAX_COMMENT} "
                           "characters")
    wanted = list(matchers)
    if municipality is not None:
        wanted = [m for m in wanted if m.name != "municipality"]
        wanted.append(Matcher("municipality", Op.EQ, municipality))
    for m in wanted:   # no label of an alert holds one: such a matcher silences nothing
        without_cpr(str(m), "silence's matcher")
    if not wanted or all(m.matches({}) for m in wanted):
        raise SilenceError("a silence needs at least one matcher that an empty label set "
                           "does not match (e.g. device_id=\"OXI-0001\"); it would silence "
                           "everything")
    # a municipal author's own municipality matchers are replaced by theirs: what is left
    # must not hold back everything there
    own = [m for m in matchers if municipality is None or m.name != "municipality"]
    if _holds_back_everything(conn, own):
        raise SilenceError(
            "each matcher of the silence matches any value of its label (every "
            + ("alert of the municipality" if municipality is not None else "alert")
            + ", personal alarms included, would be held back): name the devices, models or "
            "rules it is for (e.g. device_id=\"OXI-0001\", model=\"3230\")")
    starts = starts_at or now
    if ends_at <= starts:
        raise SilenceError(f"the silence must end after it starts: starts {starts.isoformat()}, "
                           f"ends {ends_at.isoformat()}")
    if ends_at <= now:
        raise SilenceError(f"the silence would end in the past ({ends_at.isoformat()})")
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "INSERT INTO silences (matchers, starts_at, ends_at, author, comment) "
            "VALUES (%s::jsonb, %s, %s, %s, %s) RETURNING *",
            (orjson.dumps([m.to_json() for m in wanted]).decode(), starts, ends_at, author,
             comment)).fetchone()
        assert row is not None
        silence = _silence(row)
        _audit(conn, author, "silence.create", silence, now)
        reconcile(conn, now=now, policy=policy)
    return silence


# Labels whose every value is known: the registry's columns, and the severities.
_DEVICE_LABELS = ("device_id", "vendor", "model", "type", "municipality")


def _holds_back_everything(conn: psycopg.Connection, matchers: Sequence[Matcher]) -> bool:
    """Whether each of the silence's own matchers (none: yes) matches every value its label
    has, and a value never seen before where the label's values are not a closed set
    (`device_id=~".+"`, `severity=~"critical|major|warning|info"`, `rule=~".*_.*"`): then
    it holds back every alert. A matcher the empty label set matches is the caller's."""
    probe = "vagt-probe-" + secrets.token_hex(8)
    for m in matchers:
        if m.name == "severity":   # a severity is one of these, and nothing else
            values: list[str] = list(SEVERITIES)
        elif not m.matches({m.name: probe}):
            return False
        elif m.name in _DEVICE_LABELS:   # one of ours: the name is safe to put in the SQL
            values = [str(v) for (v,) in conn.execute(
                f"SELECT DISTINCT {m.name} FROM devices WHERE {m.name} <> ''")]
        else:
            values = []
        if not all(m.matches({m.name: v}) for v in values):
            return False
    return True


def expire_silence(conn: psycopg.Connection, silence_id: int, *, by: str,
                   municipality: str | None = None, now: datetime | None = None,
                   policy: AlertPolicy | None = None) -> Silence:
    """End a silence now; the alerts it held come back (unless something else holds them)."""
    now = now or datetime.now(UTC)
    by = checked_operator(by)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM silences WHERE id = %s FOR UPDATE",
                          (silence_id,)).fetchone()
        if row is None or not _in_scope(_silence(row), municipality):
            raise SilenceNotFound(f"there is no silence {silence_id}")
        silence = _silence(row)
        if silence.state(now) == "expired":
            raise SilenceError(f"silence {silence_id} has already ended")
        row = cur.execute("UPDATE silences SET expired_at = %s, expired_by = %s WHERE id = %s "
                          "RETURNING *", (now, by, silence_id)).fetchone()
        assert row is not None
        silence = _silence(row)
        _audit(conn, by, "silence.expire", silence, now)
        reconcile(conn, now=now, policy=policy)
    return silence


def list_silences(conn: psycopg.Connection, *, include_expired: bool = False,
                  municipality: str | None = None,
                  now: datetime | None = None) -> list[Silence]:
    now = now or datetime.now(UTC)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT * FROM silences WHERE %s OR (expired_at IS NULL AND ends_at > %s) "
            "ORDER BY starts_at, id", (include_expired, now)).fetchall()
    return [s for s in map(_silence, rows) if _in_scope(s, municipality)]


def _in_scope(silence: Silence, municipality: str | None) -> bool:
    """A municipal user sees the silences limited to their municipality, and only those."""
    if municipality is None:
        return True
    return Matcher("municipality", Op.EQ, municipality) in silence.matchers


def _audit(conn: psycopg.Connection, actor: str, action: str, silence: Silence,
           now: datetime) -> None:
    conn.execute("INSERT INTO audit_log (at, actor, action, subject, details) "
                 "VALUES (%s, %s, %s, %s, %s::jsonb)",
                 (now, actor, action, f"silence {silence.id}",
                  orjson.dumps(silence.to_json(now)).decode()))
