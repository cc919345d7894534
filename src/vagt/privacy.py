"""What a civil registration (CPR) number looks like, for every package: vagt stores none.

Each package refuses one with an error of its own (`HoldsCpr` for people's free text) and
never repeats the value: the message itself could end up in a log or a response.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

# A CPR number as people write it: DDMMYY (a day 01-31, a month 01-12), a separator or none,
# four digits; "010190-1234", "0101901234", "010190 – 1234", "01.01.90-1234", "01 01 90 1234".
# The separators: hyphens and dashes (a word processor turns '-' into '–'), '.', '_', ':',
# '/', and spaces around them. The date's own separators, if any, are the same twice.
_CPR_DASHES = "\\-\u2010\u2011\u2012\u2013\u2014\u2212"
_CPR_SEPARATORS = f"[{_CPR_DASHES}._:/]"
_CPR_SPACE = "[ \u00a0]"
_CPR_DAY = "(?:0[1-9]|[12][0-9]|3[01])"
_CPR_MONTH = "(?:0[1-9]|1[0-2])"
# A word of its own: no letter or digit right before or after, so "cit-0101701234" hides a
# CPR number as well as "0101701234" does, but a longer run of digits (an IMEI, a serial
# number, a MAC address written without separators) or ten digits inside a word of letters
# and digits (a random hex reference such as "cit-1234567890ab") is not one. Glued to "cpr"
# or "nr" ("cpr0101901234", "personnr0101901234") it is one all the same. Nor is one that
# follows a number and a dot: the end of an IPv4 address and its port ("10.10.10.10:8883").
# (Migration 0017's CHECK on citizen references holds to the same.)
_CPR_BEFORE = "(?:(?<![^\\W_])(?<![0-9][.])|(?<=cpr)|(?<=nr))"
_CPR_AFTER = "(?![^\\W_])"
# A date written with separators may have its century ("01.01.1990-1234"); one without may
# have a space before the year ("0101 90 1234"), as the number is read aloud. (The CHECK of
# migration 0017 knows neither: the database refuses less than vagt here, never more.)
_CPR_INSIDE = re.compile(
    f"{_CPR_BEFORE}{_CPR_DAY}(?P<dsep>{_CPR_SEPARATORS}|{_CPR_SPACE})?{_CPR_MONTH}"
    f"(?(dsep)(?P=dsep)(?:19|20)?|{_CPR_SPACE}?)[0-9]{{2}}"
    f"(?P<ssep>{_CPR_SPACE}?(?:{_CPR_SEPARATORS}{_CPR_SPACE}?)?)"
    f"(?P<serial>[0-9]{{4}}){_CPR_AFTER}", re.IGNORECASE)
# A date written with its separators, a space and four digits that are a time of day
# ("besøg 12.03.24 0930", "ny adapter 23.11.20 1030") is a date and a time in a note,
# not a CPR number, whose four digits follow a dash or nothing; unless the text announces
# a CPR number right before it ("cpr-nr. 01.01.90 1234").
_TIME = re.compile(r"(?:[01][0-9]|2[0-3])[0-5][0-9]")
_ANNOUNCED = re.compile(r"(?:cpr|personn(?:r|ummer))[\W_]*(?:nr|nummer)?[\W_]{0,3}\Z",
                        re.IGNORECASE)
# Nine digits: a CPR number of a day 01-09 that a spreadsheet read as a number, dropping its
# leading zero. Only in a column named for CPR numbers: elsewhere nine digits are too common.
_CPR_LOST_ZERO = re.compile(f"{_CPR_BEFORE}[1-9]{_CPR_MONTH}[0-9]{{6}}{_CPR_AFTER}",
                            re.IGNORECASE)


# What `vagt privacy scrub` writes where a CPR number was: no digit, so never one itself.
CPR_MASK = "[cpr removed]"


class HoldsCpr(ValueError):
    """A text a person wrote (a note, a comment, a reason, a name) holds something shaped
    like a CPR number; nothing was stored."""


def looks_like_cpr(value: str) -> bool:
    """The whole value is shaped like a CPR number (DDMMYY-XXXX or 10 digits)."""
    value = value.strip()
    return any(m.span() == (0, len(value)) for m in _cpr_shapes(value))


def contains_cpr(value: str, *, cpr_column: bool = False) -> bool:
    """Somewhere in the value is something shaped like a CPR number. In a column named for
    CPR numbers (`cpr_column`), nine digits are one too: a spreadsheet dropped the zero.
    Runs of white space (a line break, a tab, two spaces) count as one space."""
    value = _flattened(value)[0]
    return next(_cpr_shapes(value), None) is not None or bool(
        cpr_column and _CPR_LOST_ZERO.search(value))


def mask_cpr(value: str, mask: str = CPR_MASK, *, cpr_column: bool = False
             ) -> tuple[str, int]:
    """`value` with each CPR-shaped run that `contains_cpr` finds replaced by `mask` (with
    the same `cpr_column`), and how many were replaced; the rest of the text is kept as it
    was, white space included."""
    masked = 0
    while True:
        # Again until none is left: a run that followed a masked one after a dot (the end of
        # an IPv4 address, it seemed) is one of its own once the number before it is gone.
        flat, where = _flattened(value)
        runs = list(_cpr_shapes(flat))
        if cpr_column and not runs:     # the nine digits once the ten are masked
            runs = list(_CPR_LOST_ZERO.finditer(flat))
        spans = [(where[m.start()], where[m.end() - 1] + 1) for m in runs]
        if not spans:
            return value, masked
        for start, end in reversed(spans):
            value = value[:start] + mask + value[end:]
        masked += len(spans)


def _flattened(value: str) -> tuple[str, Sequence[int]]:
    """`value` with each run of white space one space and none at the ends, as people read
    it, and where each of its characters is in `value`. Escapes are read as what they write
    (`\\n` a line break, `\\u2013` a dash, `\\xa0` a no-break space, `\\/` a slash): a
    payload kept as its JSON text, and a device's string shown by `repr`, hold them."""
    if value.isprintable() and "  " not in value and "\\" not in value:
        return value, range(len(value))
    flat: list[str] = []
    where: list[int] = []
    space = -1          # where the run of white space before the next character began
    for ch, at in _unescaped(value):
        if ch.isspace():
            if flat and space < 0:
                space = at
            continue
        if space >= 0:
            flat.append(" ")
            where.append(space)
            space = -1
        flat.append(ch)
        where.append(at)
    return "".join(flat), where


_ESCAPE = re.compile(r"\\(?:[ntrfb/\\]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4})")
_ESCAPED = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "b": "\b", "/": "/", "\\": "\\"}


def _unescaped(value: str) -> Iterator[tuple[str, int]]:
    """Each character `value` writes, and where it begins in `value`."""
    i = 0
    for m in _ESCAPE.finditer(value):
        for k in range(i, m.start()):
            yield value[k], k
        text = m.group()
        yield _ESCAPED.get(text[1]) or chr(int(text[2:], 16)), m.start()
        i = m.end()
    for k in range(i, len(value)):
        yield value[k], k


def _cpr_shapes(value: str) -> Iterator[re.Match[str]]:
    """The CPR-shaped runs of `value`, but a date and a time of day (see `_TIME`)."""
    for m in _CPR_INSIDE.finditer(value):
        if not (m["dsep"] and m["dsep"].strip() and m["ssep"] and not m["ssep"].strip()
                and _TIME.fullmatch(m["serial"])
                and not _ANNOUNCED.search(value, max(0, m.start() - 20), m.start())):
            yield m


def without_cpr(text: str, what: str) -> str:
    """`text` as it is; HoldsCpr naming `what` (never the text) when it holds a CPR number."""
    if contains_cpr(text):
        raise HoldsCpr(f"the {what} holds something shaped like a civil registration (CPR) "
                       "number (DDMMYY-XXXX or 10 digits); vagt never stores CPR numbers: "
                       "leave it out (the alert names the citizen by a pseudonymous "
                       "reference already); nothing was changed")
    return text
