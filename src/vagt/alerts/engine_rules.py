"""The alerts the engine raises itself, outside the rule book: about messages and devices
no rule sees (a device the registry does not expect to hear from, a message on a topic vagt
does not read, an alarm that could not be read, a message it could not process). Their
`rule` names, the queue and priority they start from before the routing tree, and the
severities each can have, so that a silence can be judged against them too.

Their labels are `rule`, `device_id` and `severity` (and the registry's `label_attributes`
of a registered device); an unreadable alarm's, a failed message's and a bad topic's of a
device the engine knows, also its `municipality`, `type`, `vendor` and `model`, as a rule's
alert has them: an operator of a municipality sees only the alerts labelled with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vagt.rules import Rule

UNKNOWN_DEVICE_RULE = "unknown_device"
BAD_TOPIC_RULE = "bad_topic"
REFUSED_RULE = "message_processing_failed"
# an alarm's: an alert of its own, not a repeat of an open `message_processing_failed` of the
# device's other messages (in the service centre's queue, a warning)
REFUSED_ALARM_RULE = "alarm_processing_failed"
UNREADABLE_ALARM_RULE = "unreadable_alarm"
UNREGISTERED_ALARM_RULE = "unregistered_alarm"
ALARM_BEFORE_DEPLOYMENT_RULE = "alarm_before_deployment"
OUT_OF_SERVICE_RULE = "device_out_of_service"

SERVICE_CENTRE_QUEUE = "service_centre"
SERVICE_CENTRE_PRIORITY = 3
# About an alarm (someone may have pressed the button): the personal alarm rule's queue
# and priority, these without it.
PERSONAL_ALARM_RULE = "personal_alarm"
EMERGENCY_QUEUE = "emergency"
EMERGENCY_PRIORITY = 1

# Each of these goes where the personal alarm rule's alerts go; the others to the service
# centre.
ABOUT_ALARMS = (UNREADABLE_ALARM_RULE, UNREGISTERED_ALARM_RULE, ALARM_BEFORE_DEPLOYMENT_RULE,
                REFUSED_ALARM_RULE)
NAMES = (UNKNOWN_DEVICE_RULE, BAD_TOPIC_RULE, OUT_OF_SERVICE_RULE, REFUSED_RULE, *ABOUT_ALARMS)

# An alarm no rule saw is critical, as a personal alarm is: someone may have pressed the
# button.
ENGINE_RULES: Mapping[str, frozenset[str]] = {
    UNKNOWN_DEVICE_RULE: frozenset({"warning"}),
    BAD_TOPIC_RULE: frozenset({"warning"}),
    REFUSED_RULE: frozenset({"warning"}),
    REFUSED_ALARM_RULE: frozenset({"critical"}),
    UNREADABLE_ALARM_RULE: frozenset({"critical"}),
    UNREGISTERED_ALARM_RULE: frozenset({"critical"}),
    ALARM_BEFORE_DEPLOYMENT_RULE: frozenset({"critical"}),
    OUT_OF_SERVICE_RULE: frozenset({"warning"}),
}


# The engine's alerts that carry the device's registry labels (`municipality`, `type`,
# `vendor`, `model`) when the engine knows the device, as a rule's alert does.
WITH_DEVICE_LABELS = (UNREADABLE_ALARM_RULE, REFUSED_RULE, REFUSED_ALARM_RULE, BAD_TOPIC_RULE)
DEVICE_LABELS = ("municipality", "type", "vendor", "model")


def alarm_destination(rules: Iterable[Rule]) -> tuple[int, str]:
    """Priority and queue of an alert about an alarm no rule saw: the personal alarm rule's."""
    rule = next((r for r in rules if r.name == PERSONAL_ALARM_RULE), None)
    return (rule.priority, rule.queue) if rule else (EMERGENCY_PRIORITY, EMERGENCY_QUEUE)


def destination(name: str, rules: Iterable[Rule]) -> tuple[int, str] | None:
    """Priority and queue an engine-made alert named `name` starts from (None: the engine
    makes no alert of that name)."""
    if name in ABOUT_ALARMS:
        return alarm_destination(rules)
    if name in NAMES:
        return SERVICE_CENTRE_PRIORITY, SERVICE_CENTRE_QUEUE
    return None
