"""The operator REST API (FastAPI): queues, alerts, silences, devices. OpenAPI at /openapi.json,
interactive documentation at /docs.

Every request runs in one transaction of the shared pool; every action is audited with the
caller's name (a token acts as the account it belongs to).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import psycopg
from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    status,
)
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg import errors
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from vagt import __version__
from vagt.alerts import accounts, actions, silences
from vagt.alerts.accounts import Principal, Role
from vagt.alerts.actions import (
    AlertBusy,
    AlertError,
    AlertNotFound,
    AlertRow,
    InvalidTransition,
)
from vagt.alerts.api import schemas
from vagt.alerts.api.auth import require
from vagt.alerts.matchers import MatcherError, parse_matcher
from vagt.alerts.observe import AlertObserver, NullObserver
from vagt.alerts.policy import AlertPolicy
from vagt.alerts.routing import queues_of
from vagt.errors import first_line
from vagt.privacy import HoldsCpr, mask_cpr

log = logging.getLogger("vagt.api")

SESSION_LENGTH = timedelta(hours=12)
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": schemas.Problem, "description": "no or wrong credentials"},
    403: {"model": schemas.Problem, "description": "the caller's role is too low"},
}
_ALERT_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    404: {"model": schemas.Problem,
          "description": "no such alert, or it is outside the caller's municipality"},
    409: {"model": schemas.Problem, "description": "the alert's status or holder refuses it"},
    503: {"model": schemas.Problem, "description": "the alert (or one it affects) is being "
          "changed by another session; nothing was changed: try again (Retry-After)"},
}


# An alert's or a silence's id: a bigint. A larger number is none of them, and one stopped
# an expiry's refusal from being audited (HTTP 500 where 404 was owed).
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def create_app(pool: ConnectionPool, policy: AlertPolicy, *,
               observer: AlertObserver | None = None,
               clock: Callable[[], float] = time.time) -> FastAPI:
    app = FastAPI(title="vagt operator API", version=__version__,
                  description="The call-centre queue of vagt: alerts most urgent first, "
                              "claimed by one operator at a time, every action audited. "
                              "Authenticate with HTTP Basic (operator account) or a Bearer "
                              "API token. A municipal account sees only its municipality: "
                              "anything else answers 404.")
    app.state.pool = pool
    app.state.policy = policy
    app.state.observer = observer or NullObserver()
    app.state.clock = clock
    app.add_exception_handler(AlertError, _alert_error)  # type: ignore[arg-type]
    app.add_exception_handler(HoldsCpr, _holds_cpr)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    for busy in (errors.LockNotAvailable, errors.TransactionRollback):  # as the CLI does
        app.add_exception_handler(busy, _busy)
    app.add_exception_handler(psycopg.DataError, _unstorable)  # type: ignore[arg-type]
    app.include_router(_router(), prefix="/api/v1")

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _alert_error(request: Request, exc: AlertError) -> JSONResponse:
    if isinstance(exc, AlertBusy):   # as when other rows it needs are held: try again
        return _busy(request, exc)
    code = (status.HTTP_404_NOT_FOUND if isinstance(exc, AlertNotFound | silences.SilenceNotFound)
            else status.HTTP_409_CONFLICT if isinstance(exc, InvalidTransition)
            else status.HTTP_422_UNPROCESSABLE_CONTENT)
    return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=code)


def _holds_cpr(_request: Request, exc: HoldsCpr) -> JSONResponse:
    """A note or comment with a CPR number in it: refused, and the number not repeated."""
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """A request that does not fit the API (a resolve without its code, say), saying where
    and why, but not what was sent: FastAPI's own answer repeats the input, and a note in it
    may hold what vagt never repeats (a CPR number)."""
    problems = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")}
                for e in exc.errors()]
    return JSONResponse({"detail": jsonable_encoder(problems)},
                        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _busy(_request: Request, exc: Exception) -> JSONResponse:
    """Rows the engine (or another operator) held longer than the lock timeout: nothing was
    changed, and the same request a moment later will do."""
    log.warning("event=api_busy error=%s", first_line(exc))
    return JSONResponse({"detail": "the alerts are being changed by another session; nothing "
                                   "was changed: try again in a moment"},
                        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": "1"})


def _unstorable(_request: Request, exc: psycopg.DataError) -> JSONResponse:
    """A value the database cannot hold (a NUL character in a text, say): the caller's."""
    return JSONResponse({"detail": f"the request holds a value that cannot be stored: "
                                   f"{first_line(exc)}"},
                        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _conn(request: Request) -> Iterator[psycopg.Connection]:
    pool: ConnectionPool = request.app.state.pool
    with pool.connection() as conn:
        yield conn


Conn = Annotated[psycopg.Connection, Depends(_conn)]


def _alert(row: AlertRow, who: Principal | None = None, action: str = "") -> schemas.Alert:
    """The response body; with `action`, the step is also logged (the audit trail has it too,
    with how the caller signed in: `via`)."""
    if who is not None:
        log.info("event=alert_%s alert_id=%d queue=%s status=%s operator=%s via=%s", action,
                 row.id, row.queue, row.status.value, who.username, who.via)
    return schemas.Alert.model_validate(row.to_json())


def _router() -> APIRouter:
    r = APIRouter()

    @r.get("/me", response_model=schemas.Me, responses=_ERRORS, tags=["session"])
    def me(who: Operator) -> schemas.Me:
        """The calling account: its role, municipality scope and queues."""
        return schemas.Me(username=who.username, role=who.role.label,
                          municipality=who.municipality, queues=list(who.queues), via=who.via)

    @r.post("/sessions", response_model=schemas.Session, status_code=201, responses=_ERRORS,
            tags=["session"])
    def open_session(request: Request, who: Operator, conn: Conn) -> schemas.Session:
        """Trade a password for a bearer token valid for 12 hours (an operator console does
        this once, not a password check per request). Tokens cannot be traded for tokens."""
        if who.via != "password":
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                "a session is opened with the account's password")
        expires = _now(request) + SESSION_LENGTH
        try:
            with conn.transaction():
                _, token = accounts.open_session(conn, who, expires_at=expires)
        except accounts.PasswordChanged as e:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(e)) from None
        return schemas.Session(token=token, expires_at=expires)

    @r.get("/queues", response_model=list[schemas.QueueCounts], responses=_ERRORS,
           tags=["queues"])
    def queues(request: Request, who: Operator, conn: Conn) -> list[schemas.QueueCounts]:
        """Every queue with its alerts by status, and the open ones by priority."""
        policy: AlertPolicy = request.app.state.policy
        rows = conn.execute(
            "SELECT queue, status, priority, count(*), min(queued_at) FILTER "
            "(WHERE status = 'open') FROM alerts WHERE status <> 'resolved' "
            "AND (%s::text IS NULL OR municipality = %s) GROUP BY 1, 2, 3",
            (who.municipality, who.municipality)).fetchall()
        names = list(dict.fromkeys([*queues_of(policy.root),
                                    *([policy.escalation_queue] if policy.escalation_queue
                                      else []), *sorted({str(q) for q, *_ in rows})]))
        out = {q: schemas.QueueCounts(queue=q, open=0, claimed=0, acknowledged=0,
                                      suppressed=0, open_by_priority={}, oldest_open_at=None)
               for q in names}
        for queue, st, priority, n, oldest in rows:
            c = out[str(queue)]
            setattr(c, str(st), getattr(c, str(st)) + int(n))
            if st == "open":
                c.open_by_priority[str(priority)] = int(n)
                if oldest and (c.oldest_open_at is None or oldest < c.oldest_open_at):
                    c.oldest_open_at = oldest
        return list(out.values())

    @r.get("/alerts", response_model=list[schemas.Alert], responses=_ERRORS, tags=["alerts"])
    def list_alerts(who: Operator, conn: Conn,
                    status_: Annotated[list[str] | None, Query(alias="status")] = None,
                    queue: str | None = None,
                    limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> list[schemas.Alert]:
        """Alerts most urgent first; filter by status (repeatable) and queue."""
        rows = actions.list_alerts(conn, status=status_, queue=queue, limit=limit,
                                   municipality=who.municipality)
        return [_alert(a) for a in rows]

    @r.post("/alerts/next", response_model=schemas.Alert, responses={
        **_ERRORS, 204: {"description": "nothing to take"}}, tags=["alerts"])
    def next_alert(request: Request, who: Operator, conn: Conn,
                   body: schemas.NextRequest | None = None) -> Any:
        """Claim the most urgent open alert of the operator's queues for the caller."""
        queues = (body.queues if body and body.queues else list(who.queues)) or None
        row = actions.next_alert(conn, who.username, queues, municipality=who.municipality,
                                 via=who.via)
        if row is None:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        _observe_claim(request, row)
        return _alert(row, who, "next")

    @r.get("/alerts/{alert_id}", response_model=schemas.AlertWithHistory,
           responses=_ALERT_ERRORS, tags=["alerts"])
    def get_alert(alert_id: RowId, who: Operator, conn: Conn) -> schemas.AlertWithHistory:
        """One alert with its audit trail: who did what, when, from which status to which."""
        row = actions.get_alert(conn, alert_id, who.municipality)
        history = [schemas.AuditEntry.model_validate(e.to_json())
                   for e in actions.audit_trail(conn, alert_id)]
        return schemas.AlertWithHistory.model_validate({**row.to_json(), "history": history})

    @r.post("/alerts/{alert_id}/claim", response_model=schemas.Alert, responses=_ALERT_ERRORS,
            tags=["alerts"])
    def claim(request: Request, alert_id: RowId, who: Operator, conn: Conn) -> schemas.Alert:
        """Take an open alert; then no one else can act on it."""
        row = actions.claim(conn, alert_id, who.username, municipality=who.municipality,
                            via=who.via)
        _observe_claim(request, row)
        return _alert(row, who, "claim")

    @r.post("/alerts/{alert_id}/acknowledge", response_model=schemas.Alert,
            responses=_ALERT_ERRORS, tags=["alerts"])
    def acknowledge(alert_id: RowId, who: Operator, conn: Conn,
                    body: schemas.Acknowledge | None = None) -> schemas.Alert:
        """Acknowledge an alert the caller holds."""
        return _alert(actions.acknowledge(conn, alert_id, who.username,
                                          body.note if body else None,
                                          municipality=who.municipality, via=who.via),
                      who, "acknowledge")

    @r.post("/alerts/{alert_id}/resolve", response_model=schemas.Alert,
            responses=_ALERT_ERRORS, tags=["alerts"])
    def resolve(request: Request, alert_id: RowId, body: schemas.Resolve, who: Operator,
                conn: Conn) -> schemas.Alert:
        """Resolve an open alert or one the caller holds, with a resolution code and a note."""
        row = actions.resolve(conn, alert_id, who.username, body.note, code=body.code,
                              municipality=who.municipality, policy=request.app.state.policy,
                              via=who.via)
        if row.resolved_at:
            observer: AlertObserver = request.app.state.observer
            observer.resolved(row.queue, (row.resolved_at - row.created_at).total_seconds())
        return _alert(row, who, "resolve")

    @r.post("/alerts/{alert_id}/release", response_model=schemas.Alert,
            responses=_ALERT_ERRORS, tags=["alerts"])
    def release(alert_id: RowId, who: Operator, conn: Conn,
                body: schemas.Acknowledge | None = None) -> schemas.Alert:
        """Give a held alert back to its queue: its holder, or a supervisor for anyone's."""
        return _alert(actions.release(conn, alert_id, who.username, body.note if body else None,
                                      supervisor=who.role >= Role.SUPERVISOR,
                                      municipality=who.municipality, via=who.via),
                      who, "release")

    @r.post("/alerts/{alert_id}/notes", response_model=schemas.Alert, responses=_ALERT_ERRORS,
            tags=["alerts"])
    def note(alert_id: RowId, body: schemas.Note, who: Operator, conn: Conn) -> schemas.Alert:
        """Write a note on an alert; its status does not change."""
        return _alert(actions.add_note(conn, alert_id, who.username, body.note,
                                       municipality=who.municipality, via=who.via),
                      who, "note")

    @r.get("/silences", response_model=list[schemas.Silence], responses=_ERRORS,
           tags=["silences"])
    def list_silences(request: Request, who: Operator, conn: Conn,
                      include_expired: bool = False) -> list[schemas.Silence]:
        """Silences and maintenance windows that are in force or still to come."""
        now = _now(request)
        policy: AlertPolicy = request.app.state.policy
        return [schemas.Silence.model_validate(
                    {**s.to_json(now), "warnings": silences.warnings(s, policy=policy)})
                for s in silences.list_silences(conn, include_expired=include_expired,
                                                municipality=who.municipality, now=now)]

    @r.post("/silences", response_model=schemas.Silence, status_code=201,
            responses={**_ERRORS, 422: {"model": schemas.Problem}}, tags=["silences"])
    def create_silence(request: Request, body: schemas.NewSilence, who: Operator,
                       conn: Conn) -> schemas.Silence:
        """Silence the alerts matching every matcher from start to end (supervisors).

        A municipal supervisor's silence is limited to their municipality. One that could
        hold back a critical alert (a personal alarm) must name its devices
        (`device_id="..."`, or `device_id=~"A|B"` for a few); none may last longer than the
        policy's `max_silence` (3 days unless set); a refusal answers 422 saying why, and is
        audited (`silence.refused`), as is an operator's attempt (403)."""
        now = _now(request)
        if refusal := accounts.role_refusal(who, Role.SUPERVISOR):
            silences.refuse_author(conn, who.username, refusal, now=now, via=who.via,
                                   asked=silences.asked_to_create(
                                       body.matchers, body.starts_at or now, body.ends_at,
                                       body.comment))
            raise HTTPException(status.HTTP_403_FORBIDDEN, refusal)
        try:
            matchers = [parse_matcher(m) for m in body.matchers]
        except MatcherError as e:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e)) from None
        s = silences.create_silence(conn, matchers, starts_at=body.starts_at,
                                    ends_at=body.ends_at, author=who.username,
                                    comment=body.comment, municipality=who.municipality,
                                    now=now, policy=request.app.state.policy, via=who.via)
        return schemas.Silence.model_validate(s.to_json(now))

    @r.post("/silences/{silence_id}/expire", response_model=schemas.Silence,
            responses={**_ERRORS, 404: {"model": schemas.Problem}}, tags=["silences"])
    def expire_silence(request: Request, silence_id: RowId, who: Operator,
                       conn: Conn) -> schemas.Silence:
        """End a silence now (supervisors); the alerts it held come back. A refusal (an
        operator's: 403; no such silence: 404; one already ended: 422) is audited
        (`silence.refused`)."""
        now = _now(request)
        if refusal := accounts.role_refusal(who, Role.SUPERVISOR):
            silences.refuse_author(conn, who.username, refusal, now=now, via=who.via,
                                   asked={"asked": "expire", "silence_id": silence_id},
                                   subject=f"silence {silence_id}")
            raise HTTPException(status.HTTP_403_FORBIDDEN, refusal)
        s = silences.expire_silence(conn, silence_id, by=who.username,
                                    municipality=who.municipality, now=now,
                                    policy=request.app.state.policy, via=who.via)
        return schemas.Silence.model_validate(s.to_json(now))

    @r.get("/devices", response_model=list[schemas.Device], responses=_ERRORS,
           tags=["devices"])
    def list_devices(who: Operator, conn: Conn, status_: Annotated[
            str | None, Query(alias="status")] = None,
            limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> list[schemas.Device]:
        """Devices of the registry with their fleet state (read only)."""
        return [schemas.Device.model_validate(d)
                for d in _devices(conn, who.municipality, None, status_, limit)]

    @r.get("/devices/{device_id}", response_model=schemas.Device,
           responses={**_ERRORS, 404: {"model": schemas.Problem}}, tags=["devices"])
    def get_device(device_id: str, who: Operator, conn: Conn) -> schemas.Device:
        found = _devices(conn, who.municipality, device_id, None, 1)
        if not found:
            # as asked, which may be anything: a CPR number is not repeated
            raise HTTPException(status.HTTP_404_NOT_FOUND,
                                f"there is no device {mask_cpr(device_id[:70])[0]}")
        return schemas.Device.model_validate(found[0])

    return r


def _observe_claim(request: Request, row: AlertRow) -> None:
    if row.claimed_at and row.queued_at:
        observer: AlertObserver = request.app.state.observer
        observer.claimed(row.queue, (row.claimed_at - row.queued_at).total_seconds())


def _now(request: Request) -> datetime:
    clock: Callable[[], float] = request.app.state.clock
    return datetime.fromtimestamp(clock(), UTC)


def _devices(conn: psycopg.Connection, municipality: str | None, device_id: str | None,
             status_: str | None, limit: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT device_id, vendor, model, type, municipality, status, last_seen, battery, "
            "signal, firmware FROM devices WHERE (%(m)s::text IS NULL OR municipality = %(m)s) "
            "AND (%(d)s::text IS NULL OR device_id = %(d)s) "
            "AND (%(s)s::text IS NULL OR status = %(s)s) ORDER BY device_id LIMIT %(n)s",
            {"m": municipality, "d": device_id, "s": status_, "n": limit}).fetchall()
