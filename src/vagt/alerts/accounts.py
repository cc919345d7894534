"""Operator accounts and API tokens for the REST API.

Passwords are stored as scrypt hashes (RFC 7914, n=2^14, r=8, p=1, a 16-byte salt): slow to
guess, from the standard library. API tokens are 256 random bits, shown once; only their
SHA-256 is stored (a random token needs no slow hash). Every change is audited in
`audit_log`. Roles: operator < supervisor < admin.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum

import orjson
import psycopg

from vagt.alerts.actions import AlertError, checked_operator
from vagt.privacy import without_cpr
from vagt.text import unprintable_problem

TOKEN_PREFIX = "vagt_"
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 12
TOKEN_USE_RESOLUTION = timedelta(minutes=1)   # how exactly api_tokens.last_used_at is kept
SESSION_TOKEN = "session"   # the name of the tokens POST /sessions makes, and only of those


class Role(IntEnum):
    OPERATOR = 1
    SUPERVISOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise AccountError(f"unknown role '{name}'; one of operator, supervisor, "
                               "admin") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class AccountError(AlertError):
    """An account or token cannot be created or changed; the message says why."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: an operator account, signed in with its password or one of its tokens."""

    username: str
    role: Role
    municipality: str | None
    queues: tuple[str, ...]
    via: str     # "password" or "token:NAME"
    # signed in with its password: the stored hash it was checked against (a session opened
    # from it is refused if the password changed meanwhile)
    password_hash: str | None = field(default=None, repr=False, compare=False)


def _password_bytes(password: str) -> bytes:
    """UTF-8 of the password in NFC: `å` typed as one character or as a and a ring is one
    password (RFC 7613's rule for passwords sent as UTF-8)."""
    return unicodedata.normalize("NFC", password).encode()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(_password_bytes(password), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R,
                            p=_SCRYPT_P, dklen=32)
    return "$".join(["scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def verify_password(stored: str, password: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(_password_bytes(password), salt=base64.b64decode(salt), n=int(n),
                             r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def add_user(conn: psycopg.Connection, username: str, *, role: str, password: str | None,
             municipality: str | None = None, queues: Sequence[str] = (),
             actor: str, via: str | None = None) -> None:
    username = checked_operator(username)
    if municipality is not None and not municipality.strip():
        # `--municipality "$MUNI"` with the variable unset: an account of every
        # municipality, where one was asked for
        raise AccountError("the municipality is empty; name one, or give none for an account "
                           "of the whole centre")
    if municipality:
        _checked_label(municipality, "municipality")
    for queue in queues:
        _checked_label(queue, "queue")
    level = Role.parse(role)
    if password is not None and len(password) < MIN_PASSWORD:
        raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")
    with conn.transaction():
        try:
            conn.execute("INSERT INTO operators (username, password_hash, role, municipality, "
                         "queues) VALUES (%s, %s, %s, %s, %s)",
                         (username, hash_password(password) if password else None, level.label,
                          municipality or None, list(queues)))
        except psycopg.errors.UniqueViolation:
            raise AccountError(f"there is already a user '{username}'") from None
        _audit(conn, actor, "user.add", f"user {username}",
               {"role": level.label, "municipality": municipality, "queues": list(queues)},
               via)


def _checked_label(value: str, what: str) -> None:
    """A municipality or queue an account is limited to: what an admin typed, kept in the
    account and in its audit row (`user.add`), and shown by `vagt users list`; refused when
    it holds a CPR number, or a character that is not printable (it would match no alert's
    label, and look like one that does)."""
    without_cpr(value, what)
    if problem := unprintable_problem(value, f"the {what}"):
        raise AccountError(problem)


def set_password(conn: psycopg.Connection, username: str, password: str, *,
                 actor: str, via: str | None = None) -> list[int]:
    """Set the password and end the account's sessions (a stolen one must not outlive the
    reset); returns the ids of the session tokens revoked. API tokens stay: the password
    cannot make one (`vagt tokens create` does, and `vagt tokens revoke` ends it), and they
    are the call centre's systems' way in, which a reset must not cut off unasked."""
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")
    with conn.transaction():
        row = conn.execute("UPDATE operators SET password_hash = %s WHERE username = %s "
                           "RETURNING 1", (hash_password(password), username)).fetchone()
        if row is None:
            raise AccountError(f"there is no user '{username}'")
        ended = sorted(int(i) for (i,) in conn.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE username = %s AND name = %s "
            "AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()) "
            "RETURNING id", (username, SESSION_TOKEN)))
        _audit(conn, actor, "user.password", f"user {username}", {"sessions_revoked": ended},
               via)
    return ended


def disable_user(conn: psycopg.Connection, username: str, *, actor: str,
                 via: str | None = None) -> None:
    with conn.transaction():
        row = conn.execute("UPDATE operators SET disabled_at = now() WHERE username = %s "
                           "AND disabled_at IS NULL RETURNING 1", (username,)).fetchone()
        if row is None:
            raise AccountError(f"there is no enabled user '{username}'")
        _audit(conn, actor, "user.disable", f"user {username}", {}, via)


def enabled_account(conn: psycopg.Connection, username: str, *, via: str,
                    role: Role = Role.OPERATOR) -> Principal:
    """The enabled account a command acts as, of at least `role`: what the command line
    records in the audit trail must be someone the API would let do the same."""
    username = checked_operator(username)
    who = _principal(conn, "o.username = %s", (username,), via)
    if who is None:
        raise AccountError(f"there is no enabled account '{username}' (`vagt users list` "
                           "shows them; `vagt users add NAME --role operator --no-password` "
                           "makes one for the command line)")
    refusal = role_refusal(who, role)
    if refusal:
        raise AccountError(refusal)
    return who


def role_refusal(who: Principal, role: Role) -> str | None:
    """Why `who` may not take a step that needs `role`; None when they may."""
    if who.role >= role:
        return None
    return f"this needs the role {role.label} or higher; {who.username} is {who.role.label}"


def list_users(conn: psycopg.Connection) -> list[tuple[str, str, str | None, list[str], bool]]:
    rows = conn.execute("SELECT username, role, municipality, queues, disabled_at IS NOT NULL "
                        "FROM operators ORDER BY username").fetchall()
    return [(str(u), str(r), m, list(q), bool(d)) for u, r, m, q, d in rows]


def create_token(conn: psycopg.Connection, username: str, name: str, *, actor: str,
                 expires_at: datetime | None = None,
                 via: str | None = None) -> tuple[int, str]:
    """A new token for `username`; returns (id, token). The token is not stored: show it once."""
    if name == SESSION_TOKEN:
        raise AccountError(f"the name '{SESSION_TOKEN}' is kept for the API's sessions (they "
                           "end when the password changes); name the token for what it is for")
    return _create_token(conn, username, name, actor=actor, expires_at=expires_at, via=via)


class PasswordChanged(AccountError):
    """The password a session was to be opened with changed after it was checked."""


def open_session(conn: psycopg.Connection, who: Principal, *, expires_at: datetime
                 ) -> tuple[int, str]:
    """A session token (the API's POST /sessions) for `who`, signed in with its password:
    refused (PasswordChanged) if the password changed since it was checked, which ended the
    account's sessions (`set_password`): one opened after would outlive the change."""
    assert who.password_hash is not None, "a session is opened after a password login"
    return _create_token(conn, who.username, SESSION_TOKEN, actor=who.username,
                         expires_at=expires_at, via=who.via, password_hash=who.password_hash)


def _create_token(conn: psycopg.Connection, username: str, name: str, *, actor: str,
                  expires_at: datetime | None, via: str | None,
                  password_hash: str | None = None) -> tuple[int, str]:
    without_cpr(name, "token's name")
    if problem := unprintable_problem(name, "the token's name"):
        raise AccountError(problem)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with conn.transaction():
        row = conn.execute("SELECT password_hash FROM operators WHERE username = %s "
                           "AND disabled_at IS NULL FOR SHARE", (username,)).fetchone()
        if row is None:
            raise AccountError(f"there is no enabled user '{username}' to give a token to")
        if password_hash is not None and row[0] != password_hash:
            raise PasswordChanged("the password changed while the session was being opened: "
                                  "sign in with the new one")
        row = conn.execute("INSERT INTO api_tokens (name, username, token_sha256, expires_at) "
                           "VALUES (%s, %s, %s, %s) RETURNING id",
                           (name, username, _token_digest(token), expires_at)).fetchone()
        assert row is not None
        _audit(conn, actor, "token.create", f"token {row[0]}",
               {"name": name, "user": username,
                "expires_at": expires_at.isoformat() if expires_at else None}, via)
    return int(row[0]), token


def revoke_token(conn: psycopg.Connection, token_id: int, *, actor: str,
                 via: str | None = None) -> None:
    with conn.transaction():
        row = conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE id = %s "
                           "AND revoked_at IS NULL RETURNING name", (token_id,)).fetchone()
        if row is None:
            raise AccountError(f"there is no token {token_id} that is not already revoked")
        _audit(conn, actor, "token.revoke", f"token {token_id}", {"name": row[0]}, via)


def list_tokens(conn: psycopg.Connection) -> list[tuple[int, str, str, datetime,
                                                        datetime | None, datetime | None]]:
    rows = conn.execute("SELECT id, name, username, created_at, expires_at, revoked_at "
                        "FROM api_tokens ORDER BY id").fetchall()
    return [(int(i), str(n), str(u), c, e, r) for i, n, u, c, e, r in rows]


_PRINCIPAL = ("SELECT o.username, o.role, o.municipality, o.queues FROM operators o "
              "WHERE o.disabled_at IS NULL AND ")


@dataclass(frozen=True)
class PasswordLogin:
    """What the database holds of the name a password login gives: read with a connection,
    checked (`check_password`, scrypt's tenth of a second) without one held meanwhile."""

    account: Principal | None     # None: no enabled account of that name
    password_hash: str | None = field(repr=False, default=None)


def password_login(conn: psycopg.Connection, username: str) -> PasswordLogin:
    if "\x00" in username:   # no account has one, and the database cannot even compare it
        username = ""
    row = conn.execute("SELECT username, role, municipality, queues, password_hash "
                       "FROM operators WHERE username = %s AND disabled_at IS NULL",
                       (username,)).fetchone()
    if row is None:
        return PasswordLogin(None)
    return PasswordLogin(Principal(str(row[0]), Role.parse(str(row[1])), row[2], tuple(row[3]),
                                   "password", row[4]), row[4])


def check_password(login: PasswordLogin, password: str) -> Principal | None:
    """The account, if `password` is its password."""
    # hash even for an unknown user, so the answer's timing does not tell who exists
    ok = verify_password(login.password_hash or _dummy_hash(), password)
    return login.account if ok and login.password_hash else None


def authenticate_password(conn: psycopg.Connection, username: str,
                          password: str) -> Principal | None:
    return check_password(password_login(conn, username), password)


def authenticate_token(conn: psycopg.Connection, token: str,
                       now: datetime | None = None) -> Principal | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    now = now or datetime.now(UTC)
    row = conn.execute("SELECT id, username, name, last_used_at FROM api_tokens "
                       "WHERE token_sha256 = %s AND revoked_at IS NULL "
                       "AND (expires_at IS NULL OR expires_at > %s)",
                       (_token_digest(token), now)).fetchone()
    if row is None:
        return None
    token_id, username, name, last_used = row
    # at most a write a minute per token: a system sending many requests at once with one
    # token would otherwise queue on that row's lock
    if last_used is None or now - last_used > TOKEN_USE_RESOLUTION:
        conn.execute("UPDATE api_tokens SET last_used_at = %s WHERE id = %s", (now, token_id))
    return _principal(conn, "o.username = %s", (username,), f"token:{name}")


def _principal(conn: psycopg.Connection, where: str, params: tuple[object, ...],
               via: str) -> Principal | None:
    row = conn.execute(_PRINCIPAL + where, params).fetchone()
    if row is None:
        return None
    return Principal(str(row[0]), Role.parse(str(row[1])), row[2], tuple(row[3]), via)


def _audit(conn: psycopg.Connection, actor: str, action: str, subject: str,
           details: dict[str, object], via: str | None) -> None:
    """`via`: how the actor came (`cli:USER`, the command's login; `password` for a session)."""
    details = {**details, **({"via": via} if via else {})}
    conn.execute("INSERT INTO audit_log (actor, action, subject, details) "
                 "VALUES (%s, %s, %s, %s::jsonb)",
                 (actor, action, subject, orjson.dumps(details).decode()))


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))
