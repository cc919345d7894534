"""The engine's writes to the alert queue: route, open, repeat or reopen by fingerprint, clear.

Runs inside the batch's transaction, so an alert exists exactly when the readings and events
that caused it are committed, and so does its outbox entry. A few statements per batch,
whatever the number of alerts.

- Deduplication: one alert that is not resolved per fingerprint; a repeat counts.
- Reopening: a firing recorded within the policy's `reopen_window` after the fingerprint's
  latest alert was resolved (and newer than anything that alert saw) reopens that alert
  instead of opening a twin; not when the device was deployed since the alert was made (to
  its next citizen: another episode, perhaps another municipality's).
- Routing: the policy's tree chooses queue, priority and time to claim; the rule's queue and
  priority are the defaults.
- Suppression: a new alert held back by a silence, an inhibition or a device in repair is
  stored as `suppressed`, with the reason; a critical one a silence holds is announced
  (`opened`) all the same, with the silence and its end in the event's details.
- Taking back: an alert that late rows, evaluated again in order, do not fire is resolved
  as a clear resolves one, with a note, having fired no time (`repeat_count` 0); one an
  operator holds is left to them, noted (`unsupported_alerts`, `take_back`).

Idempotent by device time: a firing changes an alert only if it happened after everything the
alert has already seen (`last_fired_at`), so a redelivered message changes nothing and an
alarm an operator resolved is not reopened by a copy of itself. An alert taken back stands
for no firing, and holds back none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
import psycopg

from vagt.alerts import outbox
from vagt.alerts.policy import AlertPolicy, current_policy
from vagt.alerts.routing import route_alert
from vagt.alerts.suppression import announce, is_inhibition_source, reconcile

ENGINE_ACTOR = "vagt"


@dataclass(frozen=True, slots=True)
class AlertFiring:
    """A rule's condition held for one device in one batch (`count` times)."""

    rule: str
    device_id: str
    summary: str
    severity: str
    priority: int       # the rule's: the routing tree may set another
    queue: str          # the rule's: the routing tree may set another
    first_time: float   # unix seconds, device time
    last_time: float
    count: int = 1
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rule, self.device_id)


def fingerprint(rule: str, device_id: str) -> str:
    return f"{rule}|{device_id}"


# %b: binary parameters; text arrays of JSON would cost a regex escape per element
_INCOMING = """
incoming AS (
    SELECT * FROM unnest(%(fp)b::text[], %(rule)b::text[], %(device)b::text[],
                         %(labels)b::text[], %(summary)b::text[], %(severity)b::text[],
                         %(priority)b::int[], %(queue)b::text[], %(extra)b::text[],
                         %(route)b::text[], %(ttc)b::float8[], %(first)b::float8[],
                         %(last)b::float8[], %(n)b::int[])
        AS t(fingerprint, rule, device_id, labels, summary, severity, priority, queue, extra,
             route, ttc, first_time, last_time, n)
)"""

_REOPEN = "WITH" + _INCOMING + """,
latest AS (
    SELECT DISTINCT ON (a.fingerprint) a.id, a.fingerprint, a.status, a.resolved_at,
           a.last_fired_at, a.resolved_by, a.resolution_code, a.repeat_count, a.device_id,
           a.created_at
    FROM alerts a JOIN incoming i USING (fingerprint)
    ORDER BY a.fingerprint, a.id DESC
), target AS (
    SELECT l.id, l.resolved_by AS was_resolved_by, l.resolution_code AS was_code, i.*
    FROM latest l JOIN incoming i USING (fingerprint)
    WHERE l.status = 'resolved'
      AND (%(new)s OR l.last_fired_at < to_timestamp(i.last_time) OR l.repeat_count = 0)
      AND now() <= l.resolved_at + make_interval(secs => %(window)s)
      -- not the device's last citizen's: deployed since, it is another's episode (and
      -- municipality, whose operators would read the last one's notes and history). By the
      -- database's clocks, both: a device's own may be anywhere
      AND NOT EXISTS (SELECT 1 FROM device_assignments d
                      WHERE d.device_id = l.device_id AND d.since > l.created_at)
), reopened AS (
    UPDATE alerts a SET
        status = 'open', labels = t.labels::jsonb, summary = t.summary, severity = t.severity,
        priority = t.priority, base_priority = t.priority, queue = t.queue,
        extra_queues = ARRAY(SELECT jsonb_array_elements_text(t.extra::jsonb)),
        route = t.route, time_to_claim = make_interval(secs => t.ttc),
        queued_at = now(), claim_deadline = now() + make_interval(secs => t.ttc),
        waiting_since = now(), announced = false,
        repeat_count = a.repeat_count + t.n,
        -- a new firing dated before the alert's last one (a clock behind) leaves it: that
        -- firing, recorded again, is then counted already
        last_fired_at = CASE WHEN a.repeat_count = 0 THEN to_timestamp(t.last_time)
                             ELSE greatest(a.last_fired_at, to_timestamp(t.last_time)) END,
        opened_at = CASE WHEN a.repeat_count = 0 THEN to_timestamp(t.first_time)
                         ELSE a.opened_at END,
        reopen_count = a.reopen_count + 1, reopened_at = clock_timestamp(),
        claimed_at = NULL, claimed_by = NULL, acknowledged_at = NULL, acknowledged_by = NULL,
        resolved_at = NULL, resolved_by = NULL, resolution_code = NULL, escalated_at = NULL
    FROM target t WHERE a.id = t.id AND a.status = 'resolved'
    RETURNING a.id, a.fingerprint, a.queue
), audited AS (
    INSERT INTO alert_audit (alert_id, actor, action, from_status, to_status, note, details)
    SELECT r.id, 'rule:' || t.rule, 'reopen', 'resolved', 'open',
           'fired again within the reopen window',
           jsonb_build_object('previously_resolved_by', t.was_resolved_by,
                              'previous_resolution_code', t.was_code)
    FROM reopened r JOIN target t USING (id)
)
SELECT id, fingerprint, queue FROM reopened
"""

# The fingerprints' alerts not resolved, locked (in id order, as every engine takes them) for
# the rest of the transaction before _REOPEN looks for a resolved one: an operator's resolve
# in progress is waited for, and _REOPEN, a statement of its own, then sees it committed and
# reopens the alert. Without it _REOPEN found the alert open, the resolve committed, and
# _UPSERT, finding no open alert, opened a new one: the alarm was queued, but not as the
# episode just resolved, and no `reopen` was audited. The rows are those _UPSERT locks
# anyway (to count a repeat), only sooner; as _UPSERT's, after the devices' rows
# (`app.rule_state`), which no one locks after an alert's.
_LOCK_UNRESOLVED = """
SELECT count(*) FROM (SELECT 1 FROM alerts WHERE fingerprint = ANY(%s) AND status <> 'resolved'
                      ORDER BY id FOR NO KEY UPDATE) AS locked
"""

_UPSERT = "WITH" + _INCOMING + """,
upserted AS (
    INSERT INTO alerts AS a (fingerprint, rule, device_id, labels, summary, severity, priority,
                             base_priority, queue, extra_queues, route, time_to_claim,
                             queued_at, claim_deadline, opened_at, last_fired_at, repeat_count,
                             waiting_since)
    SELECT fingerprint, rule, device_id, labels::jsonb, summary, severity, priority, priority,
           queue, ARRAY(SELECT jsonb_array_elements_text(extra::jsonb)), route,
           make_interval(secs => ttc), now(), now() + make_interval(secs => ttc),
           to_timestamp(first_time), to_timestamp(last_time), n, now()
    FROM incoming i
    WHERE %(new)s OR NOT EXISTS (SELECT 1 FROM alerts r
                                 WHERE r.fingerprint = i.fingerprint AND r.status = 'resolved'
                                   AND r.last_fired_at >= to_timestamp(i.last_time)
                                   AND r.repeat_count > 0)
    ON CONFLICT (fingerprint) WHERE status <> 'resolved' DO UPDATE
       SET repeat_count = a.repeat_count + EXCLUDED.repeat_count,
           last_fired_at = EXCLUDED.last_fired_at,
           summary = EXCLUDED.summary
       WHERE EXCLUDED.last_fired_at > a.last_fired_at
    RETURNING a.id, a.rule, a.queue, a.priority, a.route, (a.xmax = 0) AS opened,
              a.fingerprint
), audited AS (
    INSERT INTO alert_audit (alert_id, actor, action, from_status, to_status, details)
    SELECT id, 'rule:' || rule, 'open', NULL, 'open',
           jsonb_build_object('route', route, 'queue', queue, 'priority', priority)
    FROM upserted WHERE opened
)
SELECT id, queue, opened, fingerprint FROM upserted
"""

# An expiry (`quiet`: the rule heard nothing for that long) leaves an alert an operator holds:
# nothing said the condition ended, and the operator may be acting on it. A clear from late
# rows evaluated again in order (`since`, `holds`: see `clear_alerts`) resolves the alert
# even though it fired after the clear, if those firings came from the rows evaluated again.
_CLEAR = """
WITH incoming AS (
    SELECT * FROM unnest(%s::text[], %s::float8[], %s::text[], %s::float8[], %s::float8[])
        AS t(fingerprint, at, quiet, since, holds)
), target AS (
    SELECT a.id, a.rule, a.status, a.labels,
           coalesce('no new event for ' || i.quiet || ' (the rule''s clear_after), '
                    || 'which is not a sign that it ended',
                    'the condition no longer holds') AS why
    FROM alerts a JOIN incoming i USING (fingerprint)
    WHERE a.status <> 'resolved'
      AND (a.last_fired_at <= to_timestamp(i.at)
           OR a.last_fired_at > to_timestamp(i.since) AND a.last_fired_at < to_timestamp(i.holds))
      AND (i.quiet IS NULL OR a.status NOT IN ('claimed', 'acknowledged'))
    FOR UPDATE OF a
), resolved AS (
    UPDATE alerts a SET status = 'resolved', resolved_at = clock_timestamp(),
                        resolved_by = 'rule:' || a.rule, resolution_code = 'cleared',
                        suppressed_reason = NULL, note = 'cleared: ' || target.why
    FROM target WHERE a.id = target.id
    RETURNING a.id
), audited AS (
    INSERT INTO alert_audit (alert_id, actor, action, from_status, to_status, note, details)
    SELECT id, 'rule:' || rule, 'resolve', status, 'resolved', why,
           '{"resolution_code": "cleared"}'::jsonb
    FROM target
)
SELECT t.id, t.labels FROM target t JOIN resolved USING (id)
"""


def record_firings(conn: psycopg.Connection, firings: Sequence[AlertFiring],
                   policy: AlertPolicy | None = None, *, new: bool = False
                   ) -> list[tuple[int, str]]:
    """Open an alert per new fingerprint, count a repeat on an open one, reopen a recent one.

    A firing no later (by device time) than the fingerprint's resolved alert last fired is
    taken for one that alert counted (the same rows recorded again: a redelivery, the alarm
    lane's second evaluation, a replay) and opens nothing; unless the caller knows its rows
    are `new` (stored by this transaction, never recorded): then it is a new episode (an
    alarm pressed on a device whose clock is behind), which reopens the alert within the
    reopen window, and else opens one.

    The fingerprints' alerts not resolved are locked first (`_LOCK_UNRESOLVED`): a firing
    that comes as an operator resolves one waits for the resolve, and reopens the alert.

    Returns (id, queue) of the alerts opened or reopened now (suppressed ones included).
    """
    if not firings:
        return []
    policy = policy or current_policy()
    labels = _labels(conn, firings, policy)
    params = _columns(firings, labels, policy)
    conn.execute(_LOCK_UNRESOLVED, (params["fp"],))
    reopened = conn.execute(_REOPEN, {**params, "window": policy.reopen_window_s,
                                      "new": new}).fetchall()
    again = {str(r[1]) for r in reopened}
    if again:
        keep = [i for i, f in enumerate(firings) if f.fingerprint not in again]
        params = {k: [v[i] for i in keep] for k, v in params.items()}
    rows = conn.execute(_UPSERT, {**params, "new": new}).fetchall() if params["fp"] else []
    opened = [(int(r[0]), str(r[1])) for r in rows if r[2]]
    new_ids = {i for i, _ in opened}
    reopened_ids = {int(r[0]) for r in reopened}
    fresh = new_ids | reopened_ids
    if fresh:
        fresh_fps = again | {str(r[3]) for r in rows if r[2]}
        sources = any(is_inhibition_source(labels[i], policy)
                      for i, f in enumerate(firings) if f.fingerprint in fresh_fps)
        changes = reconcile(conn, policy=policy, alert_ids=None if sources else fresh,
                            quiet=fresh)
        held = set(changes.suppressed)
        outbox.enqueue(conn, new_ids - held, "opened", ENGINE_ACTOR)
        outbox.enqueue(conn, reopened_ids - held, "reopened", ENGINE_ACTOR)
        # a critical alert a silence holds back is announced all the same, saying so
        critical = changes.held_critical
        announce(conn, "opened", {i: d for i, d in critical.items() if i in new_ids})
        announce(conn, "reopened", {i: d for i, d in critical.items() if i in reopened_ids})
    return opened + [(int(r[0]), str(r[2])) for r in reopened]


# The fingerprint's latest alert: open, or resolved (the rule cleared it, say, before the late
# rows came) if the rows fired before it last fired, that is, in the episode it was. Where
# every firing of it since `since` came from the rows evaluated again (it last fired after
# `since`, and before the rule's state may hold it again: `holds`), they say when it began
# and last fired; else only if earlier or later than the alert has it.
_RECOUNT = """
WITH c AS (
    SELECT * FROM unnest(%s::text[], %s::float8[], %s::float8[], %s::int8[], %s::float8[],
                         %s::float8[])
        AS c(fingerprint, first_time, last_time, more, since, holds)
), latest AS (
    SELECT DISTINCT ON (a.fingerprint) a.id, c.*,
           a.last_fired_at > to_timestamp(c.since)
               AND a.last_fired_at < to_timestamp(c.holds) AS rejudged
    FROM alerts a JOIN c USING (fingerprint)
    ORDER BY a.fingerprint, a.id DESC
)
UPDATE alerts a SET repeat_count = greatest(a.repeat_count + l.more, 1),
       opened_at = CASE WHEN l.rejudged AND a.opened_at > to_timestamp(l.since)
                        THEN to_timestamp(l.first_time)
                        ELSE least(a.opened_at, to_timestamp(l.first_time)) END,
       last_fired_at = CASE WHEN l.rejudged THEN to_timestamp(l.last_time)
                            ELSE greatest(a.last_fired_at, to_timestamp(l.last_time)) END
FROM latest l
WHERE a.id = l.id
  AND (a.status <> 'resolved'
       OR to_timestamp(l.first_time) <= a.last_fired_at AND a.repeat_count > 0)
RETURNING a.fingerprint
"""


def recount_firings(conn: psycopg.Connection, fingerprints: Sequence[str],
                    first: Sequence[float], last: Sequence[float],
                    more: Sequence[int],
                    rejudged: Sequence[tuple[float, float] | None] | None = None) -> set[str]:
    """Correct alerts after their device's rows were evaluated again in order (late rows
    came): `more` rows fired than were counted (fewer if negative), the condition began at
    `first` if that is earlier, and fired last at `last` if that is later. The alert is the
    fingerprint's latest: open, or resolved if the rows fired in its episode (a status is
    never changed here). `rejudged`, per alert: None, or (since, holds) as `clear_alerts`
    takes them: where the alert's firings after `since` all came from the rows evaluated
    again, it begins and last fires where they say, earlier or later. Returns the
    fingerprints corrected; the others' firings are new."""
    if not fingerprints:
        return set()
    again = list(rejudged) if rejudged is not None else [None] * len(fingerprints)
    rows = conn.execute(_RECOUNT, (list(fingerprints), list(first), list(last), list(more),
                                   [None if r is None else r[0] for r in again],
                                   [None if r is None else r[1] for r in again])).fetchall()
    return {str(r[0]) for r in rows}


@dataclass(frozen=True, slots=True)
class Latest:
    """A fingerprint's latest alert, as `vagt.app.replay.correct` weighs late rows against
    it: the device time it last fired, and whether a person resolved it (by their clock, not
    the device's: a firing the alert did not count came after that, whatever its date)."""

    last_fired_at: float
    resolved_by_person: bool


# 'cleared' is kept for the engine's resolutions (a clear, an expiry, a take-back): any other
# resolution of an alert that counted a firing is a person's
_LATEST = """
SELECT DISTINCT ON (fingerprint) fingerprint, extract(epoch FROM last_fired_at)::float8,
       status = 'resolved' AND resolution_code IS DISTINCT FROM 'cleared' AND repeat_count > 0
FROM alerts WHERE fingerprint = ANY(%s)
ORDER BY fingerprint, id DESC
"""


def latest_alerts(conn: psycopg.Connection, fingerprints: Sequence[str]) -> dict[str, Latest]:
    """Of `fingerprints`, those with an alert: their latest (`Latest`)."""
    if not fingerprints:
        return {}
    rows = conn.execute(_LATEST, (list(fingerprints),)).fetchall()
    return {str(fp): Latest(float(last), bool(person)) for fp, last, person in rows}


@dataclass(frozen=True, slots=True)
class Unsupported:
    """An alert that late rows, evaluated again in order, do not fire (`unsupported_alerts`);
    times are device time, unix seconds."""

    id: int
    fingerprint: str
    opened_at: float
    last_fired_at: float


_UNSUPPORTED = """
SELECT a.id, a.fingerprint, extract(epoch FROM a.opened_at)::float8,
       extract(epoch FROM a.last_fired_at)::float8
FROM alerts a
JOIN unnest(%s::text[], %s::float8[], %s::float8[]) AS i(fingerprint, since, holds)
    USING (fingerprint)
WHERE a.status <> 'resolved' AND a.opened_at > to_timestamp(i.since)
  AND a.last_fired_at < to_timestamp(i.holds)
ORDER BY a.id
FOR UPDATE OF a
"""


def unsupported_alerts(conn: psycopg.Connection, fingerprints: Sequence[str],
                       since: Sequence[float], holds: Sequence[float]) -> list[Unsupported]:
    """Of `fingerprints`, whose rules fired nothing when their device's rows were evaluated
    again in order after device time `since`, the alert not resolved that those rows opened
    (after `since`), and that last fired before `holds`, from when the rule's state may hold
    an alert (`RuleEngine.holds_from`: a dose still due may be missed at the next tick).
    Locked until the transaction ends; `take_back` them."""
    if not fingerprints:
        return []
    rows = conn.execute(_UNSUPPORTED, (list(fingerprints), list(since), list(holds))).fetchall()
    return [Unsupported(int(i), str(fp), float(a), float(b)) for i, fp, a, b in rows]


@dataclass(frozen=True, slots=True)
class Answered(Unsupported):
    """A sequence rule's alert (a missed dose) that fired at one deadline only, and the
    earliest `then` event (a dose.taken) that came within its window but too late to be
    evaluated in order (`answered_alerts`): its `first` (`first_code`, due `within_s` before
    the alert opened) was answered in time."""

    first_code: str
    answer_code: str
    answer_at: float
    within_s: float


# One deadline fired (`repeat_count` 1, last fired when it opened): an alert of several is
# more than the one dose an answer answers. 1 ms either side: a time the database keeps to
# the microsecond, as `vagt.app.replay.explain` compares.
_ANSWERED = """
SELECT a.id, a.fingerprint, extract(epoch FROM a.opened_at)::float8,
       extract(epoch FROM a.last_fired_at)::float8, coalesce(a.labels->>'code', ''), i.code,
       i.at, i.within
FROM unnest(%s::text[], %s::float8[], %s::float8[], %s::text[]) AS i(fingerprint, at, within, code)
JOIN alerts a USING (fingerprint)
WHERE a.status <> 'resolved' AND a.repeat_count = 1 AND a.last_fired_at = a.opened_at
  AND to_timestamp(i.at) BETWEEN a.opened_at - make_interval(secs => i.within)
                                 - interval '1 millisecond'
                             AND a.opened_at + interval '1 millisecond'
ORDER BY a.id, i.at
FOR UPDATE OF a
"""


def answered_alerts(conn: psycopg.Connection, fingerprints: Sequence[str],
                    times: Sequence[float], within: Sequence[float],
                    codes: Sequence[str]) -> list[Answered]:
    """Of `fingerprints` (sequence rules' alerts, each with the device time, window and code
    of a `then` event), the alerts not resolved that fired at one deadline, whose window
    (`within` before it) the event came in, each with its earliest such event. Locked until
    the transaction ends; `take_back` them."""
    if not fingerprints:
        return []
    rows = conn.execute(_ANSWERED, (list(fingerprints), list(times), list(within),
                                    list(codes))).fetchall()
    found: dict[int, Answered] = {}
    for i, fp, opened, last, first_code, code, at, window in rows:
        found.setdefault(int(i), Answered(int(i), str(fp), float(opened), float(last),
                                          str(first_code), str(code), float(at),
                                          float(window)))
    return list(found.values())


# Taken back: resolved as the rule's clear is (the receivers see a resolution, code
# `cleared`), fired no time in order (`repeat_count` 0: the queue lets its fingerprint fire
# again at any time, see _UPSERT). One an operator holds stays theirs, with a note (once).
_TAKE_BACK = """
WITH incoming AS (
    SELECT * FROM unnest(%s::int8[], %s::text[]) AS t(id, why)
), target AS (
    SELECT a.id, a.rule, a.status, a.labels, a.status IN ('claimed', 'acknowledged') AS held,
           CASE WHEN a.status IN ('claimed', 'acknowledged')
                THEN 'vagt would take this back, and leaves it to ' || a.claimed_by
                     || ', who holds it: ' || i.why
                ELSE 'taken back: ' || i.why END AS note
    FROM alerts a JOIN incoming i USING (id)
    WHERE a.status <> 'resolved'
    FOR UPDATE OF a
), fresh AS (
    SELECT * FROM target t
    WHERE NOT t.held OR NOT EXISTS (SELECT 1 FROM alert_audit u
                                    WHERE u.alert_id = t.id AND u.action = 'note'
                                      AND u.actor = 'rule:' || t.rule AND u.note = t.note)
), resolved AS (
    UPDATE alerts a SET status = 'resolved', resolved_at = clock_timestamp(),
                        resolved_by = 'rule:' || a.rule, resolution_code = 'cleared',
                        suppressed_reason = NULL, repeat_count = 0, note = f.note
    FROM fresh f WHERE a.id = f.id AND NOT f.held
), noted AS (
    UPDATE alerts a SET note = concat_ws(E'\\n', a.note, f.note)
    FROM fresh f WHERE a.id = f.id AND f.held
), audited AS (
    INSERT INTO alert_audit (alert_id, actor, action, from_status, to_status, note, details)
    SELECT id, 'rule:' || rule, CASE WHEN held THEN 'note' ELSE 'resolve' END, status,
           CASE WHEN held THEN status ELSE 'resolved' END, note,
           CASE WHEN held THEN '{}' ELSE '{"resolution_code": "cleared", "taken_back": true}'
           END::jsonb
    FROM fresh
)
SELECT id, held, labels, note FROM fresh ORDER BY id
"""


def take_back(conn: psycopg.Connection, alerts: Sequence[Unsupported], why: Sequence[str],
              policy: AlertPolicy | None = None) -> tuple[list[int], list[int]]:
    """Resolve `alerts` (see `unsupported_alerts`), each with a note saying `why` ("taken
    back: " and it), as the rule's clear resolves an alert: the outbox tells every receiver. One that
    an operator holds (claimed, acknowledged) is left to them, with the note added once, as
    an expiry leaves it (`clear_alerts`). Returns the ids resolved and the ids noted."""
    if not alerts:
        return [], []
    policy = policy or current_policy()
    rows = conn.execute(_TAKE_BACK, ([a.id for a in alerts], list(why))).fetchall()
    resolved = [int(r[0]) for r in rows if not r[1]]
    noted = [(int(r[0]), str(r[3])) for r in rows if r[1]]
    outbox.enqueue(conn, resolved, "resolved", ENGINE_ACTOR,
                   {"resolution_code": "cleared", "taken_back": True})
    for alert_id, note in noted:
        outbox.enqueue(conn, [alert_id], "note", ENGINE_ACTOR, {"note": note})
    if any(is_inhibition_source(r[2], policy) for r in rows if not r[1]):
        reconcile(conn, policy=policy)
    return resolved, [i for i, _ in noted]


def clear_alerts(conn: psycopg.Connection, fingerprints: Sequence[str],
                 times: Sequence[float], quiet: Sequence[str | None] | None = None,
                 policy: AlertPolicy | None = None,
                 rejudged: Sequence[tuple[float, float] | None] | None = None) -> list[int]:
    """Resolve the open alerts whose condition cleared at `times` (not before they last fired).

    `quiet`, per alert: None if its condition ended, or how long its rule heard nothing (an
    expiry, see `Transitions.add_clears`): then an alert an operator holds stays theirs.
    `rejudged`, per alert: None, or (since, holds) where the clear comes from late rows
    evaluated again in order from device time `since`, after which the rule's state holds
    nothing before `holds` (`RuleEngine.holds_from`): an alert that last fired after the
    clear, on those rows taken out of order, is resolved too.

    Alerts that an inhibition held back only because of a cleared one come back.
    """
    if not fingerprints:
        return []
    policy = policy or current_policy()
    none = [None] * len(fingerprints)
    again = list(rejudged) if rejudged is not None else none
    rows = conn.execute(_CLEAR, (list(fingerprints), list(times),
                                 list(quiet) if quiet is not None else none,
                                 [None if r is None else r[0] for r in again],
                                 [None if r is None else r[1] for r in again])).fetchall()
    ids = [int(r[0]) for r in rows]
    outbox.enqueue(conn, ids, "resolved", ENGINE_ACTOR, {"resolution_code": "cleared"})
    if any(is_inhibition_source(r[1], policy) for r in rows):
        reconcile(conn, policy=policy)
    return ids


def _labels(conn: psycopg.Connection, firings: Sequence[AlertFiring],
            policy: AlertPolicy) -> list[dict[str, str]]:
    """The firing's labels, with severity and the registry attributes the policy names."""
    attrs: dict[str, dict[str, object]] = {}
    if policy.label_attributes:
        devices = sorted({f.device_id for f in firings})
        for device_id, attributes in conn.execute(
                "SELECT device_id, attributes FROM devices WHERE device_id = ANY(%s)",
                (devices,)):
            attrs[device_id] = attributes or {}
    result = []
    for f in firings:
        labels = {"rule": f.rule, "device_id": f.device_id, "severity": f.severity}
        extra = attrs.get(f.device_id, {})
        for entry in policy.label_attributes:   # "name", or "label=attribute"
            label, _, attribute = entry.partition("=")
            value = extra.get(attribute or label)
            if value not in (None, "") and label not in labels:
                labels[label] = str(value)
        result.append({**labels, **f.labels})
    return result


def _columns(firings: Sequence[AlertFiring], labels: list[dict[str, str]],
             policy: AlertPolicy) -> dict[str, list[object]]:
    dests = [route_alert(policy.root, lab, default_queue=f.queue, default_priority=f.priority,
                         time_to_claim=policy.time_to_claim_s)
             for f, lab in zip(firings, labels)]
    return {
        "fp": [f.fingerprint for f in firings], "rule": [f.rule for f in firings],
        "device": [f.device_id for f in firings],
        "labels": [orjson.dumps(lab).decode() for lab in labels],
        "summary": [f.summary for f in firings], "severity": [f.severity for f in firings],
        "priority": [d.priority for d in dests], "queue": [d.queue for d in dests],
        "extra": [orjson.dumps(d.extra_queues).decode() for d in dests],
        "route": [d.route for d in dests], "ttc": [d.time_to_claim_s for d in dests],
        "first": [f.first_time for f in firings], "last": [f.last_time for f in firings],
        "n": [f.count for f in firings],
    }
