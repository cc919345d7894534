"""The regular expressions a silence may hold: none whose matches cannot be judged (lookarounds,
back-references), and none that can backtrack for long on a label value, since they run on
the alarm's path (`suppression.reconcile`). The alert policy's routes and inhibit rules run
there too (`routing`, `suppression`): theirs are held to the same bounds on backtracking,
and may look around. And reading a pattern that only lists words.
"""

from __future__ import annotations

import re

MAX_PATTERN = 200
# Repeats of a variable count (*, +, {m,n}) in one pattern. Each one more multiplies the
# worst case by the value's length: on a 200-character value that no pattern matches,
# `.*.*x` takes 0.02 ms, `.*.*.*x` 1.6 ms and `.*.*.*.*x` 84 ms (Python 3.11).
MAX_REPEATS = 2

_QUANTIFIER = re.compile(r"\{(\d*)(?:(,)(\d*))?\}")
_FLAGS = re.compile(r"[aiLmsux-]+([):])")   # after "(?": (?i) or (?i:...)
_LOOKAROUNDS = {"=": "a lookahead", "!": "a negative lookahead", "<=": "a lookbehind",
                "<!": "a negative lookbehind"}


def pattern_problem(pattern: str, *, in_policy: bool = False) -> str | None:
    """Why a silence (or with `in_policy`, the alert policy) may not use this regular
    expression (a sentence), or None.

    It must compile (the caller checked), be at most MAX_PATTERN characters, hold no
    back-reference, repeat no group that itself repeats or has alternatives (`(a+)+`,
    `(a|aa)*`: exponential backtracking) other than at most once (`?`), and have at most
    MAX_REPEATS repeats of a variable count. A silence's may hold no lookaround, conditional
    or inline flag either; the policy's may (it is an admin's file, read at start-up, and
    nothing judges what it matches beforehand)."""
    if len(pattern) > MAX_PATTERN:
        return f"a pattern may be at most {MAX_PATTERN} characters, this one has {len(pattern)}"
    return _Scan(pattern, in_policy).problem()


class _Scan:
    """One pass over the pattern: groups on a stack, each remembering whether anything in it
    repeats or has alternatives, and the atom a quantifier that follows applies to."""

    def __init__(self, pattern: str, in_policy: bool) -> None:
        self.p = pattern
        self.in_policy = in_policy
        self.used_in = "an alert policy" if in_policy else "a silence"
        self.i = 0
        self.repeats = 0
        # per open group: (something in it repeats, it has alternatives)
        self.stack: list[list[bool]] = [[False, False]]
        self.atom: tuple[bool, bool] | None = None   # the last atom: (repeats, alternatives)

    def problem(self) -> str | None:
        p = self.p
        while self.i < len(p):
            c = p[self.i]
            found = (self.escape() if c == "\\" else self.char_class() if c == "[" else
                     self.open_group() if c == "(" else self.close_group() if c == ")" else
                     self.quantifier(c) if c in "*+?{" else self.other(c))
            if found:
                return found
        if self.repeats > MAX_REPEATS:
            return (f"a pattern may repeat at most {MAX_REPEATS} parts a variable number of "
                    f"times (*, +, {{m,n}}), this one {self.repeats}: each more slows every "
                    "alert's check")
        return None

    def escape(self) -> str | None:
        nxt = self.p[self.i + 1:self.i + 2]
        if nxt in tuple("123456789"):
            return f"a back-reference (\\1 ...) cannot be used in {self.used_in}"
        self.i += 2
        self.atom = (False, False)
        return None

    def char_class(self) -> str | None:
        j = self.i + 1
        if self.p[j:j + 1] == "^":
            j += 1
        if self.p[j:j + 1] == "]":   # a leading ] is a character of the class
            j += 1
        while j < len(self.p) and self.p[j] != "]":
            j += 2 if self.p[j] == "\\" else 1
        self.i = j + 1
        self.atom = (False, False)
        return None

    def open_group(self) -> str | None:
        ext = self.p[self.i + 2:] if self.p.startswith("(?", self.i) else None
        if ext is None:
            self.i += 1
        elif ext.startswith(("P=", "(")):
            what = "a back-reference ((?P=name))" if ext[0] == "P" else "a conditional ((?(1)...))"
            return f"{what} cannot be used in {self.used_in}"
        elif ext.startswith(":"):
            self.i += 3
        elif ext.startswith("P<"):
            self.i = self.p.index(">", self.i) + 1
        elif around := next((s for s in _LOOKAROUNDS if ext.startswith(s)), None):
            if not self.in_policy:
                return f"{_LOOKAROUNDS[around]} ((?{around}...)) cannot be used in a silence: " \
                       "what it matches cannot be judged before it is in force"
            self.i += 2 + len(around)
        elif self.in_policy and (flags := _FLAGS.match(ext)):
            self.i += 2 + flags.end()
            if flags.group(1) == ")":   # (?i) at the start: the whole pattern's, no group
                self.atom = None
                return None
        else:
            return "of the (?...) groups a silence may use only (?:...) and (?P<name>...)"
        self.stack.append([False, False])
        self.atom = None
        return None

    def close_group(self) -> str | None:
        repeats, alternatives = self.stack.pop()
        self.stack[-1][0] |= repeats
        self.i += 1
        self.atom = (repeats, alternatives)
        return None

    def quantifier(self, c: str) -> str | None:
        if c == "{":
            m = _QUANTIFIER.match(self.p, self.i)
            if m is None or not (m.group(1) or m.group(2)):   # a literal {
                return self.other(c)
            low, comma, high = m.groups()
            least = int(low or 0)
            most = (int(high) if high else None) if comma else least
            self.i = m.end()
        else:
            least, most = (0 if c in "*?" else 1), (1 if c == "?" else None)
            self.i += 1
        if self.p[self.i:self.i + 1] in ("?", "+"):   # lazy or possessive: the same repeat
            self.i += 1
        inner_repeats, alternatives = self.atom or (False, False)
        if (most is None or most > 1) and (inner_repeats or alternatives):
            return ("a group that repeats something itself, or has alternatives, may not be "
                    "repeated (as (a+)+ or (a|aa)*): that can take exponential time; at most "
                    "once (?) is allowed")
        if most is None or (most > 1 and most != least):
            self.repeats += 1
        self.stack[-1][0] = True
        return None

    def other(self, c: str) -> str | None:
        if c == "|":
            self.stack[-1][1] = True
            self.atom = None
        elif c in "^$":
            self.atom = None
        else:
            self.atom = (False, False)
        self.i += 1
        return None


_LITERAL = re.compile(r"(?:[A-Za-z0-9_:-]|\\[.:_-])+")


def listed_values(pattern: str) -> tuple[str, ...] | None:
    """The values a pattern that only lists literal words allows (`A-1|B\\.2` allows
    "A-1" and "B.2"), or None for any other pattern."""
    parts = pattern.split("|")
    if not all(_LITERAL.fullmatch(part) for part in parts):
        return None
    return tuple(part.replace("\\", "") for part in parts)
