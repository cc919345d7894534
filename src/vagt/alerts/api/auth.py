"""Who is calling, and may they: HTTP Basic with an operator's password, or a Bearer API token.

No credentials, or wrong ones: 401. A role too low for the endpoint: 403. An alert, silence
or device outside the caller's municipality: 404, as if it did not exist, so a municipal
user cannot learn what other municipalities have.
"""

from __future__ import annotations

import base64
import binascii
import logging
import unicodedata
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import (
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)
from fastapi.security.utils import get_authorization_scheme_param
from psycopg_pool import ConnectionPool
from starlette.requests import HTTPConnection

from vagt.alerts.accounts import (
    PasswordLogin,
    Principal,
    Role,
    authenticate_token,
    check_password,
    password_login,
    role_refusal,
)
from vagt.alerts.actions import MAX_OPERATOR_LENGTH
from vagt.privacy import mask_cpr

log = logging.getLogger("vagt.api")

# RFC 7617: `charset` tells clients the name and password are read as UTF-8
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="vagt", charset="UTF-8", Bearer'}
_NOT_BASIC = "the HTTP Basic credentials are not base64 of UTF-8 'name:password'"


class Utf8Basic(HTTPBasic):
    """HTTP Basic with the name and password read as UTF-8 (RFC 7617), in Unicode's NFC as
    accounts store them. FastAPI's own reads ASCII only, so `søren`, or a password with æøå,
    could never sign in."""

    def make_authenticate_headers(self) -> dict[str, str]:
        return dict(_CHALLENGE)

    # HTTPBase types its result as a bearer's credentials; HTTPBasic ignores that too
    async def __call__(  # type: ignore[override]
            self, request: HTTPConnection) -> HTTPBasicCredentials | None:
        scheme, param = get_authorization_scheme_param(request.headers.get("Authorization"))
        if scheme.lower() != "basic":
            return None
        try:
            text = base64.b64decode(param, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, _NOT_BASIC,
                                headers=_CHALLENGE) from None
        username, colon, password = unicodedata.normalize("NFC", text).partition(":")
        if not colon:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, _NOT_BASIC, headers=_CHALLENGE)
        return HTTPBasicCredentials(username=username, password=password)


basic_scheme = Utf8Basic(auto_error=False, realm="vagt", scheme_name="HTTPBasic",
                         description="an operator account's name and password (UTF-8)")
bearer_scheme = HTTPBearer(auto_error=False,
                           description="an API token from `vagt tokens create`")


def _pool(request: Request) -> ConnectionPool:
    pool: ConnectionPool = request.app.state.pool
    return pool


def principal(request: Request,
              basic: Annotated[HTTPBasicCredentials | None, Depends(basic_scheme)],
              bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
              ) -> Principal:
    who = None
    login = None
    if bearer is not None:
        with _pool(request).connection() as conn:
            who = authenticate_token(conn, bearer.credentials)
    elif basic is not None:
        with _pool(request).connection() as conn:
            login = password_login(conn, basic.username)
        # scrypt without a connection held: the API's pool has a few, and password logins
        # (a wrong one each time, say) held them all from the operators' tokens
        who = check_password(login, basic.password)
    if who is None:
        if basic is None and bearer is None:
            detail = ("credentials required: HTTP Basic (operator name and password) or a "
                      "Bearer API token")
        else:
            detail = "the credentials are not valid (or the account is disabled)"
            _log_failed_login(request, login)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers=_CHALLENGE)
    return who


def _log_failed_login(request: Request, login: PasswordLogin | None) -> None:
    """A failed login, for ops (guessing shows as many): the account's name, never a
    password or token. A name that is no enabled account's is not repeated: it may be the
    password typed in the wrong field, or a CPR number."""
    client = request.client.host if request.client else "-"
    if login is None:
        log.warning("event=api_login_failed via=token client=%s", client)
    elif login.account is None:
        log.warning("event=api_login_failed via=password user=(unknown) client=%s", client)
    else:   # quoted; masked as every name is (one stored by an older release may hold one)
        log.warning("event=api_login_failed via=password user=%r client=%s",
                    mask_cpr(login.account.username[:MAX_OPERATOR_LENGTH])[0], client)


def require(role: Role) -> Callable[[Principal], Principal]:
    """A dependency that lets callers of at least `role` through."""

    def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        refusal = role_refusal(who, role)
        if refusal:
            raise HTTPException(status.HTTP_403_FORBIDDEN, refusal)
        return who

    return check
