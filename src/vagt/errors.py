"""Errors as vagt's logs, dead letters and messages show them."""

from __future__ import annotations

import json


def first_line(e: BaseException) -> str:
    """The first line of what the error says, or its type's name when it says nothing
    (psycopg's errors run on with the server's DETAIL and HINT lines)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def log_value(text: str) -> str:
    """A value a device or a broker chose, as one field of a key=value log line: JSON-quoted,
    so that spaces and '=' in it make no fields of their own (the stdlib's: it writes any
    string, a lone surrogate too)."""
    return json.dumps(text, ensure_ascii=False)
