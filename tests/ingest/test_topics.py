"""Topics: parsing `{root}/dev/{device_id}/{channel}`, building topics, subscription filters."""

from __future__ import annotations

import pytest

from vagt.ingest import (
    Channel,
    TopicError,
    build_topic,
    check_topic_root,
    parse_topic,
    subscription_filters,
)
from vagt.ingest.topics import DEVICE_ID, TopicParser


def test_a_device_topic_gives_its_device_id_and_channel():
    assert parse_topic("vagt/v1/dev/OXI-0001/telemetry", "vagt/v1") == ("OXI-0001",
                                                                        Channel.TELEMETRY)
    assert parse_topic("vagt/v1/dev/ALM-7/alarm", "vagt/v1") == ("ALM-7", Channel.ALARM)


def test_a_topic_root_of_several_levels_is_understood():
    assert parse_topic("t1234/v1/dev/GW-1/status", "t1234/v1") == ("GW-1", Channel.STATUS)


def test_device_ids_may_hold_dots_colons_underscores_and_dashes():
    device = "urn.dev:mac_00-24"
    assert parse_topic(f"vagt/v1/dev/{device}/telemetry", "vagt/v1")[0] == device


@pytest.mark.parametrize(("topic", "says"), [
    ("other/v1/dev/OXI-1/telemetry", "is not under 'vagt/v1/dev/'"),
    ("vagt/v1/OXI-1/telemetry", "is not under 'vagt/v1/dev/'"),
    ("vagt/v1/dev/OXI-1", "has 1 level(s) after 'vagt/v1/dev/' where 2 belong"),
    ("vagt/v1/dev/OXI-1/telemetry/extra", "has 3 level(s)"),
    ("vagt/v1/dev/OXI-1/gossip", "ends in channel 'gossip'"),
    ("vagt/v1/dev/OXI-1/Telemetry", "ends in channel 'Telemetry'"),
    ("vagt/v1/dev//telemetry", "device id '' must be 1 to 64 characters"),
    ("vagt/v1/dev/OXI 1/telemetry", "device id 'OXI 1' must be"),
    ("vagt/v1/dev/" + "X" * 65 + "/telemetry", "must be 1 to 64 characters"),
    ("vagt/v1/dev/OXI-1\n/telemetry", "device id 'OXI-1\\n'"),
    ("vagt/v1/dev/+/telemetry", "device id '+'"),
])
def test_a_topic_that_is_not_vagts_is_refused_saying_what_is_expected(topic, says):
    with pytest.raises(TopicError) as e:
        parse_topic(topic, "vagt/v1")
    assert says in str(e.value)
    assert "expected vagt/v1/dev/{device_id}/{telemetry|alarm|status}" in str(e.value)


def test_the_device_id_pattern_does_not_accept_a_trailing_newline():
    assert DEVICE_ID.match("OXI-1") and not DEVICE_ID.match("OXI-1\n")


def test_building_a_topic_and_parsing_it_give_back_the_device_and_channel():
    for channel in Channel:
        topic = build_topic("t1/v1", "DSP-9", channel)
        assert topic == f"t1/v1/dev/DSP-9/{channel.value}"
        assert parse_topic(topic, "t1/v1") == ("DSP-9", channel)


def test_building_a_topic_for_an_invalid_device_id_is_an_error():
    with pytest.raises(TopicError):
        build_topic("vagt/v1", "OXI/1", Channel.TELEMETRY)


def test_subscription_filters_have_one_wildcard_level_for_the_device():
    assert subscription_filters("vagt/v1", [Channel.TELEMETRY, Channel.STATUS]) == [
        "vagt/v1/dev/+/telemetry", "vagt/v1/dev/+/status"]


def test_a_share_group_puts_the_filters_under_share():
    assert subscription_filters("vagt/v1", [Channel.ALARM], "engines") == [
        "$share/engines/vagt/v1/dev/+/alarm"]


@pytest.mark.parametrize("root", ["", "/vagt", "vagt/", "vagt//v1", "vagt/+", "vagt/#", "$SYS"])
def test_a_topic_root_with_empty_levels_or_wildcards_is_refused(root):
    with pytest.raises(TopicError):
        check_topic_root(root)


def test_a_share_group_with_a_slash_is_refused():
    with pytest.raises(TopicError):
        subscription_filters("vagt/v1", [Channel.ALARM], "a/b")


def test_a_parser_remembers_good_topics_but_never_bad_ones():
    parser = TopicParser("vagt/v1")
    assert parser.lookup("vagt/v1/dev/A-1/status") == ("A-1", Channel.STATUS, "status")
    assert parser.lookup("vagt/v1/dev/A-1/status") == ("A-1", Channel.STATUS, "status")
    for _ in range(2):
        with pytest.raises(TopicError):
            parser.parse("vagt/v1/dev/A-1/nope")
