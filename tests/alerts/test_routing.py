"""The routing tree and the policy file: matchers, first match or continue, inheritance, errors."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from vagt.alerts import cli
from vagt.alerts.matchers import MatcherError, alternatives, parse_matcher
from vagt.alerts.policy import PolicyError, load_policy
from vagt.alerts.routing import route_alert

TREE = """
[escalation.time_to_claim]
1 = "2m"
2 = "10m"
3 = "1h"
4 = "4h"

[route]
queue = "technical"

[[route.routes]]
name = "alarms"
matchers = ['rule="personal_alarm"']
queue = "emergency"
priority = 1

[[route.routes]]
name = "aarhus_medication"
matchers = ['code=~"dose\\\\..*"', 'municipality="Aarhus"']
queue = "home_care_aarhus"
priority = 2
time_to_claim = "5m"
continue = true

[[route.routes]]
name = "medication"
matchers = ['code=~"dose\\\\..*"']
queue = "home_care"
priority = 2

  [[route.routes.routes]]
  name = "medication_night"
  matchers = ['shift="night"']
  priority = 3

[[route.routes]]
name = "not_reached"
matchers = ['code=~"dose\\\\..*"']
queue = "never"
"""


@pytest.fixture
def tree(tmp_path: Path):
    p = tmp_path / "alerts.toml"
    p.write_text(TREE)
    return load_policy(p)


def where(policy, **labels):
    return route_alert(policy.root, labels, default_queue="rule_queue", default_priority=4,
                       time_to_claim=policy.time_to_claim_s)


def test_the_first_matching_route_sets_queue_priority_and_its_priority_time_to_claim(tree):
    d = where(tree, rule="personal_alarm", code="alarm.fall")
    assert (d.route, d.queue, d.priority, d.time_to_claim_s, d.extra_queues) == (
        "alarms", "emergency", 1, 120.0, ())


def test_no_matching_route_leaves_the_root_queue_and_the_rules_priority(tree):
    d = where(tree, rule="battery_low")
    assert (d.route, d.queue, d.priority, d.time_to_claim_s) == ("root", "technical", 4, 4 * 3600)


def test_continue_lists_the_alert_in_the_next_matching_route_as_well(tree):
    d = where(tree, rule="sequence", code="dose.missed", municipality="Aarhus")
    assert (d.route, d.queue, d.time_to_claim_s, d.extra_queues) == (
        "aarhus_medication", "home_care_aarhus", 300.0, ("home_care",))


def test_a_route_without_continue_stops_the_search(tree):
    d = where(tree, rule="sequence", code="dose.missed", municipality="Herning")
    assert (d.queue, d.extra_queues) == ("home_care", ())


def test_a_child_route_inherits_the_queue_and_overrides_the_priority(tree):
    d = where(tree, rule="sequence", code="dose.missed", shift="night")
    assert (d.route, d.queue, d.priority, d.time_to_claim_s) == (
        "medication_night", "home_care", 3, 3600.0)


def test_the_root_without_a_queue_keeps_the_rules_queue():
    policy = load_policy(None)
    d = route_alert(policy.root, {"rule": "something_new"}, default_queue="rule_queue",
                    default_priority=5, time_to_claim=policy.time_to_claim_s)
    assert (d.queue, d.priority) == ("rule_queue", 5)


@pytest.mark.parametrize(("text", "labels", "hit"), [
    ('type="gateway"', {"type": "gateway"}, True),
    ('type="gateway"', {"type": "gateway2"}, False),
    ('type!="gateway"', {}, True),
    ('code=~"alarm\\\\..*"', {"code": "alarm.fall"}, True),
    ('code=~"alarm"', {"code": "alarm.fall"}, False),   # anchored, as in Alertmanager
    ('code!~"alarm\\\\..*"', {"code": "fault.jam"}, True),
    ('gateway_id!=""', {}, False),
    ("gateway_id=GW-1", {"gateway_id": "GW-1"}, True),   # unquoted, as typed in a shell
])
def test_a_matcher_matches_as_in_alertmanager(text, labels, hit):
    assert parse_matcher(text).matches(labels) is hit


def test_a_regular_expression_that_only_lists_words_is_what_sql_filters_on():
    """Inhibition sources are narrowed in SQL by such a list (the rest is decided in Python):
    it must allow exactly what the expression allows."""
    ms = [parse_matcher(t) for t in ('rule=~"device_silent|device_offline"', 'type="gateway"',
                                     'code=~"alarm\\\\..*"', 'model=~"A.B"', 'x!~"a|b"')]
    words = alternatives(ms)
    assert words == {"rule": ["device_silent", "device_offline"]}
    for value in ("device_silent", "device_offline", "device_silent2", "device", ""):
        assert (value in words["rule"]) is ms[0].matches({"rule": value})


@pytest.mark.parametrize(("text", "message"), [
    ("type", "is not a matcher"),
    ('code=~"("', "not a valid regular expression"),
])
def test_a_bad_matcher_is_refused_saying_why(text, message):
    with pytest.raises(MatcherError, match=message):
        parse_matcher(text)


@pytest.mark.parametrize(("toml", "message"), [
    ("[route]\nmatchers = ['a=\"b\"']", "the root route matches every alert"),
    ("[[route.routes]]\nname = 'x'\npriority = 9", r"\[route\].routes\[0\] 'x': 'priority' "
                                                    "must be 1 to 5, got 9"),
    ("[[route.routes]]\nname = 'x'\nmatchers = ['a=~\"(\"']", "'x': 'matchers': "),
    ("[[route.routes]]\nname = 'x'\nqueue = 3", "'queue' must be a string, got 3"),
    ("reopen_window = 'soon'", "reopen_window: 'soon' is not a duration"),
    ("max_silence = '365d'", "max_silence: must be more than 0 and at most 30d"),
    ("max_silence = 'forever'", "max_silence: 'forever' is not a duration"),
    ("[[inhibit]]\nname = 'i'\nsource = ['a=\"b\"']", "'i': needs both 'source' and 'target'"),
    ("[escalation.time_to_claim]\n7 = '1m'", "'7' is not a priority"),
    ("[escalation.time_to_acknowledge]\n1 = 'soon'",
     r"\[escalation.time_to_acknowledge\] '1': 'soon' is not a duration"),
    ("[escalation.time_to_claim]\n1 = 'never'", "'never' is not a duration"),
    ("[[delivery.webhook]]\nname = 'cc'\nurl = 'ftp://x'", "'url' must start with http"),
    # every event a dead letter at its send (the name cannot be looked up), not waiting
    ("[[delivery.webhook]]\nname = 'cc'\nurl = 'https://callcentre..example.dk/hook'",
     "'url' has no host name vagt can send to .* 'https://callcentre..example.dk/hook'"),
    ("[[delivery.webhook]]\nname = 'cc'\nurl = 'https:///hook'", "'url' has no host name"),
    ("[[delivery.webhook]]\nname = 'cc'\nurl = 'http://x'\nsecret_env = 'NOPE'",
     "the variable NOPE named by 'secret_env' is not set"),
    ("colour = 'red'", "unknown setting 'colour'"),
])
def test_a_bad_policy_names_the_file_the_entry_and_the_field(tmp_path, toml, message):
    p = tmp_path / "alerts.toml"
    p.write_text(toml)
    with pytest.raises(PolicyError, match=message) as e:
        load_policy(p, env={})
    assert str(e.value).startswith(f"{p}: ")


@pytest.mark.parametrize("url", ["https://cc:hooksecret@callcentre.example:443/hook",
                                 "https://hooksecret@callcentre.example/hook"])
def test_a_webhook_url_holding_a_user_or_password_is_refused_without_repeating_it(tmp_path,
                                                                                   url):
    """vagt sends no credentials of the URL (it signs with the secret): the name lookup of
    `cc:hooksecret@callcentre.example` would carry the password to the resolver instead."""
    p = tmp_path / "alerts.toml"
    p.write_text(f"[[delivery.webhook]]\nname = 'cc'\nurl = '{url}'\nsecret_env = 'S'")
    with pytest.raises(PolicyError) as e:
        load_policy(p, env={"S": "a signing secret of 32 characters"})
    assert "'url' holds a user name or password" in str(e.value)
    assert "hooksecret" not in str(e.value)


@pytest.mark.parametrize(("matcher", "why"), [
    ('device_id=~"(OXI-.+)+"', "exponential time"),
    ('code!~".*.*.*x"', "at most 2"),
    ('device_id=~"(?P<a>x)(?P=a)"', "a back-reference ((?P=name)) cannot be used in an alert policy"),
])
def test_a_policy_pattern_that_could_stall_every_alert_is_refused_at_load(tmp_path, matcher, why):
    for toml in (f"[[route.routes]]\nname = 'slow'\nmatchers = ['{matcher}']",
                 f"[[inhibit]]\nname = 'slow'\nsource = ['{matcher}']\ntarget = ['a=\"b\"']"):
        p = tmp_path / "alerts.toml"
        p.write_text(toml)
        with pytest.raises(PolicyError) as e:
            load_policy(p, env={})
        assert "'slow'" in str(e.value) and why in str(e.value)


def test_a_policy_may_look_around_and_set_flags_where_a_silence_may_not(tmp_path):
    p = tmp_path / "alerts.toml"
    p.write_text("[[route.routes]]\nname = 'not-tests'\nqueue = 'q'\n"
                 "matchers = ['device_id=~\"(?!TEST-)(?i:oxi)-.*\"']")
    policy = load_policy(p, env={})
    assert [where(policy, device_id=d).queue for d in ("OXI-1", "oxi-2", "TEST-OXI-3")] == \
        ["q", "q", "rule_queue"]


def test_the_time_to_acknowledge_is_set_per_priority_and_never_takes_one_away(tmp_path):
    assert load_policy(None).time_to_acknowledge_s == {1: 600.0, 2: 1800.0}
    p = tmp_path / "alerts.toml"
    p.write_text("[escalation.time_to_acknowledge]\n1 = '5m'\n2 = 'never'\n3 = '2h'")
    assert load_policy(p, env={}).time_to_acknowledge_s == {1: 300.0, 3: 7200.0}


def test_a_centres_max_silence_is_the_longest_a_silence_may_last(tmp_path):
    p = tmp_path / "alerts.toml"
    p.write_text("max_silence = '12h'")
    assert (load_policy(p).max_silence_s, load_policy(None).max_silence_s) == (
        12 * 3600, 3 * 86400)


def test_a_webhook_secret_comes_from_the_named_variable(tmp_path):
    p = tmp_path / "alerts.toml"
    p.write_text("[[delivery.webhook]]\nname = 'cc'\nurl = 'http://127.0.0.1:9/hook'\n"
                 "secret_env = 'CC_SECRET'")
    policy = load_policy(p, env={"CC_SECRET": "0123456789abcdef-secret"})
    assert policy.delivery.webhooks[0].secret == b"0123456789abcdef-secret"
    assert "0123456789abcdef" not in repr(policy)


def route_cli(policy_path: str, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="vagt")
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["alerts", "route", *argv])
    result: int = args.policy_handler(args, policy_path)
    return result


def test_vagt_alerts_route_prints_queue_priority_time_to_claim_and_route(tmp_path, capsys):
    p = tmp_path / "alerts.toml"
    p.write_text(TREE)
    assert route_cli(str(p), "code=dose.missed", "municipality=Aarhus") == 0
    assert capsys.readouterr().out.splitlines() == [
        "queue:         home_care_aarhus",
        "priority:      2",
        "time to claim: 5m",
        "route:         aarhus_medication",
        "also listed in: home_care (continue)",
    ]


def test_vagt_alerts_route_with_the_built_in_policy_sends_alarms_to_emergency(capsys):
    assert route_cli("", "rule=personal_alarm", "code=alarm.fall") == 0
    assert capsys.readouterr().out.splitlines()[0] == "queue:         emergency"


def test_vagt_alerts_route_names_the_queue_of_the_rule_it_is_given(capsys):
    """No route of the built-in policy takes battery_low: it keeps its rule's queue."""
    assert route_cli("", "rule=battery_low", "type=pulse_oximeter") == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["queue:         technical",
                                                        "priority:      4"]


def test_vagt_alerts_route_refuses_a_label_without_a_value(capsys):
    assert route_cli("", "rule") == 2
    assert capsys.readouterr().err == "vagt: 'rule' is not a label; write name=value\n"


def test_vagt_alerts_route_says_in_one_line_that_a_rule_does_not_exist(capsys):
    assert route_cli("", "rule=nosuch", "municipality=Aarhus") == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("vagt: there is no rule 'nosuch' in the built-in rules")
    assert err.count("\n") == 1 and "battery_low" in err and "--queue and --priority" in err


def test_vagt_alerts_route_takes_a_rule_not_yet_written_given_its_queue_and_priority(capsys):
    assert route_cli("", "rule=draft_rule", "--queue", "technical", "--priority", "2") == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["queue:         technical",
                                                        "priority:      2"]


@pytest.mark.parametrize(("rule", "queue"), [("unknown_device", "service_centre"),
                                             ("unreadable_alarm", "emergency")])
def test_vagt_alerts_route_knows_the_alerts_the_engine_raises_itself(capsys, rule, queue):
    """No rule file has them; the engine raises them (pipeline) with these queues."""
    assert route_cli("", f"rule={rule}") == 0
    assert capsys.readouterr().out.splitlines()[0] == f"queue:         {queue}"


@pytest.mark.parametrize(("env", "message"), [
    ({"VAGT_ALERTS": "/nonexistent/alerts.toml"}, "setting 'alerts' (VAGT_ALERTS): "
                                                  "/nonexistent/alerts.toml is not a file"),
    ({"VAGT_API_PORT": "70000"}, "setting 'api_port' (VAGT_API_PORT) must be a port"),
])
def test_the_alert_settings_of_the_configuration_are_checked(env, message):
    from vagt.app.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, env=env)


def test_the_built_in_policy_file_loads_and_names_its_queues():
    from vagt.alerts.routing import queues_of

    policy = load_policy(None)
    assert queues_of(policy.root) == ["emergency", "home_care", "clinical", "logistics",
                                      "technical"]
    assert [r.name for r in policy.inhibit] == ["gateway_offline", "offline_device_battery",
                                                "spo2_critical_over_milder",
                                                "spo2_low_over_sustained"]
