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

A critical alert is held back only by a silence that names its device (`silence_scope`)
and lasts no longer than the policy's `max_silence`, whenever the silence was made; the
call centre hears of it all the same (see `Changes.held_critical`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import orjson
import psycopg

from vagt.alerts import outbox
from vagt.alerts.matchers import Matcher, Op, all_match, alternatives, equalities
from vagt.alerts.policy import AlertPolicy, InhibitRule, current_policy
from vagt.alerts.silence_scope import CRITICAL, names_devices

ENGINE_ACTOR = "vagt"


@dataclass(frozen=True)
class _ActiveSilence:
    id: int
    matchers: tuple[Matcher, ...]
    author: str
    comment: str
    ends_at: datetime
    holds_critical: bool   # names its devices, and is no longer than max_silence

    @property
    def reason(self) -> str:
        return f"silence {self.id} by {self.author}: {self.comment}"

    def details(self) -> dict[str, object]:
        """What the event of an alert it holds back says of it (`held_back_until`: its
        end, as "now" says an alert held back from its opening comes back now)."""
        return {"held_back_by": self.reason, "silence_id": self.id,
                "held_back_until": self.ends_at.isoformat()}


@dataclass(frozen=True)
class Changes:
    suppressed: list[int]
    unsuppressed: list[int]
    # of `suppressed`, the critical alerts a silence holds: the details their event says
    # (for those in `quiet`, the caller announces them with these)
    held_critical: dict[int, dict[str, object]] = field(default_factory=dict)


_CANDIDATES = """
SELECT a.id, a.status, a.labels, a.suppressed_reason, d.status, a.severity
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

    `quiet`: alerts the caller announces itself (just opened), so no outbox event for them
    (the critical ones a silence holds included: `Changes.held_critical` says what to add).
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
    silences = _active_silences(conn, now, policy)
    by_reason = {s.reason: s for s in silences}
    # the sources only of rules that target one of the candidates, and only those that
    # could hold one back: reading all of them (every open device_silent alert after an
    # outage) for each alert that opened cost an alarm 66 ms of CPU with 5,000 open
    inhibitors = [(rule, _sources(conn, rule, targets)) for rule in policy.inhibit
                  if (targets := [c[2] for c in candidates if all_match(rule.target, c[2])])]
    to_suppress: list[tuple[int, str]] = []
    to_release: list[int] = []
    to_reword: list[tuple[int, str]] = []
    details: dict[int, dict[str, object]] = {}   # of those a silence would hold
    critical: set[int] = set()
    for alert_id, status, labels, old_reason, device_status, severity in candidates:
        is_critical = CRITICAL in (severity, _label(labels, "severity"))
        reason = suppression_reason(alert_id, labels, device_status, silences, inhibitors,
                                    policy, critical=is_critical)
        if reason is not None and status == "open":
            to_suppress.append((alert_id, reason))
            if reason in by_reason:
                details[alert_id] = by_reason[reason].details()
                if is_critical:
                    critical.add(alert_id)
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
        # saying which silence holds it and until when, where one does
        announce(conn, "suppressed", {i: details.get(i, {}) for i in suppressed
                                      if i not in quiet})
    if to_reword:
        conn.execute(_REASON, ([i for i, _ in to_reword], [r for _, r in to_reword], now))
    if to_release:
        told = conn.execute(_UNSUPPRESS, {"ids": to_release, "now": now}).fetchall()
        released = [int(r[0]) for r in told]
        _announce_released(conn, [r for r in told if int(r[0]) not in quiet])
    return Changes(sorted(suppressed), sorted(released),
                   {i: details[i] for i in suppressed if i in critical})


def announce(conn: psycopg.Connection, event: str,
             details: Mapping[int, dict[str, object]]) -> None:
    """`event` for each alert of `details`, with its details (alike ones in one statement).
    The caller announces so the critical alerts a silence held back from their opening
    (`Changes.held_critical`): the call centre hears of a personal alarm whatever holds it,
    with the silence and its end."""
    groups: dict[bytes, tuple[dict[str, object], list[int]]] = {}
    for alert_id, d in details.items():
        groups.setdefault(orjson.dumps(d), (d, []))[1].append(alert_id)
    for d, ids in groups.values():
        outbox.enqueue(conn, ids, event, ENGINE_ACTOR, d)


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
                       policy: AlertPolicy, *, critical: bool = False) -> str | None:
    """The first thing that holds the alert back, as a sentence; None if nothing does.

    A critical alert (a personal alarm; `critical`, or its severity label says so) is held
    back only by what a person decided about its device: a silence naming it (and no longer
    than `max_silence`), or the device's repair status. Not by a silence of a rule, a
    municipality or a pattern of ids, whenever it was made. Never by another alert: an
    inhibit rule written to quiet the devices behind an offline gateway must not hide
    someone who pressed the button (the gateway's own silence alert stays open until its
    sweep or message clears it, and the alarm may well come through another way)."""
    critical = critical or _label(labels, "severity") == CRITICAL
    if policy.silence_in_repair and device_status == "in_repair":
        return "the device is in repair (silenced by its registry status)"
    for s in silences:
        if (s.holds_critical or not critical) and all_match(s.matchers, labels):
            return s.reason
    if critical:
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


def _active_silences(conn: psycopg.Connection, now: datetime,
                     policy: AlertPolicy) -> list[_ActiveSilence]:
    rows = conn.execute("SELECT id, matchers, author, comment, starts_at, ends_at "
                        "FROM silences WHERE expired_at IS NULL AND starts_at <= %s "
                        "AND ends_at > %s ORDER BY id", (now, now)).fetchall()
    found = []
    for i, ms, author, comment, starts, ends in rows:
        matchers = tuple(Matcher.from_json(m) for m in ms)
        within = (ends - starts).total_seconds() <= policy.max_silence_s
        # equalities first: an alert of another device is passed over before any regex
        cheap_first = tuple(sorted(matchers, key=lambda m: m.op in (Op.RE, Op.NRE)))
        found.append(_ActiveSilence(int(i), cheap_first, str(author), str(comment), ends,
                                    within and names_devices(matchers)))
    return found


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
