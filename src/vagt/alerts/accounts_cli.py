"""`vagt users ...` and `vagt tokens ...`: operator accounts and API tokens of the REST API.

Passwords are read from standard input or a prompt, never from the command line (where
`ps` and the shell's history would show them). A token is printed once and stored hashed.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import termios
from datetime import UTC, datetime

import psycopg

from vagt.alerts.accounts import (
    MIN_PASSWORD,
    SESSION_TOKEN,
    AccountError,
    add_user,
    create_token,
    disable_user,
    list_tokens,
    list_users,
    revoke_token,
    set_password,
)
from vagt.alerts.cli import _duration, _local_time, _reports_errors
from vagt.app.cli_support import cli_login, format_table, row_id


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    users = subparsers.add_parser("users", help="operator accounts of the API")
    u = users.add_subparsers(metavar="ACTION", required=True)
    add = u.add_parser("add", help="create an account (the password is asked for)")
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=["operator", "supervisor", "admin"])
    add.add_argument("--municipality", help="limit the account to this municipality's alerts")
    add.add_argument("--queue", action="append", default=[],
                     help="a queue `next` takes from; repeat for several (default: all)")
    pw = add.add_mutually_exclusive_group()
    pw.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of standard input")
    pw.add_argument("--no-password", action="store_true",
                    help="no password: the account signs in with API tokens only")
    add.set_defaults(handler=handle_user_add)
    passwd = u.add_parser("password", help="set an account's password")
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true")
    passwd.set_defaults(handler=handle_user_password)
    ls = u.add_parser("list", help="the accounts")
    ls.set_defaults(handler=handle_user_list)
    dis = u.add_parser("disable", help="disable an account (its tokens stop working too)")
    dis.add_argument("username")
    dis.set_defaults(handler=handle_user_disable)

    tokens = subparsers.add_parser("tokens", help="API tokens (for the call centre's system)")
    t = tokens.add_subparsers(metavar="ACTION", required=True)
    create = t.add_parser("create", help="a new token, printed once")
    create.add_argument("--user", required=True, help="the account the token acts as")
    create.add_argument("--name", required=True, help="what it is for, e.g. callcentre-crm")
    create.add_argument("--expires-in", type=_duration, default=None,
                        help="e.g. 90d (default: no expiry)")
    create.set_defaults(handler=handle_token_create)
    tl = t.add_parser("list", help="the tokens (never their values)")
    tl.set_defaults(handler=handle_token_list)
    rv = t.add_parser("revoke", help="revoke a token")
    rv.add_argument("id", type=row_id, help="the token's id (see `vagt tokens list`)")
    rv.set_defaults(handler=handle_token_revoke)


NO_TERMINAL = ("there is no terminal to ask for the password on; give it on standard input "
               "with --password-stdin")


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    # Asked from a script, a pipe or a service, getpass fails with termios.error or
    # EOFError, or reads the pipe after a warning: say what to do instead.
    if not sys.stdin.isatty():
        raise AccountError(NO_TERMINAL)
    try:
        first = getpass.getpass(f"password (at least {MIN_PASSWORD} characters): ")
        again = getpass.getpass("again: ")
    except (EOFError, termios.error):
        raise AccountError(NO_TERMINAL) from None
    if again != first:
        raise AccountError("the two passwords differ")
    return first


@_reports_errors
def handle_user_add(args: argparse.Namespace, conninfo: str) -> int:
    password = None if args.no_password else _password(args.password_stdin)
    with psycopg.connect(conninfo) as conn:
        add_user(conn, args.username, role=args.role, password=password,
                 municipality=args.municipality, queues=args.queue, actor=cli_login(),
                 via=cli_login())
    scope = f" in {args.municipality}" if args.municipality else ""
    print(f"user {args.username.strip()} added: {args.role}{scope}")
    return 0


@_reports_errors
def handle_user_password(args: argparse.Namespace, conninfo: str) -> int:
    password = _password(args.password_stdin)
    with psycopg.connect(conninfo) as conn:
        ended = set_password(conn, args.username, password, actor=cli_login(),
                             via=cli_login())
        tokens = [t for t in list_tokens(conn) if t[2] == args.username and t[1] != SESSION_TOKEN
                  and t[5] is None and (t[4] is None or t[4] > datetime.now(UTC))]
    print(f"password of {args.username} changed; {_count(len(ended), 'session')} ended")
    if tokens:
        print(f"{_count(len(tokens), 'API token')} of {args.username} still work "
              f"({', '.join(str(t[0]) for t in tokens)}): `vagt tokens revoke ID` ends one")
    return 0


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


@_reports_errors
def handle_user_list(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        rows = list_users(conn)
    if not rows:
        print("no users")
        return 0
    print(format_table(["USER", "ROLE", "MUNICIPALITY", "QUEUES", "STATE"],
                        [[u, r, m or "(all)", ",".join(q) or "(all)",
                          "disabled" if d else "enabled"] for u, r, m, q, d in rows]))
    return 0


@_reports_errors
def handle_user_disable(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        disable_user(conn, args.username, actor=cli_login(), via=cli_login())
    print(f"user {args.username} disabled")
    return 0


@_reports_errors
def handle_token_create(args: argparse.Namespace, conninfo: str) -> int:
    expires = datetime.now(UTC) + args.expires_in if args.expires_in else None
    with psycopg.connect(conninfo) as conn:
        token_id, token = create_token(conn, args.user, args.name, actor=cli_login(),
                                       expires_at=expires, via=cli_login())
    print(f"token {token_id} for {args.user} ({args.name}); it is shown only now:",
          file=sys.stderr)
    print(token)
    return 0


@_reports_errors
def handle_token_list(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        rows = list_tokens(conn)
    if not rows:
        print("no tokens")
        return 0
    print(format_table(["ID", "NAME", "USER", "CREATED", "EXPIRES", "STATE"],
                        [[str(i), n, u, _local_time(c), _local_time(e) if e else "never",
                          "revoked" if r else "active"] for i, n, u, c, e, r in rows]))
    return 0


@_reports_errors
def handle_token_revoke(args: argparse.Namespace, conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        revoke_token(conn, args.id, actor=cli_login(), via=cli_login())
    print(f"token {args.id} revoked")
    return 0



