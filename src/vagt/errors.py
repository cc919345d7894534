"""Errors as vagt's logs, dead letters and messages show them."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of what the error says, or its type's name when it says nothing
    (psycopg's errors run on with the server's DETAIL and HINT lines)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
