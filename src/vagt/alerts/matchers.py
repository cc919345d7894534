"""Label matchers, as Alertmanager writes them: `name="value"`, `name!="v"`, `name=~"re"`, `name!~"re"`.

Regular expressions are anchored (they must match the whole value). A label the alert does
not have counts as the empty string, so `gateway_id!=""` means "has a gateway".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import orjson

from vagt.privacy import contains_cpr


class MatcherError(ValueError):
    """A matcher cannot be parsed; the message shows it and says what is allowed."""


class Op(StrEnum):
    EQ = "="
    NE = "!="
    RE = "=~"
    NRE = "!~"


_SYNTAX = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Matcher:
    name: str
    op: Op
    value: str

    def __post_init__(self) -> None:
        if self.op in (Op.RE, Op.NRE):
            try:
                object.__setattr__(self, "_regex", re.compile(self.value))
            except re.error as e:
                raise MatcherError(f"{self}: not a valid regular expression: {e}") from None
            except (OverflowError, RecursionError):   # x{99999999999}; groups 2,000 deep
                raise MatcherError(f"{self.name}{self.op.value}…: a regular expression too "
                                   "large or too deeply nested to compile") from None

    def matches(self, labels: Mapping[str, object]) -> bool:
        value = labels.get(self.name)
        text = "" if value is None else str(value)
        if self.op is Op.EQ:
            return text == self.value
        if self.op is Op.NE:
            return text != self.value
        hit = self._pattern.fullmatch(text) is not None
        return hit if self.op is Op.RE else not hit

    @property
    def _pattern(self) -> re.Pattern[str]:
        pattern: re.Pattern[str] = getattr(self, "_regex")  # noqa: B009 - set in __post_init__
        return pattern

    def __str__(self) -> str:
        return f"{self.name}{self.op.value}{orjson.dumps(self.value).decode()}"

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "op": self.op.value, "value": self.value}

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> Matcher:
        try:
            return cls(str(doc["name"]), Op(str(doc["op"])), str(doc["value"]))
        except (KeyError, ValueError) as e:
            raise MatcherError(f"not a matcher: {dict(doc)!r} ({e})") from None


def parse_matcher(text: str) -> Matcher:
    """`name="value"`, or unquoted `name=value` as typed on a command line. One holding a
    CPR number is refused without repeating it (the refusals below quote the text)."""
    if contains_cpr(text):   # escapes read as what they write: "010170\n1234" is one
        raise MatcherError(_HOLDS_CPR)
    try:
        text.encode()
    except UnicodeEncodeError:   # bytes of an argument that are no UTF-8; a lone surrogate
        raise MatcherError("a matcher must be text: this one holds what is not UTF-8") from None
    m = _SYNTAX.match(text)
    if m is None:
        raise MatcherError(f"{text!r} is not a matcher; write name=\"value\", name!=\"value\", "
                           "name=~\"regex\" or name!~\"regex\"")
    name, op, raw = m.groups()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise MatcherError(f"{text!r}: the quoted value is not a valid string") from None
    else:
        value = raw
    return Matcher(name, Op(op), str(value))


_HOLDS_CPR = ("a matcher holds something shaped like a civil registration (CPR) number; no "
              "label of an alert holds one: leave it out")


def parse_matchers(texts: Iterable[str]) -> tuple[Matcher, ...]:
    return tuple(parse_matcher(t) for t in texts)


def all_match(matchers: Sequence[Matcher], labels: Mapping[str, object]) -> bool:
    return all(m.matches(labels) for m in matchers)


def equalities(matchers: Sequence[Matcher]) -> dict[str, str]:
    """The `=` matchers with a value, as a JSON object for a `labels @> ...` index lookup."""
    return {m.name: m.value for m in matchers if m.op is Op.EQ and m.value != ""}


_WORDS = re.compile(r"[A-Za-z0-9_-]+(?:\|[A-Za-z0-9_-]+)*")


def alternatives(matchers: Sequence[Matcher]) -> dict[str, list[str]]:
    """The `=~` matchers that only list words (`rule=~"device_silent|device_offline"`), as
    the values each allows: what SQL can filter on (`labels->>name = ANY(...)`) without
    reading regular expressions of its own."""
    return {m.name: m.value.split("|") for m in matchers
            if m.op is Op.RE and _WORDS.fullmatch(m.value)}
