"""What a civil registration (CPR) number looks like, for every package: vagt stores none.

Each package refuses one with an error of its own (`HoldsCpr` for people's free text) and
never repeats the value: the message itself could end up in a log or a response.
"""

from __future__ import annotations

import re

# Anywhere in the value as a word of its own: "cit-0101701234" hides a CPR number as well as
# "0101701234" does. Ten digits run inside a word of letters and digits (a random hex
# reference such as "cit-1234567890ab") are not a CPR number written down by a person.
_CPR_INSIDE = re.compile(r"(?<![A-Za-z0-9])[0-9]{6}[- ]?[0-9]{4}(?![A-Za-z0-9])")
# A whole value (a serial number with ten digits in it stays allowed in other columns).
_CPR_WHOLE = re.compile(r"^[0-9]{6}[- ]?[0-9]{4}$")


class HoldsCpr(ValueError):
    """A text a person wrote (a note, a comment, a reason, a name) holds something shaped
    like a CPR number; nothing was stored."""


def looks_like_cpr(value: str) -> bool:
    """The whole value is shaped like a CPR number (DDMMYY-XXXX or 10 digits)."""
    return bool(_CPR_WHOLE.match(value.strip()))


def contains_cpr(value: str) -> bool:
    """Somewhere in the value is something shaped like a CPR number."""
    return bool(_CPR_INSIDE.search(value))


def without_cpr(text: str, what: str) -> str:
    """`text` as it is; HoldsCpr naming `what` (never the text) when it holds a CPR number."""
    if contains_cpr(text):
        raise HoldsCpr(f"the {what} holds something shaped like a civil registration (CPR) "
                       "number (DDMMYY-XXXX or 10 digits); vagt never stores CPR numbers: "
                       "leave it out (the alert names the citizen by a pseudonymous "
                       "reference already); nothing was changed")
    return text
