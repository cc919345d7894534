"""Topics: parsing `{root}/dev/{device_id}/{channel}`, building topics, subscription filters."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vagt.ingest import (
    Channel,
    TopicError,
    build_topic,
    check_topic_root,
    every_device_topic,
    parse_topic,
    subscription_filters,
)
from vagt.ingest.topics import DEVICE_ID, TopicParser, channel_levels, device_level


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
    # what looks like a registered id to a person: the character that is not says so
    ("vagt/v1/dev/OXI\u20100001/telemetry",
     "A-Z a-z 0-9 . _ : -; its character 4, '\u2010' (U+2010 HYPHEN), is none of them"),
    ("vagt/v1/dev/\uff2fXI-1/telemetry",
     "its character 1, '\uff2f' (U+FF2F FULLWIDTH LATIN CAPITAL LETTER O), is none of them"),
    ("vagt/v1/dev/OXI 1/telemetry", "its character 4, ' ' (U+0020 SPACE), is none of them"),
    ("vagt/v1/dev/" + "X" * 65 + "/telemetry", "A-Z a-z 0-9 . _ : -; it has 65"),
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


def test_a_parser_answers_a_topic_the_same_each_time_and_refuses_a_bad_one_each_time():
    parser = TopicParser("vagt/v1")
    for _ in range(2):
        assert parser.lookup("vagt/v1/dev/A-1/status") == ("A-1", Channel.STATUS, "status")
        with pytest.raises(TopicError):
            parser.parse("vagt/v1/dev/A-1/nope")


# topics near vagt's: the root or not, separators, the characters a device id may hold and
# some it may not (a space, a newline, a wildcard, a letter outside ASCII), the channels
_near = st.text(alphabet="vagt/1dev.-_:AZ09 \n+#é", max_size=70)
_device_topics = st.builds(
    lambda root, device, channel: f"{root}/dev/{device}/{channel}",
    st.sampled_from(["vagt/v1", "vagt/v2", "vagt"]), _near,
    st.sampled_from(["telemetry", "alarm", "status", "status\n", "Status", "alarm/x", "",
                     "gossip"]))


@settings(max_examples=500)
@given(st.one_of(_device_topics, _near))
def test_the_parsers_fast_path_takes_exactly_the_topics_its_checks_take(topic):
    """The one expression the decoder matches a topic with, against the step-by-step checks
    that say what is wrong: the same topics are refused, the same device and channel read."""
    parser = TopicParser("vagt/v1")
    try:
        expected = parser._parse(topic)
    except TopicError:
        with pytest.raises(TopicError):
            parser.lookup(topic)
        return
    device_id, channel, name = parser.lookup(topic)
    assert (device_id, channel) == expected and name == channel.value


def test_every_device_topic_is_one_filter_shared_as_the_others_are():
    assert every_device_topic("vagt/v1") == "vagt/v1/dev/#"
    assert every_device_topic("vagt/v1", "engines") == "$share/engines/vagt/v1/dev/#"
    with pytest.raises(TopicError, match="share group"):
        every_device_topic("vagt/v1", "a/b")


@pytest.mark.parametrize(("topic", "device", "channel"), [
    ("vagt/v1/dev/ALM-1/alarms", "ALM-1", "alarms"),
    ("vagt/v1/dev/ALM-1/alarm/fall", "ALM-1", "alarm/fall"),
    ("vagt/v1/dev/ALM-1", "ALM-1", ""),
    ("vagt/v1/dev/" + "A" * 70 + "/alarm", "A" * 70, "alarm"),
    ("vagt/v1/dev", "vagt/v1/dev", ""),
])
def test_a_stray_topic_names_the_device_level_and_what_follows_it(topic, device, channel):
    assert device_level(topic, "vagt/v1") == device
    assert channel_levels(topic, "vagt/v1") == channel
