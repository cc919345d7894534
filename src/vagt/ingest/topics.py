"""Topics: `{topic_root}/dev/{device_id}/{channel}`: building them, parsing them, and the
subscription filters of a topic root.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from vagt.ingest.model import Channel
from vagt.text import char_name

_DEVICE_ID = r"[A-Za-z0-9._:-]{1,64}"
# `\Z`, not `$`: `$` would let a device id end in a newline
DEVICE_ID = re.compile(rf"^{_DEVICE_ID}\Z")
DEFAULT_ROOT = "vagt/v1"
_CHANNELS = {c.value: c for c in Channel}


class TopicError(ValueError):
    """A topic (or a topic root) that is not vagt's; the message says what is expected."""


def check_topic_root(topic_root: str) -> None:
    """TopicError unless `topic_root` is one or more non-empty levels without wildcards."""
    levels = topic_root.split("/")
    if (not topic_root or "" in levels or any(c in topic_root for c in "+#\0")
            or topic_root.startswith("$")):
        raise TopicError(f"topic root {topic_root!r} must be one or more non-empty levels "
                         "separated by '/', without '+', '#' or a leading '$' (e.g. 'vagt/v1')")


_ALLOWED = re.compile(r"[A-Za-z0-9._:-]")


def check_device_id(device_id: str) -> None:
    if not DEVICE_ID.match(device_id):
        raise TopicError(f"device id {device_id[:80]!r} must be 1 to 64 characters of "
                         f"A-Z a-z 0-9 . _ : -{_what_is_not(device_id)}")


def _what_is_not(device_id: str) -> str:
    """Which character of an id is not allowed, named: 'OXI‐0001' (a Unicode hyphen) and
    'OXI-0001' look alike to a person reading a dead letter; or how long it is."""
    for k, c in enumerate(device_id, 1):
        if not _ALLOWED.match(c):
            return f"; its character {k}, {c!r} ({char_name(c)}), is none of them"
    return f"; it has {len(device_id)}" if device_id else ""


def build_topic(topic_root: str, device_id: str, channel: Channel | str) -> str:
    check_topic_root(topic_root)
    check_device_id(device_id)
    return f"{topic_root}/dev/{device_id}/{Channel(channel).value}"


def subscription_filters(topic_root: str, channels: Iterable[Channel | str],
                         share_group: str = "") -> list[str]:
    """One filter per channel, with `$share/{group}/` in front when a share group is given.

    >>> subscription_filters("vagt/v1", [Channel.ALARM], "engines")
    ['$share/engines/vagt/v1/dev/+/alarm']
    """
    prefix = _share_prefix(topic_root, share_group)
    return [f"{prefix}{topic_root}/dev/+/{Channel(c).value}" for c in channels]


def every_device_topic(topic_root: str, share_group: str = "") -> str:
    """The filter of every topic under `{topic_root}/dev` (the bulk lane's): a device that
    publishes on a channel vagt does not read is heard, and its message kept as a dead letter.

    >>> every_device_topic("vagt/v1", "engines")
    '$share/engines/vagt/v1/dev/#'
    """
    return f"{_share_prefix(topic_root, share_group)}{topic_root}/dev/#"


def _share_prefix(topic_root: str, share_group: str) -> str:
    check_topic_root(topic_root)
    if share_group and any(c in share_group for c in "/+#\0"):
        raise TopicError(f"share group {share_group!r} must not contain '/', '+' or '#'")
    return f"$share/{share_group}/" if share_group else ""


def device_level(topic: str, topic_root: str) -> str:
    """The level after `{topic_root}/dev/` of a topic that is not vagt's (the device it would
    be); the topic itself when it has none."""
    head = topic_root + "/dev/"
    if topic.startswith(head) and len(topic) > len(head):
        return topic[len(head):].split("/", 1)[0]
    return topic


def channel_levels(topic: str, topic_root: str) -> str:
    """What follows the device level of a topic under `{topic_root}/dev/` ('alarms',
    'alarm/fall'); '' when nothing does."""
    head = topic_root + "/dev/"
    if not topic.startswith(head):
        return ""
    return topic[len(head):].partition("/")[2]


class TopicParser:
    """Parses the topics under one root: one regular expression over the whole topic, the
    decoder's fast path; a topic it refuses is taken apart step by step to say what is wrong.

    Nothing is remembered between topics: a fleet of 100,000 devices has two or three topics
    each, and a memory of them (kept until 100,000, then cleared) held 25 MB in the engine
    while saving about a microsecond a message, and only for the topics seen again before
    it was cleared."""

    def __init__(self, topic_root: str = DEFAULT_ROOT) -> None:
        check_topic_root(topic_root)
        self.topic_root = topic_root
        self._head = topic_root + "/dev/"
        self._expected = f"expected {topic_root}/dev/{{device_id}}/{{telemetry|alarm|status}}"
        # what _parse accepts: the device id as DEVICE_ID has it, then one of the channels
        self._match = re.compile(rf"{re.escape(self._head)}({_DEVICE_ID})/("
                                 + "|".join(map(re.escape, _CHANNELS)) + r")\Z").match

    def parse(self, topic: str) -> tuple[str, Channel]:
        """(device id, channel), or TopicError saying what is wrong and what is expected."""
        device_id, channel, _ = self.lookup(topic)
        return device_id, channel

    def lookup(self, topic: str) -> tuple[str, Channel, str]:
        """(device id, channel, the channel's name): the decoder's fast path, the name saving
        it the enum's `.value`, which is slow for something done once a message."""
        m = self._match(topic)
        if m is None:
            self._parse(topic)   # raises TopicError, saying what is wrong
            raise AssertionError(f"topic {topic[:200]!r}: the pattern and the parser disagree")
        device_id, name = m.groups()
        return device_id, _CHANNELS[name], name

    def _parse(self, topic: str) -> tuple[str, Channel]:
        shown = topic[:200]
        if not topic.startswith(self._head):
            raise TopicError(f"topic {shown!r} is not under '{self._head}'; {self._expected}")
        levels = topic[len(self._head):].split("/")
        if len(levels) != 2:
            raise TopicError(f"topic {shown!r} has {len(levels)} level(s) after "
                             f"'{self._head}' where 2 belong; {self._expected}")
        device_id, channel = levels
        ch = _CHANNELS.get(channel)
        if ch is None:
            raise TopicError(f"topic {shown!r} ends in channel {channel[:40]!r}; the channel "
                             f"must be telemetry, alarm or status ({self._expected})")
        try:
            check_device_id(device_id)
        except TopicError as e:
            raise TopicError(f"topic {shown!r}: {e} ({self._expected})") from None
        return device_id, ch


_parsers: dict[str, TopicParser] = {}


def parser_for(topic_root: str) -> TopicParser:
    """The shared parser of a root."""
    p = _parsers.get(topic_root)
    if p is None:
        p = _parsers[topic_root] = TopicParser(topic_root)
    return p


def parse_topic(topic: str, topic_root: str = DEFAULT_ROOT) -> tuple[str, Channel]:
    """(device id, channel) of a device topic under `topic_root`, or TopicError."""
    return parser_for(topic_root).parse(topic)
