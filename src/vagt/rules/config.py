"""Rule files in TOML: loading and validation, with errors that name the file, rule and field.

A file holds `[[rule]]` tables. Kinds so far: `event` (event codes that open an alert) and
`threshold` (a metric above or below a level). Rules know nothing of MQTT or SQL.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

SEVERITIES = ("critical", "major", "warning", "info")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_COMMON = {"name", "kind", "severity", "priority", "queue", "summary", "labels"}
_KIND_FIELDS = {
    "event": {"codes"},
    "threshold": {"metric", "below", "above", "clear_at"},
}


class RuleConfigError(ValueError):
    """A rule file is not valid; the message names the file, the rule and the field."""


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str                      # "event" or "threshold"
    severity: str
    priority: int                  # 1 (most urgent) .. 5
    queue: str
    summary: str                   # a template: {device_id} {code} {metric} {value}
    labels: dict[str, str] = field(default_factory=dict)
    codes: tuple[str, ...] = ()    # event: glob patterns such as "alarm.*"
    metric: str = ""               # threshold
    below: float | None = None     # threshold: fires when value < below
    above: float | None = None     # threshold: fires when value > above
    clear_at: float | None = None  # threshold: hysteresis; clears only past this level
    source: str = ""               # the file it came from

    def matches_code(self, code: str) -> bool:
        return any(fnmatch.fnmatchcase(code, p) for p in self.codes)


def default_rules_path() -> Path:
    return Path(str(resources.files("vagt.rules") / "default.toml"))


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
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RuleConfigError(f"{path}: no such rule file") from None
    except tomllib.TOMLDecodeError as e:
        raise RuleConfigError(f"{path}: not valid TOML: {e}") from None
    unknown = set(doc) - {"rule"}
    if unknown:
        raise RuleConfigError(f"{path}: unknown table(s) {sorted(unknown)}; rules go in [[rule]]")
    tables = doc.get("rule", [])
    if not isinstance(tables, list):
        raise RuleConfigError(f"{path}: 'rule' must be an array of tables ([[rule]])")
    return [_parse_rule(path, i, t) for i, t in enumerate(tables)]


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
        raise fail(sorted(extra)[0], f"is not a field of a {kind} rule; allowed: "
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
    common: dict[str, Any] = dict(name=name, kind=kind, severity=severity, priority=priority,
                                  queue=queue, labels=dict(labels), source=str(path))
    if kind == "event":
        codes = t.get("codes")
        if isinstance(codes, str):
            codes = [codes]
        if not isinstance(codes, list) or not codes or not all(isinstance(c, str) for c in codes):
            raise fail("codes", f"must be a list of event codes or patterns, got {codes!r}")
        summary = t.get("summary", "{code} from {device_id}")
        return Rule(codes=tuple(codes), summary=_summary(summary, fail), **common)
    metric = t.get("metric")
    if not isinstance(metric, str) or not metric:
        raise fail("metric", f"must name a metric, got {metric!r}")
    below, above = _number(t, "below", fail), _number(t, "above", fail)
    if (below is None) == (above is None):
        raise fail("below", "or 'above' must be given, exactly one of them")
    clear_at = _number(t, "clear_at", fail)
    if clear_at is not None and below is not None and clear_at < below:
        raise fail("clear_at", f"must be at or above 'below' ({below}), got {clear_at}")
    if clear_at is not None and above is not None and clear_at > above:
        raise fail("clear_at", f"must be at or below 'above' ({above}), got {clear_at}")
    summary = t.get("summary", "{metric} is {value} on {device_id}")
    return Rule(metric=metric, below=below, above=above, clear_at=clear_at,
                summary=_summary(summary, fail), **common)


def _number(t: dict[str, Any], key: str, fail: Any) -> float | None:
    v = t.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise fail(key, f"must be a number, got {v!r}")
    return float(v)


def _summary(template: Any, fail: Any) -> str:
    if not isinstance(template, str):
        raise fail("summary", f"must be a string, got {template!r}")
    try:
        template.format(device_id="x", code="x", metric="x", value=0.0)
    except (KeyError, IndexError, ValueError) as e:
        raise fail("summary",
                   f"may use {{device_id}} {{code}} {{metric}} {{value}} only: {e}") from None
    return template
