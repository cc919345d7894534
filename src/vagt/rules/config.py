"""Rule files in TOML: loading and validation, with errors that name the file, rule and field.

A file holds `[[rule]]` tables. Each rule has a kind (threshold, validity, stuck, event,
absence, sequence, rate, flapping, clock), says what it applies to (device types, models,
municipalities; a metric or event codes), its severity and the labels routing uses.
Rules know nothing of MQTT or SQL.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vagt.tomlfile import read_toml

SEVERITIES = ("critical", "major", "warning", "info")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_COMMON = {"name", "kind", "severity", "priority", "queue", "summary", "labels",
           "types", "models", "municipalities"}
_KIND_FIELDS = {
    "threshold": {"metric", "below", "above", "clear_at", "for", "max_gap"},
    "validity": {"metrics", "alert_after"},
    "stuck": {"metric", "count", "tolerance"},
    "event": {"codes", "clear_codes", "clear_after"},
    "absence": {"factor", "after"},
    "sequence": {"first", "then", "within"},
    "rate": {"metric", "window", "rise", "fall"},
    "flapping": {"codes", "count", "window", "stable"},
    "clock": {"max_skew", "for"},
}
_SUMMARIES = {
    "threshold": "{metric} is {value} on {device_id}",
    "validity": "{device_id} keeps reporting implausible {metric} values ({value})",
    "stuck": "{metric} on {device_id} has not changed from {value}",
    "event": "{code} from {device_id}",
    "absence": "nothing heard from {device_id}",
    "sequence": "{code} on {device_id} was not followed in time",
    "rate": "{metric} on {device_id} changed by {value} within the window",
    "flapping": "{device_id} keeps reporting {code}",
    "clock": "{device_id} sends nothing dated within {value:.0f} h of when we hear it",
}


class RuleConfigError(ValueError):
    """A rule file is not valid; the message names the file, the rule and the field."""


@dataclass(frozen=True)
class Rule:
    """One rule as written in its file. Equal definitions keep their state across a reload."""

    name: str
    kind: str
    severity: str
    priority: int                  # 1 (most urgent) .. 5; a default until routing decides
    queue: str                     # a default until routing decides
    summary: str                   # a template: {device_id} {code} {metric} {value}
    labels: dict[str, str] = field(default_factory=dict)
    # applicability: empty = every device
    types: tuple[str, ...] = ()
    models: tuple[str, ...] = ()   # the model name, or "Vendor Model"
    municipalities: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()    # event, flapping: glob patterns such as "alarm.*"
    clear_codes: tuple[str, ...] = ()   # event: codes that clear it (power.mains_restored)
    clear_after: float | None = None    # event: seconds after its last firing it clears
    metric: str = ""               # threshold, stuck, rate
    metrics: tuple[str, ...] = ()  # validity: which metrics (empty = all the model reports)
    below: float | None = None     # threshold: fires when value < below
    above: float | None = None     # threshold: fires when value > above
    clear_at: float | None = None  # threshold: hysteresis; clears only past this level
    for_s: float = 0.0             # threshold: the condition must hold this long (device time)
    # threshold: readings further apart than this break `for` (None: `for` itself). Not in
    # the repr: the state engines stored until 2026-12-06 is read by a hash of the repr
    # (`persist.hashes_read`), which a new field there would change for every rule. Equality
    # and `persist.definition_hash` compare it. A field added now needs no such care.
    max_gap_s: float | None = field(default=None, repr=False)
    alert_after: int = 0           # validity: this many implausible values in a row alert (0: never)
    count: int = 0                 # stuck: identical values in a row; flapping: more than this
    tolerance: float = 0.0         # stuck: values this close count as identical
    factor: float = 3.0            # absence: silent for factor x the model's heartbeat
    after_s: float | None = None   # absence: a fixed silence instead of the heartbeat
    first: tuple[str, ...] = ()    # sequence: A (dose.due)
    then: tuple[str, ...] = ()     # sequence: B (dose.taken) expected within `within_s`
    within_s: float = 0.0
    window_s: float = 0.0          # rate, flapping
    rise: float | None = None      # rate: fires when the value rose this much in the window
    fall: float | None = None      # rate: ... or fell this much
    stable_s: float = 0.0          # flapping: quiet this long and it clears
    # clock: a device time further behind ours is wrong (out of the repr, as max_gap_s)
    max_skew_s: float = field(default=3600.0, repr=False)
    source: str = ""               # the file it came from

    def matches_code(self, code: str) -> bool:
        return any(fnmatch.fnmatchcase(code, p) for p in self.codes)

    @property
    def definition(self) -> Rule:
        """The rule without where it was read from: what decides whether state is kept."""
        return dataclasses.replace(self, source="")

    @property
    def gap_s(self) -> float:
        """threshold: the longest gap between readings that still holds the condition."""
        return self.for_s if self.max_gap_s is None else self.max_gap_s

    @property
    def uses_readings(self) -> bool:
        return self.kind in ("threshold", "validity", "stuck", "rate")


def default_rules_path() -> Path:
    return Path(str(resources.files("vagt.rules") / "default.toml"))


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a string such as "90s", "15m", "2h", "3d", "1w"."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration such as \"15m\" or seconds, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"must not be negative, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT_S[m.group(2)]
    raise ValueError(f"must be a duration such as \"90s\", \"15m\", \"2h\", \"3d\" or a number "
                     f"of seconds, got {value!r}")


def load_rules(path: str | Path | None) -> list[Rule]:
    """Rules from a file, or every *.toml in a folder (sorted); the defaults when `path` is empty."""
    p = Path(path) if path else default_rules_path()
    files = sorted(p.glob("*.toml")) if p.is_dir() else [p]
    if not files:
        raise RuleConfigError(f"{p}: no *.toml rule files in this folder")
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for f in files:
        for rule in _load_file(f):
            if rule.name in seen:
                raise RuleConfigError(
                    f"{f}: rule '{rule.name}' is also defined in {seen[rule.name]}; "
                    "rule names must be unique"
                )
            seen[rule.name] = str(f)
            rules.append(rule)
    return rules


def _load_file(path: Path) -> list[Rule]:
    doc = read_toml(path, RuleConfigError, "rule file")
    unknown = set(doc) - {"rule"}
    if unknown:
        raise RuleConfigError(f"{path}: unknown table(s) {sorted(unknown)}; rules go in [[rule]]")
    tables = doc.get("rule", [])
    if not isinstance(tables, list):
        raise RuleConfigError(f"{path}: 'rule' must be an array of tables ([[rule]])")
    return [_parse_rule(path, i, t) for i, t in enumerate(tables)]


Fail = Callable[[str, str], RuleConfigError]


def _parse_rule(path: Path, i: int, t: dict[str, Any]) -> Rule:
    name = t.get("name")
    where = f"rule '{name}' in {path}" if isinstance(name, str) else f"rule #{i + 1} in {path}"

    def fail(fld: str, msg: str) -> RuleConfigError:
        return RuleConfigError(f"'{fld}' of {where} {msg}")

    if not isinstance(name, str) or not _NAME.match(name):
        raise fail("name", f"must be lowercase letters, digits and _ (at most 64), got {name!r}")
    kind = t.get("kind")
    if kind not in _KIND_FIELDS:
        raise fail("kind", f"must be one of {sorted(_KIND_FIELDS)}, got {kind!r}")
    extra = set(t) - _COMMON - _KIND_FIELDS[kind]
    if extra:
        article = "an" if kind[0] in "aeiou" else "a"
        raise fail(sorted(extra)[0], f"is not a field of {article} {kind} rule; allowed: "
                   f"{sorted(_COMMON | _KIND_FIELDS[kind])}")
    severity = t.get("severity", "warning")
    if severity not in SEVERITIES:
        raise fail("severity", f"must be one of {list(SEVERITIES)}, got {severity!r}")
    priority = t.get("priority", 3)
    if not isinstance(priority, int) or isinstance(priority, bool) or not 1 <= priority <= 5:
        raise fail("priority", f"must be a whole number from 1 (most urgent) to 5, got {priority!r}")
    queue = t.get("queue", "technical")
    if not isinstance(queue, str) or not queue:
        raise fail("queue", f"must be a non-empty string, got {queue!r}")
    labels = t.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise fail("labels", "must be a table of strings")
    fields: dict[str, Any] = dict(
        name=name, kind=kind, severity=severity, priority=priority, queue=queue,
        labels=dict(labels), source=str(path),
        types=_strings(t, "types", fail), models=_strings(t, "models", fail),
        municipalities=_strings(t, "municipalities", fail),
        summary=_summary(t.get("summary", _SUMMARIES[kind]), fail))
    fields.update(_KIND_PARSERS[kind](t, fail))
    return Rule(**fields)


def _threshold(t: dict[str, Any], fail: Fail) -> dict[str, Any]:
    metric = _metric(t, fail)
    below, above = _number(t, "below", fail), _number(t, "above", fail)
    if (below is None) == (above is None):
        raise fail("below", "or 'above' must be given, exactly one of them")
    clear_at = _number(t, "clear_at", fail)
    if clear_at is not None and below is not None and clear_at < below:
        raise fail("clear_at", f"must be at or above 'below' ({below}), got {clear_at}")
    if clear_at is not None and above is not None and clear_at > above:
        raise fail("clear_at", f"must be at or below 'above' ({above}), got {clear_at}")
    for_s = _duration(t, "for", fail, 0.0)
    max_gap = _duration(t, "max_gap", fail, None)
    if max_gap is not None and not for_s:
        raise fail("max_gap", "bounds the gaps within 'for'; give 'for' too, or leave it out")
    if max_gap is not None and max_gap <= 0:
        raise fail("max_gap", "must be longer than 0 seconds")
    return dict(metric=metric, below=below, above=above, clear_at=clear_at, for_s=for_s,
                max_gap_s=max_gap)


def _validity(t: dict[str, Any], fail: Fail) -> dict[str, Any]:
    return dict(metrics=_strings(t, "metrics", fail),
                alert_after=_whole(t, "alert_after", fail, 0, minimum=0))


def _stuck(t: dict[str, Any], fail: Fail) -> dict[str, Any]:
    tolerance = _number(t, "tolerance", fail) or 0.0
    if tolerance < 0:
        raise fail("tolerance", f"must not be negative, got {tolerance}")
    return dict(metric=_metric(t, fail), count=_whole(t, "count", fail, None, minimum=2),
                tolerance=tolerance)


def _event(t: dict[str, Any], fail: Fail) -> dict[str, Any]:
    clear_after = _duration(t, "clear_after", fail, None)
    if clear_after is not None and clear_after <= 0:
        raise fail("clear_after", "must be longer than 0 seconds")
    return dict(codes=_codes(t, "codes", fail, required=True),
                clear_codes=_codes(t, "clear_codes", fail, required=False),
                clear_after=clear_after)


def _absence(t: dict[str, Any], fail: Fail) -> dict[str, Any]:
    factor = _number(t, "factor", fail)
    if factor is not None and factor < 1:
        raise fail("factor", f"must be at least 1 (times the model's heartbeat), got {factor}")
    after = _duration(t, "after", fail, None)
    if after is not None and after <= 0:
        raise fail("after", "must be longer than 0 seconds")
    return dict(factor=3.0 if factor is None else factor, after_s=after)


def _sequence(t: dict[str, Any], fail: Fail) -> dict[str, Any]:
    within = _duration(t, "within", fail, None)
    if within is None or within <= 0:
        raise fail("within", "must be a duration longer than 0, e.g. \"30m\"")
    return dict(first=_codes(t, "first", fail, required=True),
                then=_codes(t, "then", fail, required=True), within_s=within,
                codes=())


def _rate(t: dict[str, Any], fail: Fail) -> dict[str, Any]:
    window = _duration(t, "window", fail, None)
    if window is None or window <= 0:
        raise fail("window", "must be a duration longer than 0, e.g. \"3d\"")
    rise, fall = _number(t, "rise", fail), _number(t, "fall", fail)
    if (rise is None) == (fall is None):
        raise fail("rise", "or 'fall' must be given, exactly one of them")
    for key, v in (("rise", rise), ("fall", fall)):
        if v is not None and v <= 0:
            raise fail(key, f"must be a positive change, got {v}")
    return dict(metric=_metric(t, fail), window_s=window, rise=rise, fall=fall)


def _flapping(t: dict[str, Any], fail: Fail) -> dict[str, Any]:
    window = _duration(t, "window", fail, None)
    if window is None or window <= 0:
        raise fail("window", "must be a duration longer than 0, e.g. \"1h\"")
    stable = _duration(t, "stable", fail, window)
    assert stable is not None
    if stable <= 0:
        raise fail("stable", "must be longer than 0 seconds")
    return dict(codes=_codes(t, "codes", fail, required=True),
                count=_whole(t, "count", fail, None, minimum=1), window_s=window,
                stable_s=stable)


def _clock(t: dict[str, Any], fail: Fail) -> dict[str, Any]:
    max_skew = _duration(t, "max_skew", fail, 3600.0)
    assert max_skew is not None
    if max_skew < 600:
        # the decoder lets a device run 5 minutes ahead; a few minutes behind is a clock that
        # drifts, not one that is wrong, and a flush of buffered messages is behind too
        raise fail("max_skew", f"must be at least 10 minutes, got {max_skew:g} s")
    for_s = _duration(t, "for", fail, 900.0)
    assert for_s is not None
    return dict(max_skew_s=max_skew, for_s=for_s)


_KIND_PARSERS: dict[str, Callable[[dict[str, Any], Fail], dict[str, Any]]] = {
    "threshold": _threshold, "validity": _validity, "stuck": _stuck, "event": _event,
    "absence": _absence, "sequence": _sequence, "rate": _rate, "flapping": _flapping,
    "clock": _clock,
}


def _metric(t: dict[str, Any], fail: Fail) -> str:
    metric = t.get("metric")
    if not isinstance(metric, str) or not metric:
        raise fail("metric", f"must name a metric, got {metric!r}")
    return metric


def _number(t: dict[str, Any], key: str, fail: Fail) -> float | None:
    v = t.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise fail(key, f"must be a number, got {v!r}")
    return float(v)


def _whole(t: dict[str, Any], key: str, fail: Fail, default: int | None, minimum: int) -> int:
    v = t.get(key, default)
    if v is None:
        raise fail(key, f"must be given: a whole number, at least {minimum}")
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise fail(key, f"must be a whole number, at least {minimum}, got {v!r}")
    return v


def _duration(t: dict[str, Any], key: str, fail: Fail, default: float | None) -> float | None:
    if key not in t:
        return default
    try:
        return parse_duration(t[key])
    except ValueError as e:
        raise fail(key, str(e)) from None


def _strings(t: dict[str, Any], key: str, fail: Fail) -> tuple[str, ...]:
    v = t.get(key, [])
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise fail(key, f"must be a list of names, got {v!r}")
    return tuple(v)


def _codes(t: dict[str, Any], key: str, fail: Fail, required: bool) -> tuple[str, ...]:
    v = t.get(key)
    if v is None and not required:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(c, str) and c for c in v):
        raise fail(key, f"must be a list of event codes or patterns, got {v!r}")
    return tuple(v)


def _summary(template: Any, fail: Fail) -> str:
    if not isinstance(template, str):
        raise fail("summary", f"must be a string, got {template!r}")
    try:
        template.format(device_id="x", code="x", metric="x", value=0.0)
    except (KeyError, IndexError, ValueError) as e:
        raise fail("summary",
                   f"may use {{device_id}} {{code}} {{metric}} {{value}} only: {e}") from None
    return template
