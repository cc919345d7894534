"""What the `vagt` subcommands share: one line on stderr and exit 2 for a refusal, tables
and the times in them.

A handler is called as `handler(args, conninfo)`; `reports_errors(SomeError, ...)` turns the
refusals it names, and database trouble, into one clear line on stderr (exit code 2), while a
bug still raises with its traceback.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

import psycopg

from vagt.privacy import mask_cpr
from vagt.text import shown

EXIT_ERROR = 2

H = TypeVar("H", bound=Callable[..., int])


def row_id(text: str) -> int:
    """An id of a row (an alert, a silence, an outbox entry, a token) as an argument: a
    positive bigint, or argparse's usage error (a larger number is no row's, and failed
    where it was audited)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {shown(text[:40])!r}") from None
    if not 1 <= value <= 2**63 - 1:
        raise argparse.ArgumentTypeError(f"{text[:40]} is no row's id (1 to 2**63 - 1)")
    return value


def fail(message: str, *, one_line: bool = True) -> int:
    """Print `vagt: message` on stderr (folded to one line unless told) and return 2; what
    is not printable in it escaped (vagt.text), and a CPR number masked, as a refusal may
    quote what was refused: a name typed where an account's or a device's goes is
    repeated by "there is no ...", and none of those refusals can know what it was."""
    message = mask_cpr(message)[0]
    lines = [" ".join(message.split())] if one_line else message.split("\n")
    print("vagt: " + "\n".join(map(shown, lines)), file=sys.stderr)
    return EXIT_ERROR


def login_name() -> str | None:
    """The login the command runs under; None when neither the environment nor the password
    database names one."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None


def cli_login() -> str:
    """`cli:USER`, the login the command runs under, for the audit trail (`details.via`): the
    names given with --operator, --author or --actor are typed, this one is not."""
    return f"cli:{login_name() or '(unknown)'}"


def unreachable(url: str, error: Exception) -> int:
    """The database did not answer: say which (its password hidden) and why; exit code 2."""
    from vagt.app.config import redact_url

    return fail(f"cannot reach the database at {redact_url(url)}: {error}")


def reports_errors(*refusals: type[Exception],
                   multi_line: tuple[type[Exception], ...] = ()) -> Callable[[H], H]:
    """Refusals (and database trouble) go to stderr with exit code 2; bugs still raise.

    `multi_line` refusals keep their line breaks: one line per problem to fix.
    """

    def decorate(handler: H) -> H:
        @functools.wraps(handler)
        def wrapped(args: argparse.Namespace, *rest: object) -> int:
            try:
                result: int = handler(args, *rest)
                return result
            except multi_line as e:
                return fail(str(e), one_line=False)
            except refusals as e:
                return fail(str(e))
            except (psycopg.errors.LockNotAvailable, psycopg.errors.TransactionRollback) as e:
                # OperationalErrors too, but the database is there: another session was in
                # the way (a lock held too long, a deadlock); nothing was changed.
                return fail(f"the database could not do it now, nothing was changed: "
                            f"{e.diag.message_primary or e}; try again")
            except psycopg.errors.UndefinedTable:
                return fail("the database has no vagt schema yet: run `vagt db migrate`")
            except psycopg.OperationalError as e:
                return fail(f"cannot reach the database: {e}")

        return wrapped  # type: ignore[return-value]

    return decorate


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns as wide as their widest cell, two spaces apart. What is not
    printable in a cell is escaped (`\\u202e`, `\\n`; vagt.text): a firmware, a summary or a
    municipality stored before vagt refused such characters, or a receiver's error, must
    not make a row read as something else, or the terminal do as it says."""
    rows = [[shown(c) for c in row] for row in rows]
    widths = [max(len(c) for c in column) for column in zip(headers, *rows)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
             for line in [headers, *rows]]
    return "\n".join(lines)


def local_time(at: datetime | None, missing: str) -> str:
    """A time as the tables print it: to the minute, in this machine's zone, named."""
    return missing if at is None else f"{at.astimezone():%Y-%m-%d %H:%M %Z}"
