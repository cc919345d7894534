"""What a silence could hold back, decided from the rule book and the engine's own alarms
(a table of cases), and which patterns a silence may hold."""

from __future__ import annotations

import re

import pytest

from vagt.alerts.matchers import parse_matcher
from vagt.alerts.patterns import pattern_problem
from vagt.alerts.policy import load_policy
from vagt.alerts.silence_scope import critical_rules_matched, names_devices
from vagt.rules import load_rules

RULES = load_rules(None)   # the built-in rules: personal_alarm and spo2_critical are critical
POLICY = load_policy(None)
ENGINE = ["alarm_processing_failed", "unreadable_alarm", "unregistered_alarm",
          "alarm_before_deployment"]
EVERY = ["personal_alarm", "spo2_critical", *ENGINE]


def matched(*texts: str, rules=RULES) -> list[str]:
    return critical_rules_matched([parse_matcher(t) for t in texts], rules, POLICY)[0]


@pytest.mark.parametrize(("matchers", "critical"), [
    (['severity="critical"'], EVERY),
    (['severity!="info"', 'rule=~".+"'], EVERY),
    (['gateway_id="GW-0001"'], EVERY),                # from the registry: any alert may have it
    (['rule="personal_alarm"'], ["personal_alarm"]),
    (['rule=~"spo2_.*"'], ["spo2_critical"]),
    # a scale that sends alarm.* alarms; an alarm from it unread, or failed on
    (['type="scale"'], ["personal_alarm", "alarm_processing_failed", "unreadable_alarm"]),
    (['type="pulse_oximeter"'], ["personal_alarm", "spo2_critical",
                                 "alarm_processing_failed", "unreadable_alarm"]),
    (['vendor="Acme"'], ["personal_alarm", "spo2_critical", "alarm_processing_failed",
                         "unreadable_alarm"]),
    (['rule="unreadable_alarm"', 'municipality="Randers"'], ["unreadable_alarm"]),
    (['municipality="Randers"', 'rule!~"personal_alarm|spo2_critical"'],
     ["alarm_processing_failed", "unreadable_alarm"]),
    (['code=~"alarm[.].*"'], ["personal_alarm"]),     # the engine's alarms hold no code
    (['metric="spo2"'], ["spo2_critical"]),
    (['metric!="battery"'], EVERY),                   # a label an alert lacks is ""
    (['rule="unregistered_alarm"'], ["unregistered_alarm"]),
    (['rule="battery_low"'], []),
    (['rule="unknown_device"'], []),                  # the engine's, and a warning
    (['rule="message_processing_failed"'], []),       # a message's; an alarm's is its own
    (['severity!="critical"'], []),
    (['severity!~"critical|major"'], []),
    (['severity=~"warning|info"'], []),
    (['rule="personal_alarm"', 'rule!="personal_alarm"'], []),
    (['metric="battery"'], []),
])
def test_which_critical_alerts_a_silence_could_match(matchers, critical):
    assert matched(*matchers) == critical


def test_a_critical_rule_of_the_centres_own_book_is_judged_by_its_labels(tmp_path):
    book = tmp_path / "rules.toml"
    book.write_text('[[rule]]\nname = "fall_detected"\nkind = "event"\ncodes = ["fall.*"]\n'
                    'severity = "critical"\ntypes = ["fall_sensor"]\n'
                    'labels = { team = "night" }\n')
    rules = load_rules(book)
    assert matched('team="night"', rules=rules) == ["fall_detected"]
    assert matched('team="day"', rules=rules) == []
    # any device's alarm may be unreadable, or failed on
    unread = ["alarm_processing_failed", "unreadable_alarm"]
    assert matched('type="fall_sensor"', rules=rules) == ["fall_detected", *unread]
    assert matched('type="scale"', rules=rules) == unread
    assert matched('rule="personal_alarm"', rules=rules) == []   # not in this book


@pytest.mark.parametrize(("matcher", "names"), [
    ('device_id="ALM-0001"', True),
    ('device_id=~"ALM-0001|ALM-0002"', True),
    ('device_id=~"ALM\\\\.1|ALM:2"', True),
    ('device_id=~"' + "|".join(f"ALM-{i:04d}" for i in range(21)) + '"', False),
    ('device_id=~"ALM-.*"', False),
    ('device_id=~"ALM.0001"', False),               # . is any character
    ('device_id=""', False),
    ('device_id!="ALM-0001"', False),
    ('gateway_id="GW-0001"', False),
])
def test_which_silences_name_their_devices(matcher, names):
    assert names_devices([parse_matcher(matcher)]) is names


@pytest.mark.parametrize("pattern", [
    "OXI-.*", "(OXI|BPM)-00[0-9]+", "(OXI|BPM)?-1", ".*-.*", "a{2,5}b{3}", "(?:ab)*c",
    "(?P<kind>OXI)-1", "[)(|]*x", "\\(+x", "battery_low|device_silent"])
def test_a_pattern_that_is_judged_quickly_is_allowed(pattern):
    re.compile(pattern)
    assert pattern_problem(pattern) is None


@pytest.mark.parametrize(("pattern", "why"), [
    ("(?!vagt-probe-).+", "negative lookahead"),
    ("(?=A).+", "lookahead"),
    ("(?<!A)LM", "negative lookbehind"),
    ("(a)\\1", "back-reference"),
    ("(?P<x>a)(?P=x)", "back-reference"),
    ("(?i)alm", "(?:...)"),
    ("(a+)+", "exponential"),
    ("(a|aa)*x", "exponential"),
    ("(?:a|b){2}", "exponential"),
    (".*.*.*x", "at most 2"),
    ("a{1,9}b+c*", "at most 2"),
    ("A" * 201, "at most 200 characters"),
])
def test_a_pattern_that_cannot_be_judged_or_may_backtrack_for_long_is_refused(pattern, why):
    re.compile(pattern)
    problem = pattern_problem(pattern)
    assert problem is not None and why in problem
