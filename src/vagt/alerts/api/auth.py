"""Who is calling, and may they: HTTP Basic with an operator's password, or a Bearer API token.

No credentials, or wrong ones: 401. A role too low for the endpoint: 403. An alert, silence
or device outside the caller's municipality: 404, as if it did not exist, so a municipal
user cannot learn what other municipalities have.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import (
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)
from psycopg_pool import ConnectionPool

from vagt.alerts.accounts import Principal, Role, authenticate_password, authenticate_token

basic_scheme = HTTPBasic(auto_error=False, realm="vagt",
                         description="an operator account's name and password")
bearer_scheme = HTTPBearer(auto_error=False,
                           description="an API token from `vagt tokens create`")

_CHALLENGE = {"WWW-Authenticate": 'Basic realm="vagt", Bearer'}


def _pool(request: Request) -> ConnectionPool:
    pool: ConnectionPool = request.app.state.pool
    return pool


def principal(request: Request,
              basic: Annotated[HTTPBasicCredentials | None, Depends(basic_scheme)],
              bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
              ) -> Principal:
    who = None
    with _pool(request).connection() as conn:
        if bearer is not None:
            who = authenticate_token(conn, bearer.credentials)
        elif basic is not None:
            who = authenticate_password(conn, basic.username, basic.password)
    if who is None:
        detail = ("credentials required: HTTP Basic (operator name and password) or a "
                  "Bearer API token" if basic is None and bearer is None
                  else "the credentials are not valid (or the account is disabled)")
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers=_CHALLENGE)
    return who


def require(role: Role) -> Callable[[Principal], Principal]:
    """A dependency that lets callers of at least `role` through."""

    def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if who.role < role:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"this needs the role {role.label} or higher; "
                                f"{who.username} is {who.role.label}")
        return who

    return check
