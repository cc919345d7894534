"""Configuration: TOML file, VAGT_* variables over it, and errors that name the setting."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import pytest

from vagt.app.config import ENV_SETTINGS, ConfigError, load_config, redact_url

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_need_no_file_and_no_environment():
    c = load_config(None, env={})
    assert c.mqtt.url == "mqtt://127.0.0.1:1883"
    assert c.database.url == ""  # the embedded database


def test_environment_wins_over_the_file(tmp_path: Path):
    f = tmp_path / "vagt.toml"
    f.write_text('metrics_port = 9000\n[mqtt]\nurl = "mqtt://file-host:1883"\n')
    c = load_config(f, env={"VAGT_MQTT_URL": "mqtts://u:p%40ss@env-host:8884",
                            "VAGT_METRICS_PORT": "9100"})
    assert c.mqtt.host == "env-host" and c.mqtt.port == 8884 and c.mqtt.tls
    assert c.mqtt.username == "u" and c.mqtt.password == "p@ss"
    assert c.metrics_port == 9100


def test_file_settings_apply_when_the_environment_is_silent(tmp_path: Path):
    f = tmp_path / "vagt.toml"
    f.write_text('[database]\nurl = "postgresql://db/vagt"\n[ingest]\nbulk_batch_max = 100\n')
    c = load_config(f, env={})
    assert c.database.url == "postgresql://db/vagt"
    assert c.ingest.bulk_batch_max == 100


@pytest.mark.parametrize(("env", "message"), [
    ({"VAGT_MQTT_URL": "http://x"}, "'mqtt.url' (VAGT_MQTT_URL) must start with mqtt://"),
    ({"VAGT_DATABASE_URL": "mysql://x"}, "'database.url' (VAGT_DATABASE_URL) must start with"),
    ({"VAGT_METRICS_PORT": "ninety"},
     "'metrics_port' (VAGT_METRICS_PORT) must be a whole number, got 'ninety'"),
    ({"VAGT_METRICS_PORT": "70000"}, "'metrics_port' (VAGT_METRICS_PORT) must be a port"),
    ({"VAGT_RULES": "/no/such/rules.toml"}, "'rules' (VAGT_RULES): /no/such/rules.toml"),
    ({"VAGT_ALARM_PROCESS": "maybe"},
     "'ingest.alarm_process' (VAGT_ALARM_PROCESS) must be true or false"),
    ({"VAGT_BULK_RECEIVER_PROCESS": "2"},
     "'ingest.bulk_receiver_process' (VAGT_BULK_RECEIVER_PROCESS) must be "
     "true or false"),
    ({"VAGT_BULK_NICE": "20"},
     "'ingest.bulk_nice' (VAGT_BULK_NICE) must be a niceness from 0 to 19, got 20"),
    ({"VAGT_BULK_BATCH_MAX": "0"}, "'ingest.bulk_batch_max' (VAGT_BULK_BATCH_MAX) must be at "
                                   "least 1, got 0"),
    ({"VAGT_BULK_BATCH_WAIT_MS": "-1"}, "'ingest.bulk_batch_wait_ms' (VAGT_BULK_BATCH_WAIT_MS) "
                                        "must be from 0 to 10000 ms, got -1"),
    # a secret that failed to render: not the embedded database nobody reads
    ({"VAGT_DATABASE_URL": ""}, "VAGT_DATABASE_URL is set but empty; give it a value, or "
                                "unset it for the default"),
    ({"VAGT_MQTT_URL": "  "}, "VAGT_MQTT_URL is set but empty"),
    ({"VAGT_ALERTS": ""}, "VAGT_ALERTS is set but empty"),
    ({"VAGT_RULES_TICK_S": "fast"},
     "'rules_tick_s' (VAGT_RULES_TICK_S) must be a number, got 'fast'"),
    ({"VAGT_BULK_BACKLOG_WAIT_MS": "10001"},
     "'ingest.bulk_backlog_wait_ms' (VAGT_BULK_BACKLOG_WAIT_MS) must be from 0 to 10000 ms, "
     "got 10001"),
])
def test_invalid_settings_stop_start_up_naming_the_setting(env, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, env=env)
    assert message in str(e.value)


@pytest.mark.parametrize(("value", "expected"), [
    ("false", False), ("no", False), ("0", False), ("TRUE", True), ("yes", True)])
def test_the_engines_child_processes_are_switched_off_from_the_environment(value, expected):
    default = load_config(None, env={}).ingest
    assert default.alarm_process is True and default.bulk_receiver_process is True
    assert load_config(None, env={"VAGT_ALARM_PROCESS": value}).ingest.alarm_process \
        is expected
    assert load_config(None, env={"VAGT_BULK_RECEIVER_PROCESS": value}) \
        .ingest.bulk_receiver_process is expected


def test_an_unknown_setting_in_the_file_is_refused(tmp_path: Path):
    f = tmp_path / "vagt.toml"
    f.write_text('[mqtt]\nurll = "mqtt://x"\n')
    with pytest.raises(ConfigError, match="unknown setting 'mqtt.urll'"):
        load_config(f, env={})


def test_a_password_never_appears_in_an_error(tmp_path: Path):
    with pytest.raises(ConfigError) as e:
        load_config(None, env={"VAGT_MQTT_URL": "tcp://user:hunter2@host"})
    assert "hunter2" not in str(e.value)
    assert redact_url("mqtt://u:hunter2@h:1") == "mqtt://u:***@h:1"


def test_an_empty_share_group_still_means_no_shared_subscription():
    assert load_config(None, env={"VAGT_MQTT_SHARE_GROUP": ""}).mqtt.share_group == \
        load_config(None, env={}).mqtt.share_group


@pytest.mark.parametrize("password", ["pa/ss", "pa?ss", "pa#ss", "p@ss", "50%off", "p:w",
                                      "2024/Kq7", "2024?x", "a@b@c"])
def test_a_password_that_breaks_the_url_is_hidden_all_the_same(password: str):
    for url in (f"mqtt://vagt:{password}@broker:1883", f"postgresql://vagt:{password}@db/vagt"):
        redacted = redact_url(url)
        assert password not in redacted
        assert redacted.startswith(url.split("//")[0] + "//vagt:***@")


@pytest.mark.parametrize("password", ["pa/ss", "pa?ss", "pa#ss", "p@ss", "50%off"])
def test_a_database_password_not_percent_encoded_is_refused_without_quoting_it(password: str):
    with pytest.raises(ConfigError, match="percent-encode") as e:
        load_config(None, env={"VAGT_DATABASE_URL": f"postgresql://vagt:{password}@db/vagt"})
    assert "VAGT_DATABASE_URL" in str(e.value)
    assert password not in str(e.value)


def test_a_percent_encoded_database_password_is_taken():
    url = "postgresql://vagt:" + urllib.parse.quote("p@ss/50%off#", safe="") + "@db/vagt"
    assert load_config(None, env={"VAGT_DATABASE_URL": url}).database.url == url


def test_an_mqtt_password_that_breaks_the_url_is_refused_without_quoting_it():
    with pytest.raises(ConfigError, match="percent-encode") as e:
        load_config(None, env={"VAGT_MQTT_URL": "mqtt://vagt:pa#ss@broker:1883"})
    assert "pa#ss" not in str(e.value)


@pytest.mark.parametrize("url", [
    "postgresql://vagt@db.example/vagt?password=Hunter2Secret&sslmode=bogus%",
    "host=db password=Hunter2Secret dbname=vagt",
])
def test_a_password_given_as_a_parameter_never_appears_in_an_error(url: str):
    with pytest.raises(ConfigError) as e:
        load_config(None, env={"VAGT_DATABASE_URL": url})
    assert "Hunter2Secret" not in str(e.value) and "password=***" in str(e.value)


@pytest.mark.parametrize("url", [
    "postgresql://db.example/vagt?user=vagt@prodserver&password=abc",
    "postgresql://vagt:pw@db.example/vagt?application_name=vagt@node1",
])
def test_an_at_sign_in_a_url_parameter_is_no_users_and_the_url_is_taken(url: str):
    assert load_config(None, env={"VAGT_DATABASE_URL": url}).database.url == url
    assert "abc" not in redact_url(url) and "pw@" not in redact_url(url)


def _as_documented(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_the_readme_names_every_variable_with_its_file_setting_and_default():
    """An ops engineer configures from the README's table: each VAGT_* variable the
    configuration reads is a row of it, beside its file setting and the default the code has
    (VAGT_METRICS_HOST was read and had no row)."""
    rows = re.findall(r"^\| `(VAGT_[A-Z_]+)` \| `([a-z_.]+)` \| ([^|]*) \|",
                      README.read_text(), re.MULTILINE)
    documented = {var: (setting, default.strip()) for var, setting, default in rows}
    assert set(documented) == set(ENV_SETTINGS)
    defaults = load_config(None, env={})
    for var, (section, key) in ENV_SETTINGS.items():
        setting, shown = documented[var]
        assert setting == (f"{section}.{key}" if section else key), var
        value = getattr(getattr(defaults, section) if section else defaults, key)
        expected = ("*(empty)*", "built-in") if value == "" else (f"`{_as_documented(value)}`",)
        assert shown in expected, f"{var}: the README says {shown}, the default is {value!r}"
