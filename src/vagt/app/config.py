"""The one configuration object: read once at start from a TOML file and VAGT_* variables.

The environment wins over the file. Every error names the setting and says what is allowed.
No other module reads os.environ.
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vagt.tomlfile import read_toml


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the setting."""


# One line per event, key=value after the level and logger (the alarm lane's process too).
LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


@dataclass(frozen=True)
class MqttConfig:
    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = "vagt-engine"          # lanes add "-bulk" and "-alarm": one session each
    topic_root: str = "vagt/v1"             # topics are {topic_root}/dev/{device_id}/{channel}
    share_group: str = ""                   # "" = plain subscription; else $share/{group}/...
    protocol: int = 5                       # 5, or 4 for MQTT 3.1.1 brokers (the demo's amqtt)
    session_expiry_s: int = 7 * 24 * 3600   # how long the broker keeps our queue while we are away
    receive_maximum: int = 20000            # unacknowledged messages in flight per lane (MQTT 5)
    keepalive_s: int = 30
    ca_file: str = ""                       # for mqtts:// with a private CA

    @property
    def parsed(self) -> urllib.parse.SplitResult:
        return urllib.parse.urlsplit(self.url)

    @property
    def host(self) -> str:
        return self.parsed.hostname or "127.0.0.1"

    @property
    def tls(self) -> bool:
        return self.parsed.scheme == "mqtts"

    @property
    def port(self) -> int:
        return self.parsed.port or (8883 if self.tls else 1883)

    @property
    def username(self) -> str | None:
        u = self.parsed.username
        return urllib.parse.unquote(u) if u else None

    @property
    def password(self) -> str | None:
        p = self.parsed.password
        return urllib.parse.unquote(p) if p else None


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = ""                 # "" = run an embedded PostgreSQL in data_dir
    pool_min: int = 2
    pool_max: int = 8
    # How long a lane's transaction (or a rules tick) may take before its connection is cut
    # and it is tried again on a new one (see vagt.app.watchdog): a database that stops
    # answering would hold it for ever. Generous: a bulk batch of 10,000 messages commits in
    # a second or two; cut short, it would be tried again, and again.
    transaction_timeout_s: float = 120.0
    # ... the alarm lane's, whose transactions hold a few alarms: an alarm waits this long at
    # most on a database gone silent before it is tried on a new connection.
    alarm_transaction_timeout_s: float = 10.0


@dataclass(frozen=True)
class IngestConfig:
    max_payload_bytes: int = 64 * 1024
    # messages per bulk transaction: 10,000 drained 200,000 messages at 0.81-0.85 of the
    # bare consumer against 0.68-0.84 at 5,000, in alternating runs (per-batch costs)
    bulk_batch_max: int = 10000
    bulk_batch_wait_ms: int = 50        # how long a bulk batch may wait to fill
    # ... and while the lane drains a backlog (its messages old by their devices' clocks):
    # committing fewer, bigger batches then costs less per message (see LaneSpec)
    bulk_backlog_wait_ms: int = 250
    # Alarms are committed as soon as they arrive: one at a time when they come one at a
    # time. A burst (a region's devices back after an outage, sending what they held) is
    # committed up to this many at once: 2,000 alarms at once were committed in 1.0-1.1 s
    # with 500, against 1.5 s with 50 (`benchmarks/alarm_burst.py`); a fresh alarm behind
    # them waited 0.55-0.64 s at most against 0.9-1.0 s.
    alarm_batch_max: int = 500
    max_future_skew_s: int = 300        # a reading more than this far in the future is bad_time
    # The alarm lane in a process of its own (see vagt.app.alarm_process): a bulk lane
    # draining a backlog then holds no lock an alarm needs, the GIL included.
    alarm_process: bool = True
    # ... which takes in each device as its first alarm comes; after this many more than it
    # was loaded with, it loads its pipeline again between alarms (the devices with an open
    # rule alert, the others as they alarm again), so that its memory and its work per alarm
    # stay bounded however long it runs (see AlarmPipeline). 0: never.
    alarm_lane_renew_after: int = 2000
    # The bulk lane's MQTT session in a process of its own (see vagt.app.receiver): paho's
    # packet handling then shares no GIL with the batches' work.
    bulk_receiver_process: bool = True
    # The niceness (0-19) of the bulk lane's thread and its receiver process: on a machine
    # whose CPU a backlog keeps busy, the alarm lane's process runs first (see
    # vagt.app.receiver); 0 gives them the same priority. 19, not 10: alarm p99 during
    # 200,000-message drains 45-51 ms in 4 runs of 5 (161 in one) against 59-253 ms at 10,
    # and the drain as fast (0.77-0.83 of the bare consumer against 0.78-0.81).
    bulk_nice: int = 19


@dataclass(frozen=True)
class Config:
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108            # 0 = no metrics endpoint
    rules: str = ""                     # a rules file or folder; "" = the built-in default rules
    rules_tick_s: float = 15.0          # how often deadlines and the absence sweep are checked
    catalogue: str = ""                 # the approved models (TOML); "" = the built-in catalogue
    data_dir: str = "var"               # embedded database and broker state
    alerts: str = ""                    # the alert policy (TOML); "" = the built-in policy
    api_host: str = "127.0.0.1"         # the operator REST API of `vagt run` / `vagt api`
    api_port: int = 0                   # 0 = `vagt run` serves no API
    # The secret devices' broker passwords are derived from (`vagt devices broker-acl`);
    # kept out of repr so it never reaches a log.
    device_secret: str = field(default="", repr=False)


# Environment variable -> (section, key). Section "" is the top level.
ENV_SETTINGS: dict[str, tuple[str, str]] = {
    "VAGT_MQTT_URL": ("mqtt", "url"),
    "VAGT_MQTT_CLIENT_ID": ("mqtt", "client_id"),
    "VAGT_MQTT_TOPIC_ROOT": ("mqtt", "topic_root"),
    "VAGT_MQTT_SHARE_GROUP": ("mqtt", "share_group"),
    "VAGT_MQTT_PROTOCOL": ("mqtt", "protocol"),
    "VAGT_MQTT_CA_FILE": ("mqtt", "ca_file"),
    "VAGT_DATABASE_URL": ("database", "url"),
    "VAGT_DATABASE_TRANSACTION_TIMEOUT_S": ("database", "transaction_timeout_s"),
    "VAGT_DATABASE_ALARM_TRANSACTION_TIMEOUT_S": ("database", "alarm_transaction_timeout_s"),
    "VAGT_METRICS_PORT": ("", "metrics_port"),
    "VAGT_METRICS_HOST": ("", "metrics_host"),
    "VAGT_RULES": ("", "rules"),
    "VAGT_RULES_TICK_S": ("", "rules_tick_s"),
    "VAGT_CATALOGUE": ("", "catalogue"),
    "VAGT_DATA_DIR": ("", "data_dir"),
    "VAGT_DEVICE_SECRET": ("", "device_secret"),
    "VAGT_MAX_PAYLOAD_BYTES": ("ingest", "max_payload_bytes"),
    "VAGT_ALARM_PROCESS": ("ingest", "alarm_process"),
    "VAGT_ALARM_LANE_RENEW_AFTER": ("ingest", "alarm_lane_renew_after"),
    "VAGT_BULK_RECEIVER_PROCESS": ("ingest", "bulk_receiver_process"),
    "VAGT_BULK_NICE": ("ingest", "bulk_nice"),
    "VAGT_BULK_BATCH_MAX": ("ingest", "bulk_batch_max"),
    "VAGT_BULK_BATCH_WAIT_MS": ("ingest", "bulk_batch_wait_ms"),
    "VAGT_BULK_BACKLOG_WAIT_MS": ("ingest", "bulk_backlog_wait_ms"),
    "VAGT_ALERTS": ("", "alerts"),
    "VAGT_API_HOST": ("", "api_host"),
    "VAGT_API_PORT": ("", "api_port"),
}

# Variables whose default, when unset, is something vagt brings along (an embedded database, a
# local broker, the built-in rules, catalogue or alert policy, no device secret). Set but
# empty, they are a secret or template that failed to render, not a wish for that default:
# an empty VAGT_DATABASE_URL would start an embedded database nobody reads. Empty elsewhere
# (VAGT_MQTT_SHARE_GROUP="": no shared subscription) means unset, as it always did.
NOT_EMPTY = frozenset({"VAGT_DATABASE_URL", "VAGT_MQTT_URL", "VAGT_RULES", "VAGT_CATALOGUE",
                       "VAGT_ALERTS", "VAGT_DEVICE_SECRET"})

_SECTIONS: dict[str, type[Any]] = {
    "mqtt": MqttConfig,
    "database": DatabaseConfig,
    "ingest": IngestConfig,
}


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), then the VAGT_* variables over it, and validate."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_toml(Path(path), ConfigError, "configuration file")
    for var, (section, key) in ENV_SETTINGS.items():
        if var in env and env[var].strip() == "" and var in NOT_EMPTY:
            raise ConfigError(f"{var} is set but empty; give it a value, or unset it for "
                              "the default")
        if var in env and env[var] != "":
            target = raw.setdefault(section, {}) if section else raw
            if not isinstance(target, dict):
                raise ConfigError(f"[{section}] in the configuration file must be a table")
            target[key] = env[var]
    return _build(raw)


def _build(raw: dict[str, Any]) -> Config:
    sections: dict[str, Any] = {}
    top: dict[str, Any] = {}
    top_fields = {f.name: f for f in dataclasses.fields(Config) if f.name not in _SECTIONS}
    for key, value in raw.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] must be a table of settings")
            sections[key] = _build_section(key, _SECTIONS[key], value)
        elif key in top_fields:
            top[key] = _coerce(key, top_fields[key], value)
        else:
            allowed = ", ".join(sorted([*top_fields, *_SECTIONS]))
            raise ConfigError(f"unknown setting '{key}'; allowed: {allowed}")
    config = Config(**sections, **top)
    _validate(config)
    return config


def _build_section(name: str, cls: type[Any], values: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"unknown setting '{name}.{key}'; allowed: {', '.join(sorted(fields))}"
            )
        kwargs[key] = _coerce(f"{name}.{key}", fields[key], value)
    return cls(**kwargs)


# Each setting's variable, so that a message names both, whichever of them was given.
_VARIABLES = {f"{section}.{key}" if section else key: var
              for var, (section, key) in ENV_SETTINGS.items()}


def _named(name: str) -> str:
    variable = _VARIABLES.get(name)
    return f"'{name}' ({variable})" if variable else f"'{name}'"


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _coerce(name: str, f: dataclasses.Field[Any], value: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind == "int":
        if isinstance(value, bool):
            raise ConfigError(f"setting {_named(name)} must be a whole number, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"setting {_named(name)} must be a whole number, got {value!r}") from None
    if kind == "float":
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"setting {_named(name)} must be a number, got {value!r}") from None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ConfigError(f"setting {_named(name)} must be true or false, got {value!r}")
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"setting {_named(name)} must be a string, got {value!r}")
        return value
    return value


def _validate(c: Config) -> None:
    # first: a password that breaks the URL would make every other check below misread it
    # (a bare '%' in an MQTT password is read as itself, as it always was)
    _check_userinfo("mqtt.url", "VAGT_MQTT_URL", c.mqtt.url, "/?#", bare_percent=False)
    # libpq takes the user and password up to the first '@' (Python's urlsplit, the last)
    _check_userinfo("database.url", "VAGT_DATABASE_URL", c.database.url, "/?#@")
    scheme = c.mqtt.parsed.scheme
    if scheme not in ("mqtt", "mqtts"):
        raise ConfigError(
            f"setting 'mqtt.url' (VAGT_MQTT_URL) must start with mqtt:// or mqtts://, "
            f"got {redact_url(c.mqtt.url)!r}"
        )
    try:
        _ = c.mqtt.port
    except ValueError:
        raise ConfigError(f"setting 'mqtt.url' (VAGT_MQTT_URL) has an invalid port: "
                          f"{redact_url(c.mqtt.url)!r}") from None
    if not c.mqtt.parsed.hostname:
        raise ConfigError("setting 'mqtt.url' (VAGT_MQTT_URL) names no host")
    if c.mqtt.protocol not in (4, 5):
        raise ConfigError(f"setting 'mqtt.protocol' must be 5 (MQTT 5) or 4 (MQTT 3.1.1), "
                          f"got {c.mqtt.protocol}")
    if not 1 <= c.mqtt.receive_maximum <= 65535:
        raise ConfigError("setting 'mqtt.receive_maximum' must be from 1 to 65535")
    if not c.mqtt.topic_root or "+" in c.mqtt.topic_root or "#" in c.mqtt.topic_root:
        raise ConfigError("setting 'mqtt.topic_root' must be a topic without wildcards")
    if c.database.url and urllib.parse.urlsplit(c.database.url).scheme not in (
        "postgresql", "postgres"
    ):
        raise ConfigError(
            f"setting 'database.url' (VAGT_DATABASE_URL) must start with postgresql://, "
            f"got {redact_url(c.database.url)!r}"
        )
    if c.database.url:
        _check_database_url(c.database.url)
    if not 0.05 <= c.rules_tick_s <= 3600:
        raise ConfigError("setting 'rules_tick_s' (VAGT_RULES_TICK_S) must be from 0.05 to "
                          f"3600 seconds, got {c.rules_tick_s}")
    if not 0 <= c.metrics_port <= 65535:
        raise ConfigError(
            f"setting 'metrics_port' (VAGT_METRICS_PORT) must be a port from 0 to 65535, "
            f"got {c.metrics_port}"
        )
    if not 0 <= c.api_port <= 65535:
        raise ConfigError(f"setting 'api_port' (VAGT_API_PORT) must be a port from 0 to 65535, "
                          f"got {c.api_port}")
    if c.alerts and not Path(c.alerts).is_file():
        raise ConfigError(f"setting 'alerts' (VAGT_ALERTS): {c.alerts} is not a file")
    if c.rules and not Path(c.rules).exists():
        raise ConfigError(f"setting 'rules' (VAGT_RULES): {c.rules} does not exist")
    if c.catalogue and not Path(c.catalogue).is_file():
        raise ConfigError(f"setting 'catalogue' (VAGT_CATALOGUE): {c.catalogue} is not a file")
    if not 0 <= c.ingest.bulk_nice <= 19:
        raise ConfigError("setting 'ingest.bulk_nice' (VAGT_BULK_NICE) must be a niceness "
                          f"from 0 to 19, got {c.ingest.bulk_nice}")
    env_of = {setting: var for var, setting in ENV_SETTINGS.items()}
    for name in ("bulk_batch_wait_ms", "bulk_backlog_wait_ms"):
        if not 0 <= (value := getattr(c.ingest, name)) <= 10_000:
            raise ConfigError(f"setting 'ingest.{name}' ({env_of[('ingest', name)]}) must be "
                              f"from 0 to 10000 ms, got {value}")
    for name in ("transaction_timeout_s", "alarm_transaction_timeout_s"):
        if not 1 <= (value := getattr(c.database, name)) <= 86_400:
            raise ConfigError(f"setting 'database.{name}' ({env_of[('database', name)]}) must "
                              f"be from 1 to 86400 seconds, got {value}")
    for name in ("max_payload_bytes", "bulk_batch_max", "alarm_batch_max"):
        if (value := getattr(c.ingest, name)) < 1:
            var = env_of.get(("ingest", name))
            raise ConfigError(f"setting 'ingest.{name}'" + (f" ({var})" if var else "") +
                              f" must be at least 1, got {value}")
    if c.ingest.alarm_lane_renew_after < 0:
        raise ConfigError("setting 'ingest.alarm_lane_renew_after' (VAGT_ALARM_LANE_RENEW_AFTER) "
                          f"must be 0 (never) or more, got {c.ingest.alarm_lane_renew_after}")


def _userinfo(url: str) -> tuple[int, int] | None:
    """Where the user and password are: the authority's part before its last '@'. A
    password with an unencoded '/', '?' or '#' cuts the authority short: then they end at
    the last '@' of the path, or of the query before its first '=' (an '@' in a parameter,
    `?application_name=vagt@node1`, is no user's), or of the whole when what is left of
    the authority reads as no host[:port]."""
    start = url.find("//")
    if start < 0:
        return None
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        return start + 2, start + 2 + netloc.rfind("@")
    after = start + 2 + len(netloc)            # where the path begins
    if "@" in parts.path:
        return start + 2, after + parts.path.rfind("@")
    query = parts.query.split("=", 1)[0]
    if "@" in query:
        return start + 2, url.index("?", after) + 1 + query.rfind("@")
    _, colon, port = netloc.rpartition(":")
    at = url.rfind("@")
    if at > start and colon and not port.isdigit():
        return start + 2, at
    return None


# A password given as a parameter: `?password=...` in a URL, `password=...` in the keyword
# form libpq also reads.
_PASSWORD_PARAMETER = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]+)",
                                 re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with everything after the user name up to its '@' replaced, and any password
    parameter's value, for logs and error messages: a password that does not parse as one
    is hidden too."""
    url = _PASSWORD_PARAMETER.sub(r"\1***", url)
    span = _userinfo(url)
    if span is None:
        return url
    start, at = span
    user, colon, _ = url[start:at].partition(":")
    if not colon and any(ch in user for ch in "/?#@%"):
        user = "***"   # no ':' yet something that breaks the URL: take none of it for a name
    return url[:start] + user + (":***" if colon else "") + url[at:]


_BARE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODE = ("percent-encode the user and password (Python: urllib.parse.quote(password, "
           "safe='')), e.g. '/' as %2F, '@' as %40, '%' as %25")


def _check_userinfo(setting: str, var: str, url: str, unsafe: str,
                    bare_percent: bool = True) -> None:
    """Refuse a user or password that the URL cannot carry as it is; never quoting it."""
    span = _userinfo(url)
    if span is None:
        return
    info = url[span[0]:span[1]]
    if any(ch in info for ch in unsafe) or (bare_percent and _BARE_PERCENT.search(info)):
        shown = "', '".join(unsafe)
        percent = " or a '%' not followed by two hex digits" if bare_percent else ""
        raise ConfigError(f"setting '{setting}' ({var}): the user or password holds '{shown}'"
                          f"{percent}, which break the URL; {_ENCODE}")


def _check_database_url(url: str) -> None:
    """The URL as libpq reads it: its own error for a bad one quotes the bad part, which may
    be the password, in a traceback at start."""
    import psycopg.conninfo

    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        raise ConfigError("setting 'database.url' (VAGT_DATABASE_URL) is not a PostgreSQL "
                          f"URL libpq can read: {redact_url(url)!r}; {_ENCODE}") from None
