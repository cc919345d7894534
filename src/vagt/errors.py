"""Errors as vagt's logs, dead letters and messages show them."""

from __future__ import annotations

from vagt.text import json_shown


def first_line(e: BaseException) -> str:
    """The first line of what the error says, or its type's name when it says nothing
    (psycopg's errors run on with the server's DETAIL and HINT lines)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def log_value(text: str) -> str:
    """A value a device or a broker chose, as one field of a key=value log line: JSON-quoted,
    so that spaces and '=' in it make no fields of their own, and what is not printable in
    it escaped (a right-to-left override in a topic, a C1 control such as U+009B, a
    terminal's escape, would otherwise reach whoever reads the log as it was sent)."""
    return json_shown(text)
