"""Why an alert is suppressed, and bringing alerts in line with it: device in repair, a silence
in force, or inhibition by another active alert.

`reconcile` looks at open and suppressed alerts (claimed ones are an operator's and are left
alone): an open alert with a reason becomes suppressed, keeping the reason; a suppressed one
without a reason any more becomes open again and claimable, with a new time to claim.
It reads without locking and changes with `WHERE status = ...`: an alert an operator claims
(or its rule resolves) meanwhile is re-checked after that commit and left as it is. A
suppressed alert whose reason changes (the silence holding it ended, another holds it still)
keeps its status and gets the new reason, audited as a `suppress` from suppressed.
Each change is audited and goes to the outbox. The engine calls it when alerts open or
resolve, silences call it when created or expired, and the timer calls it for silences
that start or end by the clock and for devices whose repair status changed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
import psycopg

from vagt.alerts import outbox
from vagt.alerts.matchers import Matcher, all_match, alternatives, equalities
from vagt.alerts.policy import AlertPolicy, InhibitRule, current_policy

ENGINE_ACTOR = "vagt"
CRITICAL = "critical"   # the severity no inhibit rule holds back (see `suppression_reason`)


@dataclass(frozen=True)
class _ActiveSilence:
    id: int
    matchers: tuple[Matcher, ...]
    author: str
    comment: str

    @property
    def reason(self) -> str:
        return f"silence {self.id} by {self.author}: {self.comment}"


@dataclass(frozen=True)
class Changes:
    suppressed: list[int]
    unsuppressed: list[int]


_CANDIDATES = """
SELECT a.id, a.status, a.labels, a.suppressed_reason, d.status
FROM alerts a LEFT JOIN devices d ON d.device_id = a.device_id
WHERE a.status IN ('open', 'suppressed') AND (%(ids)s::bigint[] IS NULL OR a.id = ANY(%(ids)s))
ORDER BY a.id
"""

_SUPPRESS = """
WITH t AS (SELECT * FROM unnest(%s::bigint[], %s::text[]) AS t(id, reason)),
changed AS (
    UPDATE alerts a SET status = 'suppressed', suppressed_at = %s, suppressed_reason = t.reason
    FROM t WHERE a.id = t.id AND a.status = 'open' RETURNING a.id, t.reason
)
INSERT INTO alert_audit (alert_id, at, actor, action, from_status, to_status, note, details)
SELECT id, %s, 'vagt', 'suppress', 'open', 'suppressed', reason,
       jsonb_build_object('reason', reason) FROM changed
RETURNING alert_id
"""

_REASON = """
WITH t AS (SELECT * FROM unnest(%s::bigint[], %s::text[]) AS t(id, reason)),
changed AS (
    UPDATE alerts a SET suppressed_reason = t.reason
    FROM t WHERE a.id = t.id AND a.status = 'suppressed'
      AND a.suppressed_reason IS DISTINCT FROM t.reason   -- once, if two reconciles race
    RETURNING a.id, t.reason
)
INSERT INTO alert_audit (alert_id, at, actor, action, from_status, to_status, note, details)
SELECT id, %s, 'vagt', 'suppress', 'suppressed', 'suppressed', reason,
       jsonb_build_object('reason', reason) FROM changed
"""

_UNSUPPRESS = """
WITH changed AS (
    UPDATE alerts a SET status = 'open', suppressed_reason = NULL, queued_at = %(now)s,
           claim_deadline = %(now)s + coalesce(a.time_to_claim, interval '1 hour')
    WHERE a.id = ANY(%(ids)s) AND a.status = 'suppressed'
    RETURNING a.id, a.announced, a.ever_announced
), audited AS (
    INSERT INTO alert_audit (alert_id, at, actor, action, from_status, to_status, note)
    SELECT id, %(now)s, 'vagt', 'unsuppress', 'suppressed', 'open',
           'nothing holds it back any more' FROM changed
)
SELECT id, announced, ever_announced FROM changed
"""


def reconcile(conn: psycopg.Connection, *, now: datetime | None = None,
              policy: AlertPolicy | None = None, alert_ids: Collection[int] | None = None,
              quiet: Collection[int] = ()) -> Changes:
    """Suppress or release the open and suppressed alerts (all, or those of `alert_ids`).

    `quiet`: alerts the caller announces itself (just opened), so no outbox event for them.
    """
    policy = policy or current_policy()
    if now is None:   # the time of the change, as the audit rows of others (0015)
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        now = row[0]
    ids = None if alert_ids is None else sorted(alert_ids)
    if ids is not None and not ids:
        return Changes([], [])
    candidates = conn.execute(_CANDIDATES, {"ids": ids}).fetchall()
    if not candidates:
        return Changes([], [])
    silences = _active_silences(conn, now)
    # the sources only of rules that target one of the candidates, and only those that
    # could hold one back: reading all of them (every open device_silent alert after an
    # outage) for each alert that opened cost an alarm 66 ms of CPU with 5,000 open
    inhibitors = [(rule, _sources(conn, rule, targets)) for rule in policy.inhibit
                  if (targets := [c[2] for c in candidates if all_match(rule.target, c[2])])]
    to_suppress: list[tuple[int, str]] = []
    to_release: list[int] = []
    to_reword: list[tuple[int, str]] = []
    for alert_id, status, labels, old_reason, device_status in candidates:
        reason = suppression_reason(alert_id, labels, device_status, silences, inhibitors,
                                    policy)
        if reason is not None and status == "open":
            to_suppress.append((alert_id, reason))
        elif reason is None and status == "suppressed":
            to_release.append(alert_id)
        elif reason is not None and reason != old_reason:
            to_reword.append((alert_id, reason))
    # The candidates were read without a lock: an operator may have claimed one since, or the
    # engine resolved it. The guarded UPDATEs skip those; what they changed (and audited) is
    # what the call centre hears of, not what was planned.
    suppressed: list[int] = []
    released: list[int] = []
    if to_suppress:
        suppressed = [int(r[0]) for r in conn.execute(_SUPPRESS, (
            [i for i, _ in to_suppress], [r for _, r in to_suppress], now, now)).fetchall()]
        outbox.enqueue(conn, [i for i in suppressed if i not in quiet], "suppressed",
                       ENGINE_ACTOR)
    if to_reword:
        conn.execute(_REASON, ([i for i, _ in to_reword], [r for _, r in to_reword], now))
    if to_release:
        told = conn.execute(_UNSUPPRESS, {"ids": to_release, "now": now}).fetchall()
        released = [int(r[0]) for r in told]
        _announce_released(conn, [r for r in told if int(r[0]) not in quiet])
    return Changes(sorted(suppressed), sorted(released))


def _announce_released(conn: psycopg.Connection,
                       told: list[tuple[int, bool, bool]]) -> None:
    """`unsuppressed` for the released alerts the call centre's systems know of. One held
    back from its opening (a silence or repair status in force then) was never announced:
    its first event is `opened`, now that it is actionable (a receiver taking only opened,
    reopened, escalated and resolved heard nothing of it before); one held back from its
    reopening is `reopened`. `told`: (id, announced, ever_announced) as the alert's row
    says (migration 0016)."""
    if not told:
        return
    ids = {int(i) for i, _, _ in told}
    first = {int(i) for i, _, ever in told if not ever}
    again = {int(i) for i, now, ever in told if ever and not now}
    held: dict[str, object] = {"held_back_until": "now"}
    outbox.enqueue(conn, first, "opened", ENGINE_ACTOR, held)
    outbox.enqueue(conn, again, "reopened", ENGINE_ACTOR, held)
    outbox.enqueue(conn, ids - first - again, "unsuppressed", ENGINE_ACTOR)


def suppression_reason(alert_id: int, labels: Mapping[str, object], device_status: str | None,
                       silences: Sequence[_ActiveSilence],
                       inhibitors: Sequence[tuple[InhibitRule, dict[tuple[str, ...], int]]],
                       policy: AlertPolicy) -> str | None:
    """The first thing that holds the alert back, as a sentence; None if nothing does.

    A critical alert (a personal alarm) is held back only by what a person decided: a
    silence, or the device's repair status. Never by another alert: an inhibit rule written
    to quiet the devices behind an offline gateway must not hide someone who pressed the
    button (the gateway's own silence alert stays open until its sweep or message clears
    it, and the alarm may well come through another way)."""
    if policy.silence_in_repair and device_status == "in_repair":
        return "the device is in repair (silenced by its registry status)"
    for s in silences:
        if all_match(s.matchers, labels):
            return s.reason
    if _label(labels, "severity") == CRITICAL:
        return None
    for rule, sources in inhibitors:
        if not sources or not all_match(rule.target, labels):
            continue
        key = tuple(_label(labels, target) for target, _ in rule.equal)
        source_id = sources.get(key)
        if source_id is not None and source_id != alert_id:
            return f"inhibited by alert {source_id} ({rule.name})"
    return None


def is_inhibition_source(labels: Mapping[str, object], policy: AlertPolicy) -> bool:
    """Whether an alert with these labels can suppress others (its opening or resolving matters)."""
    return any(all_match(rule.source, labels) for rule in policy.inhibit)


def _label(labels: Mapping[str, object], name: str) -> str:
    value = labels.get(name)
    return "" if value is None else str(value)


def _active_silences(conn: psycopg.Connection, now: datetime) -> list[_ActiveSilence]:
    rows = conn.execute("SELECT id, matchers, author, comment FROM silences "
                        "WHERE expired_at IS NULL AND starts_at <= %s AND ends_at > %s "
                        "ORDER BY id", (now, now)).fetchall()
    return [_ActiveSilence(int(i), tuple(Matcher.from_json(m) for m in ms), str(a), str(c))
            for i, ms, a, c in rows]


def _sources(conn: psycopg.Connection, rule: InhibitRule,
             targets: Sequence[Mapping[str, object]]) -> dict[tuple[str, ...], int]:
    """The active alerts that match the rule's source and share its `equal` labels with one
    of `targets` (the labels of alerts it targets), by those label values. SQL narrows them
    by the `=` matchers, the `=~` ones that list words and the `equal` values; Python
    decides."""
    narrow = list(alternatives(rule.source).items())
    narrow += [(source, sorted({_label(t, target) for t in targets}))
               for target, source in rule.equal]
    rows = conn.execute(
        "SELECT id, labels FROM alerts WHERE status <> 'resolved' AND labels @> %s::jsonb "
        + "".join(" AND coalesce(labels->>%s, '') = ANY(%s)" for _ in narrow) + " ORDER BY id",
        [orjson.dumps(equalities(rule.source)).decode(),
         *(x for pair in narrow for x in pair)]).fetchall()
    found: dict[tuple[str, ...], int] = {}
    for alert_id, labels in rows:
        if all_match(rule.source, labels):
            found.setdefault(tuple(_label(labels, source) for _, source in rule.equal),
                             int(alert_id))
    return found
