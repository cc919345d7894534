"""What a silence can hold back, judged from the label values alerts can have (the rule
book's critical rules, the engine's own alarms), not by trying values on it: whether it can
hold back a critical alert, and whether it names the devices it is for.

A label whose values are not a closed set (a device id, a vendor, a gateway) counts as able
to take any value; a regular expression on one is not read, so it counts as matching some.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vagt.alerts.engine_rules import DEVICE_LABELS, ENGINE_RULES, WITH_DEVICE_LABELS
from vagt.alerts.matchers import Matcher, Op
from vagt.alerts.patterns import listed_values
from vagt.alerts.policy import AlertPolicy
from vagt.rules.config import Rule, load_rules

CRITICAL = "critical"
# A silence holds back a critical alert only for devices it names, one by one: by
# device_id="..." or a short list device_id=~"A|B|C".
MAX_DEVICES = 20
# The labels every rule's alert has from the device (see `Pipeline._to_alert_firings`).
_FROM_DEVICE = ("device_id", "municipality", "type", "vendor", "model", "metric", "code")


@dataclass(frozen=True)
class Values:
    """The values a label can have in one kind of alert: those of `only`; None: any text."""

    only: frozenset[str] | None

    def admit(self, name: str, matchers: Sequence[Matcher]) -> bool:
        """Whether one of the values satisfies every one of `matchers` (all on `name`)."""
        candidates = self.only
        if candidates is None:
            listed = [frozenset(v) for m in matchers if (v := pinned(m)) is not None]
            if not listed:
                return True   # any text: some may satisfy them (a regex is not read)
            candidates = frozenset.intersection(*listed)
        return any(all(m.matches({name: v}) for m in matchers) for v in candidates)


ANY = Values(None)
ABSENT = Values(frozenset({""}))   # a label the alert does not have is ""


@dataclass(frozen=True)
class AlertKind:
    """The alerts of one rule: the values each of their labels can have."""

    rule: str
    labels: Mapping[str, Values]

    def admits(self, matchers: Sequence[Matcher]) -> bool:
        """Whether some alert of this kind can match every one of `matchers`. Labels are
        taken one by one, as if independent: more alerts than exist, never fewer."""
        names = {m.name for m in matchers}
        return all(self.labels.get(name, ABSENT).admit(name, [m for m in matchers
                                                             if m.name == name])
                   for name in names)


def pinned(m: Matcher) -> tuple[str, ...] | None:
    """The only values a matcher lets through, when it lists them (`=`, or `=~` of literal
    words); None when it does not."""
    if m.op is Op.EQ:
        return (m.value,)
    if m.op is Op.RE:
        return listed_values(m.value)
    return None


def names_devices(matchers: Sequence[Matcher]) -> bool:
    """Whether the matchers name the devices they are for one by one: `device_id="X"`, or
    `device_id=~"X|Y"` of at most MAX_DEVICES ids."""
    for m in matchers:
        ids = pinned(m) if m.name == "device_id" else None
        if ids and all(ids) and len(ids) <= MAX_DEVICES:
            return True
    return False


def critical_kinds(rules: Sequence[Rule], policy: AlertPolicy) -> list[AlertKind]:
    """The kinds of critical alert: of each critical rule of the book, and each alarm the
    engine raises itself (`engine_rules`), with their labels as the pipeline and the store
    make them (the registry's `label_attributes`, then the device's, then the rule's own)."""
    attributes = {entry.partition("=")[0] for entry in policy.label_attributes}
    kinds = []
    for r in rules:
        if r.severity != CRITICAL:
            continue
        labels = dict.fromkeys(attributes, ANY)
        labels.update(dict.fromkeys(_FROM_DEVICE, ANY))
        labels.update(rule=_only(r.name), severity=_only(r.severity))
        # a reading's rule says its metric (a validity rule: any), another the event's code
        labels["code" if r.uses_readings else "metric"] = ABSENT
        if r.uses_readings and r.kind != "validity":
            labels["metric"] = _only(r.metric)
        if r.types:
            labels["type"] = Values(frozenset(r.types))
        if r.municipalities:
            labels["municipality"] = Values(frozenset(r.municipalities))
        labels.update({k: _only(v) for k, v in r.labels.items()})
        kinds.append(AlertKind(r.name, labels))
    for name, severities in ENGINE_RULES.items():
        if CRITICAL in severities:
            labels = dict.fromkeys(attributes, ANY)
            labels.update(rule=_only(name), severity=_only(CRITICAL), device_id=ANY)
            if name in WITH_DEVICE_LABELS:
                labels.update(dict.fromkeys(DEVICE_LABELS, ANY))
            kinds.append(AlertKind(name, labels))
    return kinds


def _only(value: str) -> Values:
    return Values(frozenset({value}))


def critical_rules_matched(matchers: Sequence[Matcher], rules: Sequence[Rule],
                           policy: AlertPolicy) -> tuple[list[str], bool]:
    """The rules whose critical alerts the matchers can match, and whether that is every
    kind of critical alert there is."""
    kinds = critical_kinds(rules, policy)
    matched = [k.rule for k in kinds if k.admits(matchers)]
    return matched, len(matched) == len(kinds)


# -- the rule book silences are judged by --------------------------------------------------

_book: tuple[Rule, ...] | None = None


def install_rule_book(rules: Sequence[Rule]) -> None:
    """The rules the engine (or the API, a command) runs: what silences are judged by."""
    global _book
    _book = tuple(rules)


def current_rule_book() -> tuple[Rule, ...]:
    global _book
    if _book is None:
        _book = tuple(load_rules(None))
    return _book
