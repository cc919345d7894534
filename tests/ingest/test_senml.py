"""SenML JSON (RFC 8428): resolution as the RFC's own examples show it, and vagt's mapping."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.ingest.helpers import NOW, dead_detail, dead_reason, decode, readings

from vagt.ingest.canonical import Reject
from vagt.ingest.senml import RELATIVE_LIMIT, Resolved, metric_in_pack, metric_of, resolve

URN = "urn:dev:ow:10e2073a01080063"
BT = 1.276020076001e09

# The examples of RFC 8428 section 5.1, written out from the RFC, each with its resolved
# records (section 4.6; 5.1.4 is the RFC's own resolved form of 5.1.3).
RFC_EXAMPLES = {
    "5.1.1 single datapoint": (
        [{"n": URN, "u": "Cel", "v": 23.1}],
        [Resolved(0, URN, NOW, "Cel", "v", 23.1)]),
    "5.1.2 multiple datapoints": (
        [{"bn": URN + ":", "n": "voltage", "u": "V", "v": 120.1},
         {"n": "current", "u": "A", "v": 1.2}],
        [Resolved(0, URN + ":voltage", NOW, "V", "v", 120.1),
         Resolved(1, URN + ":current", NOW, "A", "v", 1.2)]),
    "5.1.3 multiple measurements (resolved as 5.1.4)": (
        [{"bn": URN + ":", "bt": BT, "bu": "A", "bver": 5, "n": "voltage", "u": "V", "v": 120.1},
         {"n": "current", "t": -5, "v": 1.2},
         {"n": "current", "t": -4, "v": 1.3},
         {"n": "current", "t": -3, "v": 1.4},
         {"n": "current", "t": -2, "v": 1.5},
         {"n": "current", "t": -1, "v": 1.6},
         {"n": "current", "v": 1.7}],
        [Resolved(0, URN + ":voltage", BT, "V", "v", 120.1)]
        + [Resolved(k, URN + ":current", BT - 6 + k, "A", "v", v)
           for k, v in [(1, 1.2), (2, 1.3), (3, 1.4), (4, 1.5), (5, 1.6), (6, 1.7)]]),
    "5.1.5 multiple data types": (
        [{"bn": URN + ":", "n": "temperature", "u": "Cel", "v": 23.4},
         {"n": "label", "vs": "Machine Room"},
         {"n": "open", "vb": False},
         {"n": "nfc-reader", "vd": "aGkgCg"}],
        [Resolved(0, URN + ":temperature", NOW, "Cel", "v", 23.4),
         Resolved(1, URN + ":label", NOW, None, "vs", "Machine Room"),
         Resolved(2, URN + ":open", NOW, None, "vb", False),
         Resolved(3, URN + ":nfc-reader", NOW, None, "vd", "aGkgCg")]),
    "5.1.6 collection of data over time": (
        [{"bn": URN, "bt": 1.320078429e09, "bu": "%RH", "v": 20},
         {"u": "lon", "v": 24.30621},
         {"u": "lat", "v": 60.07965},
         {"t": 60, "v": 20.3},
         {"u": "lon", "t": 60, "v": 24.30622},
         {"u": "%EL", "t": 150, "v": 98}],
        [Resolved(0, URN, 1.320078429e09, "%RH", "v", 20.0),
         Resolved(1, URN, 1.320078429e09, "lon", "v", 24.30621),
         Resolved(2, URN, 1.320078429e09, "lat", "v", 60.07965),
         Resolved(3, URN, 1.320078489e09, "%RH", "v", 20.3),
         Resolved(4, URN, 1.320078489e09, "lon", "v", 24.30622),
         Resolved(5, URN, 1.320078579e09, "%EL", "v", 98.0)]),
    "5.1.7 collection of resources": (
        [{"bn": URN + ":", "n": "temp", "u": "Cel", "v": 27.2},
         {"n": "humidity", "u": "%RH", "v": 80}],
        [Resolved(0, URN + ":temp", NOW, "Cel", "v", 27.2),
         Resolved(1, URN + ":humidity", NOW, "%RH", "v", 80.0)]),
}


@pytest.mark.parametrize(("pack", "resolved"), RFC_EXAMPLES.values(), ids=RFC_EXAMPLES.keys())
def test_the_rfcs_examples_resolve_as_the_rfc_says(pack, resolved):
    assert resolve(pack, NOW) == resolved


def test_relative_times_are_below_two_to_the_28_and_count_from_now():
    assert RELATIVE_LIMIT == 268435456
    got = resolve([{"n": "a", "v": 1, "t": -30}, {"n": "a", "v": 2},
                   {"n": "a", "v": 3, "t": RELATIVE_LIMIT}], NOW)
    assert [r.time for r in got] == [NOW - 30, NOW, float(RELATIVE_LIMIT)]


def test_a_base_field_given_again_changes_only_the_records_after_it():
    got = resolve([{"bn": "a/", "bu": "%", "bv": 10, "n": "x", "v": 1},
                   {"bn": "b/", "n": "x", "v": 1},
                   {"bu": "/min", "bv": 0, "n": "x", "v": 1}], NOW)
    assert [(r.name, r.unit, r.value) for r in got] == [("a/x", "%", 11.0), ("b/x", "%", 11.0),
                                                         ("b/x", "/min", 1.0)]


def test_a_base_sum_is_added_to_a_sum():
    assert resolve([{"bs": 100, "n": "energy", "s": 5}], NOW) == [
        Resolved(0, "energy", NOW, None, "s", 105.0)]


def test_a_record_of_base_fields_only_resolves_to_nothing():
    assert resolve([{"bn": "a/", "bt": NOW - 9}, {"n": "x", "v": 1}], NOW) == [
        Resolved(1, "a/x", NOW - 9, None, "v", 1.0)]


# --- what vagt makes of resolved records ---------------------------------------------------

def test_a_single_datapoint_named_by_urn_becomes_a_reading():
    out = decode([{"n": "urn:dev:ow:OXI-1:spo2", "u": "%", "v": 97}])
    assert readings(out) == [("spo2", 97.0, "%", NOW)]


def test_multiple_datapoints_under_a_base_name_become_readings():
    out = decode([{"bn": "urn:dev:ow:OXI-1:", "n": "spo2", "u": "%", "v": 97},
                  {"n": "pulse", "u": "/min", "v": 61}])
    assert readings(out) == [("spo2", 97.0, "%", NOW), ("pulse", 61.0, "/min", NOW)]


def test_senml_base_time_and_relative_times_resolve():
    out = decode([{"bn": "OXI-1/", "bt": NOW - 60, "bu": "/min", "bver": 10, "n": "spo2",
                   "u": "%", "v": 97},
                  {"n": "pulse", "t": -5, "v": 60},
                  {"n": "pulse", "v": 62}])
    assert readings(out) == [("spo2", 97.0, "%", NOW - 60), ("pulse", 60.0, "/min", NOW - 65),
                             ("pulse", 62.0, "/min", NOW - 60)]


def test_data_over_time_named_by_the_base_name_alone_becomes_a_series():
    out = decode([{"bn": "urn:dev:ow:OXI-1:spo2", "bt": NOW - 120, "bu": "%", "v": 97},
                  {"t": 60, "v": 96}, {"t": 120, "v": 95}])
    assert readings(out) == [("spo2", 97.0, "%", NOW - 120), ("spo2", 96.0, "%", NOW - 60),
                             ("spo2", 95.0, "%", NOW)]


@pytest.mark.parametrize("name", ["spo2", "OXI-1/spo2", "site/OXI-1/spo2", "urn:dev:ow:OXI-1:spo2"])
def test_a_name_with_or_without_the_topics_device_gives_the_metric(name):
    assert decode([{"n": name, "v": 97}]).r_metric == ["spo2"]


def test_a_mac_urn_names_the_device_by_its_mac():
    out = decode([{"bn": "urn:dev:mac:0024befffe804ff1:", "n": "spo2", "v": 97}],
                 device="0024befffe804ff1")
    assert out.r_metric == ["spo2"] and out.r_device == ["0024befffe804ff1"]


def test_a_device_id_with_colons_may_be_the_whole_prefix():
    assert decode([{"n": "00:24:be:spo2", "v": 97}], device="00:24:be").r_metric == ["spo2"]


def test_the_base_value_is_added_to_each_value():
    out = decode([{"bv": 90, "n": "spo2", "v": 7, "t": -60}, {"n": "spo2", "v": 5}])
    assert out.r_value == [97.0, 95.0]


def test_a_senml_ratio_becomes_percent():
    out = decode([{"n": "battery", "u": "/", "v": 0.5}])
    assert (out.r_value, out.r_unit) == ([50.0], ["%"])


def test_a_missing_unit_is_the_canonical_one_when_the_metric_is_unambiguous():
    assert readings(decode([{"n": "pulse", "v": 61}])) == [("pulse", 61.0, "/min", NOW)]


def test_a_missing_unit_is_refused_when_the_metric_is_ambiguous_without_one():
    assert dead_reason([{"n": "glucose", "v": 7}]) == "unknown_unit"


def test_string_values_set_firmware_and_carry_events():
    out = decode([{"bn": "ALM-1/", "n": "firmware", "vs": "4.0.2"},
                  {"n": "event", "vs": "power.mains_lost"},
                  {"n": "alarm", "vs": "fall"}], device="ALM-1", channel="alarm")
    assert out.f_firmware == ["4.0.2"]
    assert list(zip(out.e_code, out.e_severity)) == [("power.mains_lost", "warning"),
                                                     ("alarm.fall", "critical")]
    assert out.e_details == ["{}", "{}"] and out.e_time == [NOW, NOW]


def test_sums_are_not_stored_but_do_not_spoil_the_pack():
    out = decode([{"n": "steps", "s": 12000}, {"n": "spo2", "v": 97, "s": 1}])
    assert readings(out) == [("spo2", 97.0, "%", NOW)]


def test_unknown_fields_not_ending_in_underscore_are_ignored_as_rfc_8428_allows():
    assert decode([{"n": "spo2", "v": 97, "vendor": "x"}]).r_value == [97.0]


INVALID = [
    # (pack, reason, words the detail must hold)
    ([], "schema", "empty array"),
    ([97], "schema", "SenML record 0 must be an object"),
    ([{"n": "spo2", "u": "furlong", "v": 1}], "unknown_unit", "unit 'furlong' is not accepted"),
    ([{"n": "mood", "v": 1}], "unknown_metric", "metric 'mood' is not known"),
    ([{"n": "spo2", "v": 101}], "impossible_value", "outside what a working sensor can report"),
    ([{"bv": 1e308, "n": "spo2", "v": 1e308}], "impossible_value", "not finite"),
    ([{"bn": "OXI-2/", "n": "spo2", "v": 97}], "device_mismatch",
     "belongs to 'OXI-2', which does not end in 'OXI-1'"),
    ([{"bn": "urn:dev:ow:OXI-9:", "n": "spo2", "v": 97}], "device_mismatch", "'urn:dev:ow:OXI-9'"),
    ([{"n": "x/OXI-10/spo2", "v": 97}], "device_mismatch", "OXI-10"),
    ([{"n": "spo2", "v": 97}, {"bn": "GW-1/", "n": "spo2", "v": 96}], "device_mismatch",
     "SenML record 1"),
    ([{"n": "spo2", "v": 97, "vs": "x"}], "schema", "has 2 value fields (v, vs)"),
    ([{"n": "spo2", "v": "97"}], "schema", "v must be a number, got '97'"),
    ([{"n": 5, "v": 97}], "schema", "n must be a string"),
    ([{"n": "open", "vb": "yes"}], "schema", "vb must be true or false"),
    ([{"v": 97}], "schema", "has no name"),
    ([{"n": "spo 2", "v": 97}], "schema", "must start with a letter or digit"),
    ([{"bn": "OXI-1/", "v": 97}], "schema", "ends in its device prefix"),
    ([{"bver": 11, "n": "spo2", "v": 97}], "schema", "version bver 11 is not understood"),
    ([{"bver": "10", "n": "spo2", "v": 97}], "schema", "bver"),
    ([{"n": "spo2", "v": 97, "foo_": 1}], "schema", "'foo_', which must be understood"),
    ([{"n": "spo2", "vv": 97}], "schema", "has n but no value"),
    ([{"vendor": 1}], "schema", "no value"),
    ([{"n": "light", "vb": True}], "schema", "a vb value is understood only as vs of"),
    ([{"n": "photo", "vd": "aGkgCg"}], "schema", "a vd value"),
    ([{"n": "label", "vs": "Machine Room"}], "schema", "got it for 'label'"),
    ([{"n": "event", "vs": "Fall!"}], "schema", "event code"),
    ([{"n": "firmware", "vs": ""}], "schema", "firmware"),
    ([{"n": "firmware", "vs": "4.0\u202e2"}], "schema",
     "SenML record 0: vs of 'firmware' must be a string of 1 to 64 printable characters, got "
     "'4.0\\u202e2': it holds U+202E RIGHT-TO-LEFT OVERRIDE"),
    ([{"n": "steps", "s": 100}], "schema", "no record with a value"),
    ([{"bn": "OXI-1/", "bt": NOW + 3600, "n": "spo2", "v": 97}], "bad_time", "in the future"),
    ([{"bt": 9e8, "n": "spo2", "v": 97}], "bad_time", "before 2000-01-01"),
]


@pytest.mark.parametrize(("pack", "reason", "words"), INVALID,
                         ids=[f"{i}-{r}" for i, (_, r, _) in enumerate(INVALID)])
def test_an_invalid_pack_is_a_dead_letter_saying_what_and_where(pack, reason, words):
    out = decode(pack)
    assert [d.reason.value for d in out.dead] == [reason]
    assert words in out.dead[0].detail


def test_an_alarm_channel_pack_without_an_event_is_refused():
    assert "alarm channel must carry an event" in dead_detail([{"n": "spo2", "v": 97}],
                                                              channel="alarm")


def test_a_name_as_long_as_a_payload_is_read():
    # The device prefix may be anything that ends in ':{device}': a misbehaving device could
    # send names of kilobytes, each new.
    for k in range(3):
        name = f"urn:dev:{k:04d}{'x' * 20_000}:OXI-1:spo2"
        out = decode([{"n": name, "u": "%", "v": 97}], limit=64 * 1024)
        assert readings(out) == [("spo2", 97.0, "%", NOW)]


def test_records_after_the_first_are_checked_against_the_prefix_it_was_accepted_for():
    out = decode([{"bn": "urn:dev:ow:OXI-1:", "n": "spo2", "v": 97},
                  {"n": "pulse", "v": 61, "t": -60},
                  {"bn": "OXI-1/", "n": "pulse", "v": 62}])
    assert [r[:2] for r in readings(out)] == [("spo2", 97.0), ("pulse", 61.0), ("pulse", 62.0)]
    # the same metric under another device's prefix, after one of the topic's device
    assert dead_reason([{"bn": "OXI-1/", "n": "spo2", "v": 97},
                        {"bn": "OXI-10/", "n": "spo2", "v": 96}]) == "device_mismatch"
    # a name that begins with its separator has an empty prefix: not a name (RFC 8428)
    assert dead_reason([{"n": ":spo2", "v": 97}]) == "schema"
    assert dead_reason([{"n": "spo2", "v": 97}, {"n": "/spo2", "v": 97}]) == "schema"


_prefixes = st.sampled_from(["", "OXI-1", "urn:dev:ow:OXI-1", "x/OXI-1", "OXI-10", ":OXI-1",
                             "OXI 1", "GW-1", "urn:dev:ow:OXI-1:", "-OXI-1"])
_metrics = st.sampled_from(["spo2", "pulse", "firmware", "event", "mood", "", "sp o2", "a:b"])
_names = st.one_of(
    st.builds(lambda p, sep, m: p + sep + m, _prefixes, st.sampled_from(["", ":", "/"]),
              _metrics),
    st.text(alphabet="OXI-1:/ spo2urn", max_size=20))


def _metrics_or_reject(names: list[str], found: Callable[[str, int], str]) -> list[str] | str:
    """The metric of each name in turn, or the first Reject's reason and detail."""
    try:
        return [found(name, k) for k, name in enumerate(names)]
    except Reject as e:
        return f"{e.reason}: {e.detail}"


@settings(max_examples=500)
@given(st.lists(_names, min_size=1, max_size=4))
def test_the_names_of_a_pack_give_what_each_alone_gives(names):
    """A pack's names are checked once per device prefix, not each: the same metrics, the
    same first refusal as `metric_of` name by name."""
    owner = [""]

    def in_pack(name: str, k: int) -> str:
        metric, owner[0] = metric_in_pack(name, "OXI-1", owner[0], k)
        return metric

    alone = _metrics_or_reject(names, lambda n, k: metric_of(n, "OXI-1", f"SenML record {k}"))
    assert _metrics_or_reject(names, in_pack) == alone
