"""Text from outside (a device, an import file, a person typing) as people read it: which
characters may be in it, how a refused one is named, and how a stored one is shown.

A character that is not printable (a control character, C0 or C1; a format character: the
bidirectional overrides and isolates, zero-width ones, the soft hyphen; a line or paragraph
separator; a space other than ' '; a private-use, surrogate or unassigned one) is invisible
or changes what the text around it reads as: "fw 1.2" shown reversed, a terminal escape.
"""

from __future__ import annotations

import json
import unicodedata

# The controls have no names in Unicode's data, only aliases; the ones people meet
_CONTROLS = {"\x00": "NULL", "\t": "CHARACTER TABULATION", "\n": "LINE FEED",
             "\r": "CARRIAGE RETURN", "\x1b": "ESCAPE", "\x7f": "DELETE", "\x85": "NEXT LINE",
             "\x9b": "CONTROL SEQUENCE INTRODUCER"}
# What a character of each category is, for one without a name
_CATEGORIES = {"Cc": "a control character", "Cf": "a format character",
               "Co": "a private-use character", "Cs": "a surrogate",
               "Cn": "an unassigned character", "Zl": "a line separator",
               "Zp": "a paragraph separator", "Zs": "a space"}


def char_name(c: str) -> str:
    """A character as a message names it: 'U+202E RIGHT-TO-LEFT OVERRIDE', a common control
    by its alias ('U+009B CONTROL SEQUENCE INTRODUCER'), one without a name by what it is:
    'U+0090, a control character'."""
    name = unicodedata.name(c, "") or _CONTROLS.get(c, "")
    code = f"U+{ord(c):04X}"
    if name:
        return f"{code} {name}"
    return f"{code}, {_CATEGORIES.get(unicodedata.category(c), 'a character without a name')}"


# Every space separator (Unicode's Zs) but ' ': the no-break space a word processor, a web
# page or a mail program puts in what a person copies, the narrow one of a formatted time
_SPACES = str.maketrans(dict.fromkeys(
    "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u202f\u205f\u3000", " "))


def plain_spaces(text: str) -> str:
    """`text` with each space that is not ' ' (a no-break, thin or ideographic space) as ' ':
    it reads the same, and is not refused as what is not printable."""
    return text.translate(_SPACES) if not text.isascii() else text


def unprintable(text: str, *, line_breaks: bool = False) -> tuple[int, str] | None:
    """The first character of `text` that is not printable, with its place (from 1), or
    None when there is none. Printable is what Python's `str.isprintable` says (Unicode
    categories C and Z are not, but for ' '). `line_breaks`: '\\n' and a tab may be in it
    (a note, a cell of a spreadsheet: what a person pastes)."""
    if text.isprintable():
        return None
    for k, c in enumerate(text, 1):
        if not c.isprintable() and not (line_breaks and c in "\n\t"):
            return k, c
    return None


def unprintable_problem(text: str, what: str, *, line_breaks: bool = False) -> str | None:
    """Why `text` cannot be kept, naming `what` (a field) and the character, or None:
    "status.firmware holds U+202E RIGHT-TO-LEFT OVERRIDE (its character 4), ..."."""
    found = unprintable(text, line_breaks=line_breaks)
    if found is None:
        return None
    k, c = found
    return (f"{what} holds {char_name(c)} (its character {k}), which is not printable: a "
            "control, format (bidirectional, zero-width) or separator character makes text "
            "read as something else where it is shown; remove it")


def shown(text: str) -> str:
    """`text` as a table or a terminal shows it: each character that is not printable
    escaped as Python writes it (\\u202e, \\x9b, \\n), the rest as it is. Older rows were
    stored before the checks refused such characters."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def json_shown(text: str) -> str:
    """`text` as a JSON string (quotes and all) with each character that is not printable
    escaped (\\u202e), the rest as it is: one field of a key=value log line that a terminal
    or a log viewer shows as it was sent, a lone surrogate included."""
    quoted = json.dumps(text, ensure_ascii=False)
    if quoted.isprintable():
        return quoted
    return "".join(c if c.isprintable() else _json_escape(c) for c in quoted)


def _json_escape(c: str) -> str:
    """JSON's escape of one character: \\uXXXX, two of them (a surrogate pair) above U+FFFF."""
    units = c.encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{int.from_bytes(units[i:i + 2], 'big'):04x}"
                   for i in range(0, len(units), 2))
