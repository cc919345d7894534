"""The alert policy, read from TOML: routing tree, time to claim, escalation, reopening,
inhibition, resolution codes and delivery targets. Errors name the file, the entry and the field.

The engine installs the policy it loaded with `install_policy()`; the alert store and the
operators' actions use the installed one unless they are given another (tests do that).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vagt.alerts.matchers import Matcher, MatcherError, Op, parse_matcher
from vagt.alerts.patterns import pattern_problem
from vagt.alerts.routing import Route
from vagt.alerts.urls import mqtt_url_problem, without_secrets
from vagt.tomlfile import read_toml


class PolicyError(ValueError):
    """The alert policy file cannot be used; the message names the file, entry and field."""


@dataclass(frozen=True)
class InhibitRule:
    """While a source alert is active, target alerts with the same `equal` labels are suppressed.

    `equal` pairs are (target label, source label): usually the same name; ("gateway_id",
    "device_id") says a device's gateway is the source alert's device.
    """

    name: str
    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class WebhookTarget:
    name: str
    url: str
    secret: bytes = field(repr=False)
    events: tuple[str, ...] = ()
    timeout_s: float = 5.0


@dataclass(frozen=True)
class MqttTarget:
    name: str
    topic: str               # may hold {queue}, {event}, {priority}, {municipality}
    url: str = ""            # "" = the engine's broker
    events: tuple[str, ...] = ()
    # from `password_env` or `password_file`, never the policy file itself (nor a log)
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DeliveryPolicy:
    webhooks: tuple[WebhookTarget, ...] = ()
    mqtt: tuple[MqttTarget, ...] = ()
    max_attempts: int = 10
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 600.0
    poll_interval_s: float = 0.5
    # an outbox entry is kept this long after its deliveries ended (delivered or dead)
    retention_s: float = 30 * 86400.0


EVENTS = ("opened", "reopened", "suppressed", "unsuppressed", "escalated", "claimed", "released",
          "acknowledged", "resolved", "note")
DEFAULT_RESOLUTION_CODES = ("resolved", "false_alarm", "visit_arranged", "device_replaced",
                            "no_action_needed", "duplicate")


@dataclass(frozen=True)
class AlertPolicy:
    root: Route = field(default_factory=lambda: Route("root"))
    time_to_claim_s: Mapping[int, float] = field(default_factory=lambda: {
        1: 120.0, 2: 600.0, 3: 3600.0, 4: 4 * 3600.0, 5: 24 * 3600.0})
    # a claimed alert not acknowledged this long after its claim escalates (once per claim);
    # a priority not listed has no such deadline
    time_to_acknowledge_s: Mapping[int, float] = field(default_factory=lambda: {
        1: 600.0, 2: 1800.0})
    escalation_queue: str = ""          # "" = an escalated alert stays in its queue
    escalation_interval_s: float = 15.0
    reopen_window_s: float = 1800.0
    resolution_codes: tuple[str, ...] = DEFAULT_RESOLUTION_CODES
    # registry attributes that become labels: "name", or "label=attribute" (the first found wins)
    label_attributes: tuple[str, ...] = ("gateway_id", "gateway_id=gateway")
    silence_in_repair: bool = True
    # the longest a silence may last; one longer (made before there was a limit) holds back
    # no critical alert
    max_silence_s: float = 3 * 86400.0
    inhibit: tuple[InhibitRule, ...] = ()
    delivery: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    source: str = ""


_installed: AlertPolicy | None = None


def install_policy(policy: AlertPolicy) -> None:
    """Make `policy` the one the store and the actions use when given none."""
    global _installed
    _installed = policy


def current_policy() -> AlertPolicy:
    global _installed
    if _installed is None:
        _installed = load_policy(None)
    return _installed


def default_policy_path() -> Path:
    return Path(str(resources.files("vagt.alerts") / "default.toml"))


def load_policy(path: str | Path | None, env: Mapping[str, str] | None = None, *,
                secrets: bool = True) -> AlertPolicy:
    """The policy from a file (the built-in one when `path` is empty).

    `env` holds the variables named by webhooks' `secret_env`; the application passes them.
    `secrets=False` leaves webhook secrets unread (command-line tools that deliver nothing).
    """
    p = Path(path) if path else default_policy_path()
    doc = read_toml(p, PolicyError, "alert policy file")
    return _Reader(p, env or {}, secrets).policy(doc)


MAX_SILENCE_LIMIT_S = 30 * 86400.0   # what `max_silence` may be set to at most
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")
_TOP = {"reopen_window", "resolution_codes", "label_attributes", "silence_in_repair",
        "max_silence", "escalation", "route", "inhibit", "delivery"}
_ROUTE = {"name", "matchers", "queue", "priority", "time_to_claim", "continue", "routes"}


def parse_duration(text: str) -> float:
    """"90s", "2m", "1h30m", "1d" as seconds."""
    m = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if m is None or not text.strip() or not any(m.groups()):
        raise ValueError(f"{text!r} is not a duration; write e.g. 90s, 2m, 1h30m or 1d")
    d, h, mi, s = m.groups()
    return int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


class _Reader:
    def __init__(self, path: Path, env: Mapping[str, str], secrets: bool) -> None:
        self.path = path
        self.env = env
        self.secrets = secrets

    def fail(self, where: str, message: str) -> PolicyError:
        return PolicyError(f"{self.path}: {where}: {message}")

    def policy(self, doc: dict[str, Any]) -> AlertPolicy:
        self.unknown(doc, _TOP, "the top level")
        esc = self.table(doc, "escalation", "the top level")
        self.unknown(esc, {"queue", "interval", "time_to_claim", "time_to_acknowledge"},
                     "[escalation]")
        ttc = self.by_priority(esc, "time_to_claim", AlertPolicy().time_to_claim_s)
        tta = self.by_priority(esc, "time_to_acknowledge", AlertPolicy().time_to_acknowledge_s,
                               never=True)
        codes = self.strings(doc, "resolution_codes", "the top level",
                             DEFAULT_RESOLUTION_CODES)
        if "cleared" in codes:
            raise self.fail("resolution_codes", "'cleared' is kept for automatic resolution")
        return AlertPolicy(
            root=self.route(doc.get("route", {}), "[route]", "root", is_root=True),
            time_to_claim_s=ttc,
            time_to_acknowledge_s=tta,
            escalation_queue=self.string(esc, "queue", "[escalation]", ""),
            escalation_interval_s=self.duration(esc.get("interval", "15s"),
                                                "[escalation] interval"),
            reopen_window_s=self.duration(doc.get("reopen_window", "30m"), "reopen_window"),
            resolution_codes=codes,
            label_attributes=self.strings(doc, "label_attributes", "the top level",
                                          AlertPolicy.label_attributes),
            silence_in_repair=self.boolean(doc, "silence_in_repair", "the top level", True),
            max_silence_s=self.max_silence(doc.get("max_silence", "3d")),
            inhibit=tuple(self.inhibit(entry, i)
                          for i, entry in enumerate(self.tables(doc, "inhibit", "the top level"))),
            delivery=self.delivery(self.table(doc, "delivery", "the top level")),
            source=str(self.path),
        )

    def max_silence(self, value: Any) -> float:
        seconds = self.duration(value, "max_silence")
        if not 0 < seconds <= MAX_SILENCE_LIMIT_S:
            raise self.fail("max_silence", f"must be more than 0 and at most 30d (a silence "
                                           f"is for hours or days; a device away for longer "
                                           f"is in_repair), got {value!r}")
        return seconds

    # -- the routing tree --------------------------------------------------------------------

    def route(self, doc: Any, where: str, default_name: str, *, is_root: bool = False) -> Route:
        if not isinstance(doc, dict):
            raise self.fail(where, "must be a table")
        self.unknown(doc, _ROUTE, where)
        name = self.string(doc, "name", where, default_name)
        if is_root and doc.get("matchers"):
            raise self.fail(where, "the root route matches every alert: it takes no matchers")
        priority = doc.get("priority")
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                     or not 1 <= priority <= 5):
            raise self.fail(f"{where} '{name}'", f"'priority' must be 1 to 5, got {priority!r}")
        ttc = doc.get("time_to_claim")
        children = doc.get("routes", [])
        if not isinstance(children, list):
            raise self.fail(where, "'routes' must be an array of tables ([[...routes]])")
        return Route(
            name=name,
            matchers=self.matchers(doc, "matchers", f"{where} '{name}'"),
            queue=self.string(doc, "queue", f"{where} '{name}'", None),
            priority=priority,
            time_to_claim_s=None if ttc is None else self.duration(ttc, f"{where} '{name}' "
                                                                         "time_to_claim"),
            continue_=self.boolean(doc, "continue", f"{where} '{name}'", False),
            routes=tuple(self.route(c, f"{where}.routes[{i}]",
                                    f"{name}/{i}" if name != "root" else str(i))
                         for i, c in enumerate(children)),
        )

    # -- inhibition ----------------------------------------------------------------------------

    def inhibit(self, doc: dict[str, Any], i: int) -> InhibitRule:
        where = f"[[inhibit]] #{i + 1}"
        self.unknown(doc, {"name", "source", "target", "equal"}, where)
        name = self.string(doc, "name", where, f"inhibit_{i + 1}") or f"inhibit_{i + 1}"
        where = f"[[inhibit]] '{name}'"
        source = self.matchers(doc, "source", where)
        target = self.matchers(doc, "target", where)
        if not source or not target:
            raise self.fail(where, "needs both 'source' and 'target' matchers")
        equal = []
        for item in self.strings(doc, "equal", where, ()):
            t, _, s = item.partition("=")
            if not t.strip() or (_ and not s.strip()):
                raise self.fail(where, f"'equal' entry {item!r}: write a label name, or "
                                       "target_label=source_label")
            equal.append((t.strip(), (s or t).strip()))
        return InhibitRule(name, source, target, tuple(equal))

    # -- delivery -------------------------------------------------------------------------------

    def delivery(self, doc: dict[str, Any]) -> DeliveryPolicy:
        self.unknown(doc, {"max_attempts", "backoff_initial", "backoff_max", "poll_interval",
                           "retention", "webhook", "mqtt"}, "[delivery]")
        attempts = doc.get("max_attempts", 10)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise self.fail("[delivery]", f"'max_attempts' must be at least 1, got {attempts!r}")
        names: set[str] = set()
        webhooks = []
        for i, w in enumerate(self.tables(doc, "webhook", "[delivery]")):
            webhooks.append(self.webhook(w, i, names))
        mqtt = []
        for i, m in enumerate(self.tables(doc, "mqtt", "[delivery]")):
            where = f"[[delivery.mqtt]] #{i + 1}"
            self.unknown(m, {"name", "topic", "url", "events", "password_env", "password_file"},
                         where)
            name = self.target_name(m, where, names)
            topic = self.string(m, "topic", where, "")
            if not topic or "+" in topic or "#" in topic:
                raise self.fail(where, "'topic' is required and has no wildcards")
            url = self.string(m, "url", where, "")
            if url and (problem := mqtt_url_problem(url)):
                raise self.fail(where, problem)
            password = self.secret(m, where, "password", "broker password")
            if password is not None and not url:
                raise self.fail(where, "'password_env'/'password_file' go with a 'url' (with "
                                       "its user): without one, the engine's broker and "
                                       "login are used")
            if password is not None and urllib.parse.urlsplit(url).password:
                raise self.fail(where, "the 'url' holds a password and 'password_env'/"
                                       "'password_file' names one: give it only there")
            mqtt.append(MqttTarget(name, topic, url, self.events(m, where), password))
        return DeliveryPolicy(
            tuple(webhooks), tuple(mqtt), attempts,
            self.duration(doc.get("backoff_initial", "2s"), "[delivery] backoff_initial"),
            self.duration(doc.get("backoff_max", "10m"), "[delivery] backoff_max"),
            self.duration(doc.get("poll_interval", "0.5s"), "[delivery] poll_interval"),
            self.duration(doc.get("retention", "30d"), "[delivery] retention"))

    def webhook(self, doc: dict[str, Any], i: int, names: set[str]) -> WebhookTarget:
        where = f"[[delivery.webhook]] #{i + 1}"
        self.unknown(doc, {"name", "url", "secret_env", "secret_file", "events", "timeout"},
                     where)
        name = self.target_name(doc, where, names)
        url = self.string(doc, "url", where, "")
        scheme, slashes, _ = url.partition("://")
        if not slashes or scheme.lower() not in ("http", "https"):
            # a scheme is case-insensitive (RFC 3986 3.1): HTTPS://host/hook is https.
            # Shown as the webhook's errors show it: a token in it would reach the log
            raise self.fail(where, "'url' must start with http:// or https://, got "
                                   f"{without_secrets(url)!r}")
        try:
            parts = urllib.parse.urlsplit(url)
            netloc, host = parts.netloc, parts.hostname or ""
        except ValueError:   # an unbalanced [ of an IPv6 address
            raise self.fail(where, f"'url' {without_secrets(url)}") from None
        try:
            # what the send does first: a name it cannot encode would fail every event in
            # a way no receiver mends (a dead letter each), not wait until the url is
            host.encode("idna")
        except UnicodeError:
            host = ""
        if not host:
            raise self.fail(where, "'url' has no host name vagt can send to (an empty one, two "
                                   "dots in a row, or a part longer than 63 characters): "
                                   f"{without_secrets(url)!r}")
        if "@" in netloc:
            # never sent as credentials: the name looked up would be `user:password@host`,
            # the password going to the resolver
            raise self.fail(where, "'url' holds a user name or password, which vagt does not "
                                   "send (it signs each event with the signing secret): take "
                                   f"them out, {without_secrets(url)!r}")
        secret = self.secret(doc, where, "secret", "signing secret")
        if secret is None:
            raise self.fail(where, self.one_of("secret", "signing secret"))
        if len(secret) < 16:
            raise self.fail(where, "the signing secret must be at least 16 characters")
        return WebhookTarget(name, url, secret.encode(), self.events(doc, where),
                             self.duration(doc.get("timeout", "5s"), f"{where} timeout"))

    def secret(self, doc: dict[str, Any], where: str, key: str, label: str) -> str | None:
        """The secret named by `{key}_env` (a variable) or `{key}_file` (a path), at most one
        of them; None when neither is given."""
        env_key, file_key = f"{key}_env", f"{key}_file"
        from_env = self.string(doc, env_key, where, "")
        from_file = self.string(doc, file_key, where, "")
        if from_env and from_file:
            raise self.fail(where, self.one_of(key, label))
        if not (from_env or from_file):
            return None
        if not self.secrets:
            return "(not read)" * 2
        if from_env:
            secret = self.env.get(from_env, "").strip()
            if not secret:
                raise self.fail(where, f"the variable {from_env} named by '{env_key}' is not "
                                       "set or empty")
            return secret
        try:
            secret = Path(from_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise self.fail(where, f"cannot read '{file_key}' {from_file}: "
                                   f"{e.strerror}") from None
        if not secret:
            raise self.fail(where, f"'{file_key}' {from_file} is empty")
        return secret

    @staticmethod
    def one_of(key: str, label: str) -> str:
        return (f"give the {label} as exactly one of '{key}_env' (a variable's name) or "
                f"'{key}_file' (a path)")

    def target_name(self, doc: dict[str, Any], where: str, names: set[str]) -> str:
        name = self.string(doc, "name", where, "")
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", name):
            raise self.fail(where, f"'name' must be lower-case letters, digits, - or _, "
                                   f"got {name!r}")
        if name in names:
            raise self.fail(where, f"the target name '{name}' is used twice")
        names.add(name)
        return str(name)

    def events(self, doc: dict[str, Any], where: str) -> tuple[str, ...]:
        events = self.strings(doc, "events", where, ())
        for e in events:
            if e not in EVENTS:
                raise self.fail(where, f"unknown event '{e}'; one of {', '.join(EVENTS)}")
        return events

    # -- plain values ---------------------------------------------------------------------------

    def unknown(self, doc: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in doc:
            if key not in allowed:
                raise self.fail(where, f"unknown setting '{key}'; allowed: "
                                       f"{', '.join(sorted(allowed))}")

    def table(self, doc: dict[str, Any], key: str, where: str) -> dict[str, Any]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(where, f"'{key}' must be a table")
        return value

    def tables(self, doc: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(where, f"'{key}' must be an array of tables ([[{key}]])")
        return value

    def string(self, doc: dict[str, Any], key: str, where: str, default: Any) -> Any:
        value = doc.get(key, default)
        if value is not default and not isinstance(value, str):
            raise self.fail(where, f"'{key}' must be a string, got {value!r}")
        return value

    def strings(self, doc: dict[str, Any], key: str, where: str,
                default: tuple[str, ...]) -> tuple[str, ...]:
        value = doc.get(key, default)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise self.fail(where, f"'{key}' must be an array of strings, got {value!r}")
        return tuple(value)

    def boolean(self, doc: dict[str, Any], key: str, where: str, default: bool) -> bool:
        value = doc.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(where, f"'{key}' must be true or false, got {value!r}")
        return value

    def by_priority(self, esc: dict[str, Any], key: str, defaults: Mapping[int, float], *,
                    never: bool = False) -> dict[int, float]:
        """[escalation.<key>]: a duration per priority over `defaults`; with `never`, the
        word "never" takes a priority's default away."""
        where = f"[escalation.{key}]"
        table = dict(defaults)
        for name, value in self.table(esc, key, "[escalation]").items():
            if not name.isdigit() or not 1 <= int(name) <= 5:
                raise self.fail(where, f"'{name}' is not a priority; use 1 to 5")
            if never and value == "never":
                table.pop(int(name), None)
            else:
                table[int(name)] = self.duration(value, f"{where} '{name}'")
        return table

    def duration(self, value: Any, where: str) -> float:
        try:
            return parse_duration(value)
        except ValueError as e:
            raise self.fail(where, str(e)) from None

    def matchers(self, doc: dict[str, Any], key: str, where: str) -> tuple[Matcher, ...]:
        texts = self.strings(doc, key, where, ())
        try:
            matchers = tuple(parse_matcher(t) for t in texts)
        except MatcherError as e:
            raise self.fail(where, f"'{key}': {e}") from None
        # Routing and inhibition run on every alert's path, an alarm's too: a pattern that
        # can backtrack for seconds is refused here, at start-up, not met at the first alarm.
        for m in matchers:
            if m.op in (Op.RE, Op.NRE) and (problem := pattern_problem(m.value, in_policy=True)):
                raise self.fail(where, f"'{key}': {m}: {problem}")
        return matchers
