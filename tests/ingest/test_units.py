"""The metric catalogue: canonical units, accepted units, exact conversions, possible ranges."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from vagt.ingest import DeadLetterReason
from vagt.ingest.units import FAST, METRICS, UnitError, conversion, normalize, normalize_array

CANONICAL = {"spo2": "%", "pulse": "/min", "bp_systolic": "mm[Hg]", "bp_diastolic": "mm[Hg]",
             "bp_mean": "mm[Hg]", "weight": "kg", "glucose": "mmol/L", "temperature": "Cel",
             "battery": "%", "signal": "dB[mW]", "respiration_rate": "/min"}


@pytest.mark.parametrize(("metric", "unit"), sorted(CANONICAL.items()))
def test_each_metric_has_the_agreed_canonical_ucum_unit(metric, unit):
    assert METRICS[metric].unit == unit


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_a_value_in_the_canonical_unit_is_stored_unchanged(metric):
    m = METRICS[metric]
    value = (m.low + m.high) / 3
    assert normalize(metric, value, m.unit) == (value, m.unit)


# (metric, value, unit, the exact canonical value as a fraction)
EXACT = [
    ("weight", 81400, "g", Fraction(814, 10)),
    ("weight", 180, "[lb_av]", 180 * Fraction("0.45359237")),
    ("weight", 180, "lb", 180 * Fraction("0.45359237")),
    ("glucose", 126, "mg/dL", 126 / Fraction("18.016")),
    ("glucose", 90, "mg/dl", 90 / Fraction("18.016")),
    ("bp_systolic", 17.6, "kPa", Fraction("17.6") * 1000 / Fraction("133.322")),
    ("bp_diastolic", 11000, "Pa", 11000 / Fraction("133.322")),
    ("bp_mean", 133.322, "hPa", Fraction(100)),
    ("body_temperature", 98.6, "[degF]", (Fraction("98.6") - 32) * 5 / 9),
    ("temperature", -40, "degF", Fraction(-40)),
    ("body_temperature", 310.15, "K", Fraction("37")),
    ("pulse", 1.2, "1/s", Fraction(72)),
    ("pulse", 1.5, "Hz", Fraction(90)),
    ("pulse", 66, "bpm", Fraction(66)),
    ("pulse", 66, "{beats}/min", Fraction(66)),
    ("pulse", 66, "beat/min", Fraction(66)),
    ("respiration_rate", 14, "{breaths}/min", Fraction(14)),
    ("spo2", 0.97, "/", Fraction(97)),
    ("battery", 0.5, "/", Fraction(50)),
    ("battery", 71, "%EL", Fraction(71)),
    ("signal", -100, "dBW", Fraction(-70)),
    ("signal", -71, "dBm", Fraction(-71)),
    ("bp_systolic", 120, "mmHg", Fraction(120)),
]


@pytest.mark.parametrize(("metric", "value", "unit", "exact"), EXACT,
                         ids=[f"{m}-{u}" for m, _, u, _ in EXACT])
def test_conversions_agree_with_exact_arithmetic_to_the_last_bits(metric, value, unit, exact):
    got, canonical = normalize(metric, value, unit)
    assert canonical == METRICS[metric].unit
    assert math.isclose(got, float(exact), rel_tol=4e-16, abs_tol=1e-13), (got, float(exact))


def test_grams_to_kilograms_is_correctly_rounded():
    # dividing by 1000 rounds once; multiplying by 0.001 (not a binary number) would not
    assert normalize("weight", 81400, "g")[0] == 81.4


def test_unknown_unit_names_the_metric_the_unit_and_the_accepted_units():
    with pytest.raises(UnitError) as e:
        normalize("spo2", 97, "furlong")
    assert e.value.reason is DeadLetterReason.UNKNOWN_UNIT
    assert str(e.value) == ("unit 'furlong' is not accepted for metric 'spo2' (stored in %); "
                            "accepted: %, /")


def test_unknown_metric_names_the_known_metrics():
    with pytest.raises(UnitError) as e:
        normalize("mood", 3, None)
    assert e.value.reason is DeadLetterReason.UNKNOWN_METRIC
    assert "metric 'mood' is not known" in str(e.value)
    assert all(name in str(e.value) for name in METRICS)


@pytest.mark.parametrize("metric", ["glucose", "weight", "temperature", "body_temperature"])
def test_a_metric_that_is_ambiguous_without_a_unit_needs_one(metric):
    # 7 mmol/L and 126 mg/dL are both plausible numbers: guessing would be dangerous
    with pytest.raises(UnitError) as e:
        normalize(metric, 7, None)
    assert e.value.reason is DeadLetterReason.UNKNOWN_UNIT
    assert f"metric '{metric}' needs a unit" in str(e.value)


@pytest.mark.parametrize("metric", ["spo2", "pulse", "bp_systolic", "battery", "signal", "steps"])
def test_an_unambiguous_metric_without_a_unit_is_in_its_canonical_unit(metric):
    value = (METRICS[metric].low + METRICS[metric].high) / 2
    assert normalize(metric, value, None) == (value, METRICS[metric].unit)


@pytest.mark.parametrize(("metric", "value", "unit"), [
    ("spo2", 101, "%"), ("spo2", -1, "%"), ("spo2", 1.2, "/"), ("pulse", 351, "/min"),
    ("weight", -0.1, "kg"), ("weight", 1600, "lb"), ("glucose", 3000, "mg/dL"),
    ("body_temperature", 60, "Cel"), ("body_temperature", 0, "K"), ("signal", 40, "dBm"),
    ("spo2", math.nan, "%"), ("pulse", math.inf, "/min"), ("battery", -math.inf, "%"),
])
def test_a_value_no_working_sensor_can_report_is_impossible(metric, value, unit):
    with pytest.raises(UnitError) as e:
        normalize(metric, value, unit)
    assert e.value.reason is DeadLetterReason.IMPOSSIBLE_VALUE


def test_the_range_is_checked_in_the_canonical_unit_and_both_are_named():
    with pytest.raises(UnitError) as e:
        normalize("weight", 1600, "lb")
    assert str(e.value) == ("weight 1600 lb (= 725.748 kg) is outside what a working sensor can "
                            "report: 0 to 700 kg")


def test_the_range_edges_are_possible():
    assert normalize("spo2", 100, "%") == (100.0, "%")
    assert normalize("spo2", 0, "%") == (0.0, "%")


def test_celsius_is_cel_not_c_which_is_the_coulomb():
    with pytest.raises(UnitError):
        normalize("temperature", 21, "C")


def test_senml_beats_is_a_count_not_a_rate_and_is_refused_for_pulse():
    with pytest.raises(UnitError):
        normalize("pulse", 70, "beats")


def test_the_array_conversion_gives_what_the_single_value_conversion_gives():
    values = [60.0, 98.6, 104.0, 200.0]
    got, possible = normalize_array("body_temperature", values, "[degF]")
    single = [conversion("body_temperature", "[degF]")[1].to_canonical(v) for v in values]
    assert got.tolist() == single
    assert possible.tolist() == [True, True, True, False]


def test_the_array_conversion_marks_nan_impossible():
    _, possible = normalize_array("spo2", np.array([97.0, np.nan]), "%")
    assert possible.tolist() == [True, False]


def test_the_decoders_fast_table_says_what_the_catalogue_says():
    for name, m in METRICS.items():
        expected = {u: (c.shift, c.mul, c.div, m.low, m.high, m.unit) for u, c in m.units.items()}
        if m.assume_unit:
            expected[None] = (0.0, 1.0, 1.0, m.low, m.high, m.unit)
        assert FAST[name] == expected
