"""What the service centre does to a device: register, deploy, return, repair, retire, lost.

Each change locks the device's row (FOR UPDATE), checks the transition against
`vagt.devices.lifecycle`, changes the device and its assignment, and writes the audit row,
in one transaction: two people changing one device at once cannot both succeed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from datetime import datetime

import psycopg
from psycopg import errors, sql
from psycopg.types.json import Jsonb

from vagt.devices import lifecycle
from vagt.devices.broker_access import BROKER_USER_CHARS, device_id_refusal
from vagt.devices.catalogue import Catalogue
from vagt.devices.csvfile import OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from vagt.devices.errors import (
    AlreadyRegistered,
    DeviceBusy,
    InvalidTransition,
    InvalidValue,
    UnknownDevice,
)
from vagt.devices.lifecycle import Action, Status
from vagt.devices.privacy import (
    PrivacyError,
    checked_attributes,
    checked_citizen_ref,
    checked_note,
    municipality_problem,
    same_spelling,
)
from vagt.devices.rows import DEVICE_COLUMNS, DeviceRow, device_cursor
from vagt.ingest.topics import DEVICE_ID
from vagt.privacy import contains_cpr, looks_like_cpr
from vagt.text import unprintable_problem

LOCK_TIMEOUT = "5s"   # a person waits this long for a device the engine or an import holds
MAX_ACTOR_LENGTH = 100
CENTRAL_STOCK = ""    # the municipality of a device back in the centre's own stock


def checked_actor(actor: str) -> str:
    """Who acts, for the audit log: 1 to 100 printable characters, never a CPR number."""
    name = actor.strip()
    if problem := unprintable_problem(name, "who acts (actor)"):
        raise InvalidValue(problem)
    if not 0 < len(name) <= MAX_ACTOR_LENGTH:
        raise InvalidValue(f"who acts must be named (actor): 1 to {MAX_ACTOR_LENGTH} "
                           "printable characters")
    if contains_cpr(name):
        raise PrivacyError("who acts (actor) holds something shaped like a civil "
                           "registration (CPR) number; vagt never stores CPR numbers: give "
                           "your user name or initials")
    return name


def checked_device_id(device_id: str) -> str:
    """A device id as given to look a device up; `new_device_id_problem` says more of one
    to register."""
    device_id = device_id.strip()
    if looks_like_cpr(device_id):
        raise InvalidValue("the device id looks like a civil registration (CPR) number; "
                           "vagt never stores CPR numbers")
    if not DEVICE_ID.match(device_id):
        raise InvalidValue(f"device id '{device_id[:70]}' is not valid: use 1 to 64 of "
                           f"{BROKER_USER_CHARS}")
    return device_id


def new_device_id_problem(device_id: str) -> str | None:
    """Why a device cannot be registered with this id (a valid one), or None: a CPR number
    in it, or an id the device could not log in to the broker with."""
    if contains_cpr(device_id):
        return ("the device id holds something shaped like a civil registration (CPR) "
                "number; vagt never stores CPR numbers")
    return device_id_refusal(device_id)


def checked_municipality(municipality: str) -> str:
    municipality = same_spelling(municipality)
    problem = municipality_problem(municipality)
    if problem:
        raise InvalidValue(problem)
    return municipality


def _spelling_key(municipality: str) -> str:
    """What spellings of one municipality share: "Århus", "aarhus", "Aarhus" alike, and
    "Ringkøbing-Skjern", "Ringkobing Skjern", "Ringkoebing-Skjern" (no two of the country's
    municipalities share one)."""
    folded = unicodedata.normalize("NFKD", municipality.casefold())
    folded = "".join(c for c in folded if not unicodedata.combining(c))   # å: a
    for spelled, letter in (("ø", "o"), ("æ", "a"), ("aa", "a"), ("oe", "o"), ("ae", "a")):
        folded = folded.replace(spelled, letter)
    return "".join(c for c in folded if c.isalnum())


def spelled_otherwise(conn: psycopg.Connection, municipalities: Iterable[str]) -> list[str]:
    """Why each of `municipalities` that the registry knows under another spelling cannot be
    used: a second spelling makes a second municipality, whose devices' alerts do not reach
    the first one's queues, routes and supervisors."""
    wanted = {m for m in municipalities if m}
    if not wanted:
        return []
    within: dict[str, set[str]] = {}
    for m in wanted:
        within.setdefault(_spelling_key(m), set()).add(m)
    twice = [f"the municipalities {' and '.join(repr(m) for m in sorted(names))} are one "
             "spelled two ways: use one spelling"
             for names in within.values() if len(names) > 1]
    names = {str(name) for (name,) in conn.execute(
        "SELECT municipality FROM devices WHERE municipality <> '' "
        "UNION SELECT municipality FROM device_assignments")}
    known = {_spelling_key(name): name for name in sorted(names)}
    return twice + [f"the municipality {m!r} is spelled {known[key]!r} in the registry: use "
                    "that spelling (another makes another municipality, whose alerts miss "
                    f"{known[key]}'s queues and supervisors)"
                    for m in sorted(wanted - names) if (key := _spelling_key(m)) in known]


def _known_spelling(conn: psycopg.Connection, municipality: str) -> None:
    problems = spelled_otherwise(conn, [municipality])
    if problems:
        raise InvalidValue(problems[0])


# --- register ----------------------------------------------------------------------------

_INSERT = sql.SQL("""
    INSERT INTO devices (device_id, vendor, model, type, municipality, attributes, status,
                         status_since, registered_at)
    VALUES (%(id)s, %(vendor)s, %(model)s, %(type)s, %(municipality)s, %(attributes)s,
            'in_stock', %(at)s, %(at)s)
    ON CONFLICT (device_id) DO NOTHING
    RETURNING {}""").format(DEVICE_COLUMNS)


def register(conn: psycopg.Connection, device_id: str, vendor: str, model: str, *,
             catalogue: Catalogue, actor: str, type_: str | None = None,
             municipality: str = CENTRAL_STOCK, attributes: dict[str, str] | None = None,
             note: str | None = None, at: datetime | None = None,
             via: str | None = None) -> DeviceRow:
    """Register a new device of an approved model; it starts in stock.

    `municipality` is the municipality whose stock holds it ("" = the centre's own stock).
    A model the catalogue does not approve raises CatalogueError, saying what is approved.
    """
    device_id = checked_device_id(device_id)
    if problem := new_device_id_problem(device_id):
        raise InvalidValue(problem)
    actor = checked_actor(actor)
    note = checked_note(note)
    for what, value in (("vendor", vendor), ("model", model), ("type", type_ or "")):
        if problem := unprintable_problem(value, f"the {what}"):
            raise InvalidValue(problem)   # before the catalogue's refusal repeats it
    approved = catalogue.require(vendor, model, type_)
    municipality = checked_municipality(municipality) if municipality.strip() else CENTRAL_STOCK
    attributes = checked_attributes(attributes or {})
    columns = [k for k in attributes if k.lower() in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)]
    if columns:   # kept apart, the registry's export would leave it out (and its import)
        raise InvalidValue(f"'{columns[0]}' is a column of the registry, not an attribute: "
                           "give it as the register or deploy command's own option")
    with conn.transaction(), device_cursor(conn) as cur:
        _known_spelling(conn, municipality)
        when = _now(conn, at)
        row = cur.execute(_INSERT, {
            "id": device_id, "vendor": approved.vendor, "model": approved.model,
            "type": approved.type, "municipality": municipality,
            "attributes": Jsonb(attributes), "at": when}).fetchone()
        if row is None:
            existing = _fetch(cur, device_id)
            raise AlreadyRegistered(
                f"{device_id} is already registered ({existing.vendor} {existing.model}, "
                f"{existing.status})" if existing else f"{device_id} is already registered")
        _audit(conn, when, actor, lifecycle.REGISTER, device_id, {
            "to": Status.IN_STOCK.value, "vendor": approved.vendor, "model": approved.model,
            "type": approved.type, "municipality": municipality, "note": note, "via": via})
    return row


# --- transitions -------------------------------------------------------------------------


def deploy(conn: psycopg.Connection, device_id: str, *, citizen_ref: str, municipality: str,
           actor: str, note: str | None = None, at: datetime | None = None,
           via: str | None = None) -> DeviceRow:
    """Give a device in stock to a citizen (a pseudonymous reference) in a municipality."""
    citizen_ref = checked_citizen_ref(citizen_ref)
    municipality = checked_municipality(municipality)
    return _transition(conn, device_id, lifecycle.DEPLOY, Status.DEPLOYED, actor, note, at,
                       via, assign=(citizen_ref, municipality))


def return_device(conn: psycopg.Connection, device_id: str, *, to: Status = Status.IN_STOCK,
                  actor: str, note: str | None = None, at: datetime | None = None,
                  via: str | None = None) -> DeviceRow:
    """A deployed device comes back to the centre, to stock or to repair; the citizen's
    assignment ends."""
    return _transition(conn, device_id, lifecycle.RETURN, Status(to), actor, note, at, via)


def send_to_repair(conn: psycopg.Connection, device_id: str, *, actor: str,
                   note: str | None = None, at: datetime | None = None,
                   via: str | None = None) -> DeviceRow:
    """A device in stock found faulty goes to repair."""
    return _transition(conn, device_id, lifecycle.SEND_TO_REPAIR, Status.IN_REPAIR, actor,
                       note, at, via)


def repaired(conn: psycopg.Connection, device_id: str, *, actor: str, note: str | None = None,
             at: datetime | None = None, via: str | None = None) -> DeviceRow:
    """The repair is done: the device is back in stock."""
    return _transition(conn, device_id, lifecycle.REPAIRED, Status.IN_STOCK, actor, note, at,
                       via)


def retire(conn: psycopg.Connection, device_id: str, *, actor: str, note: str | None = None,
           at: datetime | None = None, via: str | None = None) -> DeviceRow:
    """Take a device in stock or in repair out of use for good."""
    return _transition(conn, device_id, lifecycle.RETIRE, Status.RETIRED, actor, note, at, via)


def report_lost(conn: psycopg.Connection, device_id: str, *, actor: str,
                note: str | None = None, at: datetime | None = None,
                via: str | None = None) -> DeviceRow:
    """The device is gone (for good); an assignment it had ends."""
    return _transition(conn, device_id, lifecycle.LOST, Status.LOST, actor, note, at, via)


_UPDATE = sql.SQL("""
    UPDATE devices SET status = %(to)s, status_since = %(at)s, municipality = %(municipality)s
    WHERE device_id = %(id)s RETURNING {}""").format(DEVICE_COLUMNS)

# The alerts of a device that are not resolved, "17 battery_low, 18 personal_alarm". Alerts
# are deduplicated by rule and device: while one is open, a new citizen's alarm from the
# device would be counted as a repeat of the last citizen's, with their labels, in their
# municipality, perhaps claimed by an operator dealing with them.
# `{device}`: the SQL that gives the device's id (a parameter, or a column of a query).
UNRESOLVED_ALERTS = """(SELECT string_agg(al.id || ' ' || al.rule, ', ' ORDER BY al.id)
FROM alerts al WHERE al.device_id = {device} AND al.status <> 'resolved')"""


def unresolved_refusal(device_id: str, alerts: str) -> str:
    return (f"{device_id} has alerts that are not resolved ({alerts}): resolve them first "
            f"(vagt alerts resolve ...), so that the next citizen's alerts are not added to "
            "them")


# The silences not ended that name the device (`device_id` = it): made for the last citizen,
# or for its repair ("sent for repair", 3 days), they would hold back the next citizen's
# alerts of it, their critical ones `suppressed`, until they end. A deployment waits for
# them to be ended, as for the last citizen's alerts. `{device}` as in UNRESOLVED_ALERTS.
NAMING_SILENCES = """(SELECT string_agg(s.id::text, ', ' ORDER BY s.id)
FROM silences s WHERE s.expired_at IS NULL AND s.ends_at > now()
  AND s.matchers @> jsonb_build_array(jsonb_build_object('name', 'device_id', 'op', '=',
                                                          'value', {device})))"""


def silenced_refusal(device_id: str, silences: str) -> str:
    return (f"{device_id} is named by silences that have not ended ({silences}): end them "
            "first (vagt silences expire ID --author ...), so that they do not hold back the next "
            "citizen's alerts")


_CLOSE = """UPDATE device_assignments SET until = %s WHERE device_id = %s AND until IS NULL
            RETURNING citizen_ref, municipality"""

_OPEN = """INSERT INTO device_assignments (device_id, citizen_ref, municipality, since)
           VALUES (%s, %s, %s, %s)"""

# The rules begin anew for the device's next citizen (migration 0010): `(device ids, time)`.
RESET_RULE_STATE = "SELECT vagt_reset_rule_state(%s::text[], %s)"
# So does its message counter (migrations 0013-14): a refurbished device counts from zero
# again, and kept at the last citizen's highest, no gap was counted until it passed it. The
# gaps counted so far stay: they are the device's record.
_RESET_COUNTER = ("UPDATE devices SET last_seq = NULL, seq_window = NULL "
                  "WHERE device_id = ANY(%s::text[])")


# The alarm lane makes its alerts without the devices' rows (a bulk batch may hold them): it
# holds this lock shared for its devices, and a deployment holds it alone for the device it
# deploys before it looks for alerts not resolved. Without it, an alarm committed just after
# that look left the next citizen's device with an open alert, whose repeats their alarms
# would be. Two keys (`vdep` in ASCII, the id's hash): apart from the one-key locks; taken in
# hash order, so that an import deploying many devices and the alarm lane never deadlock.
_DEPLOYMENT_LOCK = 0x76646570
_LOCK_DEPLOYMENTS = sql.SQL("""
    SELECT count({}(%s, h)) FROM (SELECT DISTINCT hashtext(d) AS h
                                  FROM unnest(%s::text[]) AS d ORDER BY h) AS hashes""")


def lock_for_deployment(conn: psycopg.Connection, device_ids: list[str]) -> None:
    """Wait for the alarms of `device_ids` being committed, and hold off new ones until the
    caller's transaction ends: what a deployment does before it looks for alerts."""
    conn.execute(_LOCK_DEPLOYMENTS.format(sql.Identifier("pg_advisory_xact_lock")),
                 (_DEPLOYMENT_LOCK, device_ids))


def hold_off_deployments(conn: psycopg.Connection, device_ids: list[str]) -> None:
    """Until the caller's transaction ends, no deployment of `device_ids` looks for their
    alerts (the alarm lane, which does not wait for the devices' rows); waits for one that
    is under way, so that what follows reads the registry as it left it."""
    conn.execute(_LOCK_DEPLOYMENTS.format(sql.Identifier("pg_advisory_xact_lock_shared")),
                 (_DEPLOYMENT_LOCK, device_ids))


def begin_deployment(conn: psycopg.Connection, device_ids: list[str], at: datetime) -> None:
    """What a device's next citizen starts without: the last one's rule state and message
    counter. In the caller's transaction, which holds the devices' rows."""
    conn.execute(RESET_RULE_STATE, (device_ids, at))
    conn.execute(_RESET_COUNTER, (device_ids,))


def _transition(conn: psycopg.Connection, device_id: str, action: Action, to: Status,
                actor: str, note: str | None, at: datetime | None, via: str | None,
                assign: tuple[str, str] | None = None) -> DeviceRow:
    """Lock, check, change, audit: one transaction (a savepoint inside the caller's).

    `via`: how the actor came (`cli:USER`, the command's login: `--actor` is typed)."""
    actor = checked_actor(actor)
    note = checked_note(note)
    device_id = checked_device_id(device_id)
    with conn.transaction(), device_cursor(conn) as cur:
        before = _locked(cur, device_id)
        lifecycle.check(device_id, Status(before.status), action, to)
        when = _now(conn, at, after=before.status_since)
        details: dict[str, object] = {"from": before.status, "to": to.value}
        municipality = before.municipality
        if action.closes_assignment:
            closed = conn.execute(_CLOSE, (when, device_id)).fetchone()
            if closed is not None:
                details["citizen_ref"], details["municipality"] = closed
            if to is not Status.LOST:
                municipality = CENTRAL_STOCK  # back in the centre's pool
        if assign is not None:
            _known_spelling(conn, assign[1])
            try:
                lock_for_deployment(conn, [device_id])
            except errors.LockNotAvailable as e:
                raise DeviceBusy(f"{device_id} has an alarm being committed; try again in a "
                                 "moment") from e
            alerts, silences = conn.execute(
                "SELECT " + UNRESOLVED_ALERTS.format(device="%(id)s") + ", "
                + NAMING_SILENCES.format(device="%(id)s::text"), {"id": device_id}
            ).fetchone() or (None, None)
            if alerts:
                raise InvalidTransition(unresolved_refusal(device_id, alerts))
            if silences:
                raise InvalidTransition(silenced_refusal(device_id, silences))
            citizen_ref, municipality = assign
            conn.execute(_OPEN, (device_id, citizen_ref, municipality, when))
            begin_deployment(conn, [device_id], when)
            details.update(citizen_ref=citizen_ref, municipality=municipality)
        details.update(note=note, via=via)
        after = cur.execute(_UPDATE, {"to": to.value, "at": when, "id": device_id,
                                      "municipality": municipality}).fetchone()
        assert after is not None, "the row is locked: it cannot have gone"
        _audit(conn, when, actor, action.name, device_id, details)
    return after


def _locked(cur: psycopg.Cursor[DeviceRow], device_id: str) -> DeviceRow:
    # SET LOCAL: ends with the transaction (the caller's, when this runs inside one).
    cur.connection.execute("SELECT set_config('lock_timeout', %s, true)", (LOCK_TIMEOUT,))
    try:
        cur.execute(sql.SQL("SELECT {} FROM devices WHERE device_id = %s FOR UPDATE").format(
            DEVICE_COLUMNS), (device_id,))
    except errors.LockNotAvailable as e:
        raise DeviceBusy(f"{device_id} is being changed by another session; try again in a "
                         "moment") from e
    row = cur.fetchone()
    if row is None:
        raise UnknownDevice(f"{device_id[:70]} is not registered; `vagt devices list` shows "
                            "the registry, `vagt devices register` adds a device")
    return row


def _fetch(cur: psycopg.Cursor[DeviceRow], device_id: str) -> DeviceRow | None:
    return cur.execute(sql.SQL("SELECT {} FROM devices WHERE device_id = %s").format(
        DEVICE_COLUMNS), (device_id,)).fetchone()


def _now(conn: psycopg.Connection, at: datetime | None,
         after: datetime | None = None) -> datetime:
    """The time of the change: `at` (a test's clock, an import's time) or the database's
    clock now. clock_timestamp(), not now(): the time the lock was held, so the audit trail's
    order is the order the changes really happened in."""
    if at is None:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        when: datetime = row[0]
    else:
        if at.tzinfo is None:
            raise InvalidValue("the time of a change needs a time zone")
        when = at
    if after is not None and when < after:
        raise InvalidTransition(f"the change cannot be at {when:%Y-%m-%d %H:%M:%S %Z}: the "
                                f"device's status last changed later, at "
                                f"{after:%Y-%m-%d %H:%M:%S %Z}")
    return when


def _audit(conn: psycopg.Connection, at: datetime, actor: str, action: str, device_id: str,
           details: dict[str, object]) -> None:
    conn.execute("INSERT INTO audit_log (at, actor, action, subject, details) "
                 "VALUES (%s, %s, %s, %s, %s)",
                 (at, actor, f"devices.{action}", device_id,
                  Jsonb({k: v for k, v in details.items() if v is not None})))


def audit_broker_access(conn: psycopg.Connection, actor: str, acl_file: str, devices: int,
                        engine_user: str, left_out: list[str] | None = None,
                        via: str | None = None) -> None:
    """Record that broker access was regenerated (who, when, for how many devices, and the
    deployed devices left out of the files)."""
    with conn.transaction():
        _audit(conn, _now(conn, None), checked_actor(actor), "broker_acl", acl_file,
               {"deployed_devices": devices, "engine_user": engine_user,
                "left_out": left_out or None, "via": via})
