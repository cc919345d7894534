"""Topics: `{topic_root}/dev/{device_id}/{channel}`, parsing and subscription filters."""

from __future__ import annotations

import re
from collections.abc import Iterable

from vagt.ingest.model import Channel

DEVICE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_CHANNELS = {c.value: c for c in Channel}


class TopicError(ValueError):
    """The topic is not one of vagt's; the message says what is expected."""


def build_topic(topic_root: str, device_id: str, channel: Channel | str) -> str:
    return f"{topic_root}/dev/{device_id}/{Channel(channel).value}"


def subscription_filters(topic_root: str, channels: Iterable[Channel],
                         share_group: str = "") -> list[str]:
    """One filter per channel; with a share group, `$share/{group}/...` (MQTT 5 and Mosquitto)."""
    prefix = f"$share/{share_group}/" if share_group else ""
    return [f"{prefix}{topic_root}/dev/+/{Channel(c).value}" for c in channels]


def parse_topic(topic: str, topic_root: str) -> tuple[str, Channel]:
    """(device id, channel) of a device topic, or TopicError."""
    head = topic_root + "/dev/"
    if not topic.startswith(head):
        raise TopicError(f"topic '{topic}' is not under '{head}'; "
                         f"expected {topic_root}/dev/{{device_id}}/{{telemetry|alarm|status}}")
    device_id, sep, channel = topic[len(head):].partition("/")
    if not sep or channel not in _CHANNELS:
        raise TopicError(f"topic '{topic}' has no valid channel; expected "
                         f"{topic_root}/dev/{{device_id}}/{{telemetry|alarm|status}}")
    if not DEVICE_ID.match(device_id):
        raise TopicError(f"topic '{topic}': device id '{device_id}' must be 1 to 64 of "
                         "A-Z a-z 0-9 . _ : -")
    return device_id, _CHANNELS[channel]
