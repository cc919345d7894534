"""Silences and maintenance windows: label matchers with a start, an end, an author and a comment.

An alert whose labels match every matcher of a silence that is in force is kept as
`suppressed` with the silence as its reason; when the silence ends (or is expired early)
it comes back. Creating and expiring are audited in `audit_log`, and so is a refused
attempt at either (`silence.refused`), which is logged too (`event=silence_refused`). The
comment becomes the reason of the alerts it holds, which the call centre's systems are sent:
one holding a CPR number is refused (`vagt.privacy.HoldsCpr`).

A silence that can match a critical alert (a personal alarm) must name its devices one by
one (`silence_scope`), and none may last longer than the policy's `max_silence`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from vagt.alerts.actions import AlertError, checked_operator
from vagt.alerts.matchers import Matcher, Op
from vagt.alerts.patterns import pattern_problem
from vagt.alerts.policy import AlertPolicy, current_policy
from vagt.alerts.silence_scope import (
    MAX_DEVICES,
    critical_rules_matched,
    current_rule_book,
    names_devices,
)
from vagt.alerts.suppression import reconcile
from vagt.errors import first_line
from vagt.privacy import HoldsCpr, mask_cpr, without_cpr
from vagt.rules.config import Rule
from vagt.text import unprintable_problem

log = logging.getLogger("vagt.alerts")

MAX_COMMENT = 1000
REFUSED = "silence (refused)"   # the audit subject of a refused attempt: it has no id
_MAX_MATCHERS_KEPT = 50        # of a refused attempt's, in its audit entry
_MAX_MATCHER_KEPT = 500        # characters of each


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
                   policy: AlertPolicy | None = None,
                   rules: Sequence[Rule] | None = None, via: str | None = None) -> Silence:
    """Store a silence and suppress the open alerts it matches, in one transaction.

    A municipal author's silence is limited to their municipality (a matcher is added).
    It is judged by `rules` (default: the installed rule book, `silence_scope`) and
    `policy`; a refusal (SilenceError, HoldsCpr, InvalidOperator) is logged. One of the
    silence itself (SilenceError: too broad, too long, a pattern, its times or comment) is
    also audited (`silence.refused`: who, what was asked, why) in a transaction of its own,
    which the caller's rollback on the error leaves in place: `conn` must have no
    transaction in progress (autocommit, or idle). Of one for a CPR number nothing is kept,
    as of every such refusal, and an author's name that is refused is nobody to audit.
    """
    _needs_no_transaction(conn, "create_silence")
    now = now or datetime.now(UTC)
    policy = policy or current_policy()
    rules = current_rule_book() if rules is None else rules
    who = {"author": "-", "municipality": municipality or "-", "matchers": "-"}
    try:
        author = who["author"] = checked_operator(author)
        comment = without_cpr(" ".join(comment.split()), "silence's comment")
        if not comment or len(comment) > MAX_COMMENT:
            raise SilenceError(f"a silence needs a comment saying why, of 1 to {MAX_COMMENT} "
                               "characters")
        if problem := unprintable_problem(comment, "the silence's comment"):
            raise SilenceError(problem)
        wanted = _scoped(matchers, municipality)
        for m in wanted:   # no label of an alert holds one: such a matcher silences nothing
            without_cpr(str(m), "silence's matcher")
        who["matchers"] = " ".join(map(str, wanted))
        starts = starts_at or now
        problem = (_matchers_problem(wanted, municipality, rules, policy)
                   or _times_problem(starts, ends_at, now, policy))
        if problem:
            raise SilenceError(problem)
    except (AlertError, HoldsCpr) as e:
        reason = " ".join(str(e).split())
        log.warning("event=silence_refused author=%s municipality=%s matchers=%s reason=%s",
                    who["author"], who["municipality"], who["matchers"],
                    orjson.dumps(reason).decode())
        if isinstance(e, SilenceError):
            _audit_refusal(conn, who["author"], _asked(matchers, municipality, starts_at or now,
                                                       ends_at, comment), reason, now, via)
        raise
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "INSERT INTO silences (matchers, starts_at, ends_at, author, comment) "
            "VALUES (%s::jsonb, %s, %s, %s, %s) RETURNING *",
            (orjson.dumps([m.to_json() for m in wanted]).decode(), starts, ends_at, author,
             comment)).fetchone()
        assert row is not None
        silence = _silence(row)
        _audit(conn, author, "silence.create", silence, now, via)
        reconcile(conn, now=now, policy=policy)
    return silence


def _scoped(matchers: Sequence[Matcher], municipality: str | None) -> list[Matcher]:
    """The matchers of a silence its author's municipality (if any) bounds: theirs in place
    of any municipality matcher given."""
    if municipality is None:
        return list(matchers)
    return [*(m for m in matchers if m.name != "municipality"),
            Matcher("municipality", Op.EQ, municipality)]


def _asked(matchers: Sequence[Matcher], municipality: str | None, starts: datetime,
           ends: datetime, comment: str) -> dict[str, object]:
    return asked_to_create([str(m) for m in _scoped(matchers, municipality)], starts, ends,
                           comment)


def asked_to_create(wanted: Sequence[str], starts: datetime, ends: datetime,
                    comment: str) -> dict[str, object]:
    """What a refused silence asked for, as its audit entry keeps it: never a CPR number
    (masked: that may be why it was refused), and bounded in size (the API's body is not)."""
    return {"matchers": [_kept(m, _MAX_MATCHER_KEPT) for m in wanted[:_MAX_MATCHERS_KEPT]],
            **({"matchers_given": len(wanted)} if len(wanted) > _MAX_MATCHERS_KEPT else {}),
            "starts_at": starts.isoformat(), "ends_at": ends.isoformat(),
            "comment": _kept(" ".join(comment.split()), MAX_COMMENT)}


def _kept(text: str, limit: int) -> str:
    """`text` with CPR numbers masked and NULs replaced (jsonb holds none), cut at `limit`."""
    text = mask_cpr(text)[0].replace("\x00", "\ufffd")
    return text if len(text) <= limit else text[:limit] + "…"


def refuse_author(conn: psycopg.Connection, author: str, reason: str, *,
                  asked: dict[str, object], subject: str = REFUSED,
                  now: datetime | None = None, via: str | None = None) -> None:
    """A silence (`asked_to_create`) or an expiry (subject `silence ID`) refused for who
    asked, before it is judged (a role too low for silences): logged and audited as every
    refusal of either is, in a transaction of its own (`conn` must have none in progress).
    Holding alerts back is what the audit of refusals is for, whoever tries it."""
    _needs_no_transaction(conn, "refuse_author")
    # masked: an account named before names were checked may hold a CPR number (the log of
    # a failed login masks it too); the reason may quote the name
    log.warning("event=silence_refused author=%s subject=%s reason=%s", mask_cpr(author)[0],
                orjson.dumps(subject).decode(), orjson.dumps(mask_cpr(reason)[0]).decode())
    _audit_refusal(conn, author, asked, reason, now or datetime.now(UTC), via, subject)


def _needs_no_transaction(conn: psycopg.Connection, caller: str) -> None:
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError(f"{caller} needs a connection with no transaction in progress: "
                         "a refusal is audited in a transaction of its own")


def _audit_refusal(conn: psycopg.Connection, actor: str, asked: dict[str, object],
                   reason: str, now: datetime, via: str | None,
                   subject: str = REFUSED) -> None:
    """A refused attempt in `audit_log`, committed on its own. If it cannot be written, that
    is logged and the refusal still goes to the author, who is owed the reason."""
    details = {**asked, "reason": reason, **({"via": via} if via else {})}
    try:
        with conn.transaction():
            conn.execute("INSERT INTO audit_log (at, actor, action, subject, details) "
                         "VALUES (%s, %s, 'silence.refused', %s, %s::jsonb)",
                         (now, actor, subject, orjson.dumps(details).decode()))
    except psycopg.Error as e:
        log.error("event=silence_refusal_not_audited author=%s error=%s", actor,
                  orjson.dumps(first_line(e)).decode())


def _matchers_problem(matchers: Sequence[Matcher], municipality: str | None,
                      rules: Sequence[Rule], policy: AlertPolicy) -> str | None:
    """Why a silence with these matchers may not be, or None."""
    for problem in _pattern_problems(matchers):
        return problem
    if not matchers or all(m.matches({}) for m in matchers):
        return ("a silence needs at least one matcher that an empty label set does not "
                "match (e.g. device_id=\"OXI-0001\"); it would silence everything")
    if names_devices(matchers):
        return None
    matched, every = critical_rules_matched(matchers, rules, policy)
    if not matched:
        return None
    where = f" of the municipality {municipality}" if municipality is not None else ""
    what = (f"every critical alert{where}, personal alarms included, as good as "
            "silencing everything" if every else
            f"critical alerts{where} (of {', '.join(matched)})")
    return (f"the silence could hold back {what}: a silence holds back a critical alert only "
            f"for devices it names, by device_id=\"...\" or device_id=~\"A|B\" (at most "
            f"{MAX_DEVICES}); else leave critical alerts out with severity!=\"critical\"")


MAX_AHEAD = timedelta(days=366)


def _times_problem(starts: datetime, ends: datetime, now: datetime,
                   policy: AlertPolicy) -> str | None:
    if ends <= starts:
        return (f"the silence must end after it starts: starts {starts.isoformat()}, "
                f"ends {ends.isoformat()}")
    if ends <= now:
        return f"the silence would end in the past ({ends.isoformat()})"
    if starts > now + MAX_AHEAD:   # work planned that far ahead is silenced nearer the time;
        # and a time near the year 9999 is in 10000 on Danish time: no list could show it
        return (f"a silence starts within {MAX_AHEAD.days} days of now; this one starts "
                f"{starts.isoformat()}")
    too_long = _too_long(starts, ends, policy)
    return f"{too_long}: end it sooner, and make another then if it is still needed" \
        if too_long else None


def _too_long(starts: datetime, ends: datetime, policy: AlertPolicy) -> str | None:
    length = (ends - starts).total_seconds()
    if length <= policy.max_silence_s:
        return None
    return (f"a silence may last at most {_duration(policy.max_silence_s)} (the alert "
            f"policy's max_silence), this one lasts {_duration(length)}")


def warnings(silence: Silence, *, policy: AlertPolicy | None = None,
             rules: Sequence[Rule] | None = None) -> list[str]:
    """Why this silence, made before today's limits, would be refused now, and what it
    does meanwhile: one that could match a critical alert without naming its devices, or
    lasts longer than `max_silence`, holds back no critical alert (`suppression`)."""
    policy = policy or current_policy()
    rules = current_rule_book() if rules is None else rules
    found = _pattern_problems(silence.matchers)
    matched, _ = critical_rules_matched(silence.matchers, rules, policy)
    if matched and not names_devices(silence.matchers):
        found.append(f"it names no device, and could match critical alerts (of "
                     f"{', '.join(matched)}): it holds back none of them")
    too_long = _too_long(silence.starts_at, silence.ends_at, policy)
    if too_long:
        found.append(f"{too_long}: it holds back no critical alert")
    return found


def _pattern_problems(matchers: Sequence[Matcher]) -> list[str]:
    return [f"{m}: {problem}" for m in matchers
            if m.op in (Op.RE, Op.NRE) and (problem := pattern_problem(m.value))]


def _duration(seconds: float) -> str:
    """As `max_silence` is written: 3d, 1h30m, 3d1s (to the second, rounded up)."""
    s = -int(-seconds // 1)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = ((days, "d"), (hours, "h"), (minutes, "m"), (s, "s"))
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def expire_silence(conn: psycopg.Connection, silence_id: int, *, by: str,
                   municipality: str | None = None, now: datetime | None = None,
                   policy: AlertPolicy | None = None, via: str | None = None) -> Silence:
    """End a silence now; the alerts it held come back (unless something else holds them).

    A refusal (no such silence in the caller's municipality, one already ended) is logged
    and audited (`silence.refused`, its subject the silence asked for) in a transaction of
    its own, as `create_silence`'s is: `conn` must have no transaction in progress. An
    author's name that is refused is nobody to audit."""
    _needs_no_transaction(conn, "expire_silence")
    now = now or datetime.now(UTC)
    author = "-"
    try:
        author = by = checked_operator(by)
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            # the scope first, without a lock (a silence's matchers never change): waiting
            # for another municipality's silence would tell that it exists
            row = cur.execute("SELECT * FROM silences WHERE id = %s", (silence_id,)).fetchone()
            if row is None or not _in_scope(_silence(row), municipality):
                raise SilenceNotFound(f"there is no silence {silence_id}")
            row = cur.execute("SELECT * FROM silences WHERE id = %s FOR UPDATE",
                              (silence_id,)).fetchone()
            assert row is not None, "silences are never deleted"
            silence = _silence(row)
            # expired is expired whatever `now` says: a request that waited for another's
            # expiry read its clock first, and to it the silence seemed to end after then
            # (a second expiry, its author and time in place of the first's)
            if silence.expired_at is not None or silence.state(now) == "expired":
                raise SilenceError(f"silence {silence_id} has already ended")
            row = cur.execute("UPDATE silences SET expired_at = %s, expired_by = %s "
                              "WHERE id = %s RETURNING *", (now, by, silence_id)).fetchone()
            assert row is not None
            silence = _silence(row)
            _audit(conn, by, "silence.expire", silence, now, via)
            reconcile(conn, now=now, policy=policy)
    except (AlertError, HoldsCpr) as e:
        reason = " ".join(str(e).split())
        log.warning("event=silence_refused asked=expire author=%s municipality=%s "
                    "silence_id=%d reason=%s", author, municipality or "-", silence_id,
                    orjson.dumps(reason).decode())
        if isinstance(e, SilenceError):
            _audit_refusal(conn, author, {"asked": "expire", "silence_id": silence_id},
                           reason, now, via, subject=f"silence {silence_id}")
        raise
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
           now: datetime, via: str | None) -> None:
    """`via`: how the author came (`cli:USER`, the command's login)."""
    details = {**silence.to_json(now), **({"via": via} if via else {})}
    conn.execute("INSERT INTO audit_log (at, actor, action, subject, details) "
                 "VALUES (%s, %s, %s, %s, %s::jsonb)",
                 (now, actor, action, f"silence {silence.id}", orjson.dumps(details).decode()))
