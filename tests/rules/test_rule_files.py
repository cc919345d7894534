"""Rule files: the defaults load, and every error names the file, the rule and the field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vagt.rules import RuleConfigError, load_rules
from vagt.rules.persist import definition_hash, hashes_read


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "pulse.toml"
    p.write_text(text)
    return p


def test_default_rules_load_and_include_the_personal_alarm():
    rules = {r.name: r for r in load_rules(None)}
    assert rules["personal_alarm"].queue == "emergency"
    assert rules["personal_alarm"].priority == 1
    assert rules["battery_low"].below == 15


def test_a_value_that_is_not_a_number_is_refused_naming_file_rule_and_field(tmp_path):
    p = write(tmp_path, '[[rule]]\nname = "spo2_low"\nkind = "threshold"\nmetric = "spo2"\n'
                        'below = "ninety"\n')
    with pytest.raises(RuleConfigError) as e:
        load_rules(p)
    assert str(e.value) == (f"'below' of rule 'spo2_low' in {p} must be a number, got 'ninety'")


def test_an_unknown_field_is_refused_with_the_allowed_fields(tmp_path):
    p = write(tmp_path, '[[rule]]\nname = "x"\nkind = "event"\ncodes = ["alarm.*"]\nqeue = "a"\n')
    with pytest.raises(RuleConfigError, match=r"'qeue' of rule 'x' .* is not a field of an? event"):
        load_rules(p)


def test_an_unknown_kind_is_refused(tmp_path):
    p = write(tmp_path, '[[rule]]\nname = "x"\nkind = "magic"\n')
    with pytest.raises(RuleConfigError, match=r"'kind' of rule 'x' .* must be one of"):
        load_rules(p)


def test_duplicate_rule_names_across_files_are_refused(tmp_path):
    (tmp_path / "a.toml").write_text('[[rule]]\nname = "x"\nkind = "event"\ncodes = "a.*"\n')
    (tmp_path / "b.toml").write_text('[[rule]]\nname = "x"\nkind = "event"\ncodes = "b.*"\n')
    with pytest.raises(RuleConfigError, match="also defined in"):
        load_rules(tmp_path)


def test_clear_level_on_the_wrong_side_of_the_threshold_is_refused(tmp_path):
    p = write(tmp_path, '[[rule]]\nname = "b"\nkind = "threshold"\nmetric = "battery"\n'
                        'below = 15\nclear_at = 10\n')
    with pytest.raises(RuleConfigError, match="'clear_at' of rule 'b'"):
        load_rules(p)


def test_invalid_toml_is_refused_naming_the_file(tmp_path):
    p = write(tmp_path, "[[rule]\n")
    with pytest.raises(RuleConfigError, match=f"{p}: not valid TOML"):
        load_rules(p)


def test_every_kind_of_the_default_rules_loads_with_its_filters():
    rules = {r.name: r for r in load_rules(None)}
    assert {r.kind for r in rules.values()} == {"threshold", "validity", "stuck", "event",
                                                "absence", "sequence", "rate", "flapping",
                                                "clock"}
    assert rules["spo2_low_sustained"].for_s == 600 and rules["spo2_low"].for_s == 0
    assert rules["spo2_low"].types == ("pulse_oximeter",)
    assert rules["weight_gain"].window_s == 3 * 86400
    assert rules["missed_dose"].queue == "home_care"


def test_a_bad_duration_is_refused_naming_the_field_and_the_forms_allowed(tmp_path):
    p = write(tmp_path, '[[rule]]\nname = "spo2_low"\nkind = "threshold"\nmetric = "spo2"\n'
                        'below = 90\nfor = "ten minutes"\n')
    with pytest.raises(RuleConfigError) as e:
        load_rules(p)
    assert str(e.value).startswith(f"'for' of rule 'spo2_low' in {p} must be a duration")


def test_a_sequence_without_its_window_is_refused(tmp_path):
    p = write(tmp_path, '[[rule]]\nname = "dose"\nkind = "sequence"\nfirst = "dose.due"\n'
                        'then = "dose.taken"\n')
    with pytest.raises(RuleConfigError, match=r"'within' of rule 'dose' .* must be a duration"):
        load_rules(p)


def test_a_field_of_another_kind_is_refused(tmp_path):
    p = write(tmp_path, '[[rule]]\nname = "s"\nkind = "stuck"\nmetric = "spo2"\ncount = 5\n'
                        'below = 3\n')
    with pytest.raises(RuleConfigError, match=r"'below' of rule 's' .* is not a field of a "
                                              r"stuck rule"):
        load_rules(p)


def test_stuck_needs_a_count_of_at_least_two(tmp_path):
    p = write(tmp_path, '[[rule]]\nname = "s"\nkind = "stuck"\nmetric = "spo2"\ncount = 1\n')
    with pytest.raises(RuleConfigError, match=r"'count' of rule 's' .* at least 2, got 1"):
        load_rules(p)


def test_rate_needs_exactly_one_of_rise_and_fall(tmp_path):
    p = write(tmp_path, '[[rule]]\nname = "w"\nkind = "rate"\nmetric = "weight"\nwindow = "3d"\n'
                        'rise = 2\nfall = 2\n')
    with pytest.raises(RuleConfigError, match=r"'rise' of rule 'w' .* exactly one"):
        load_rules(p)


def test_filters_must_be_lists_of_names(tmp_path):
    p = write(tmp_path, '[[rule]]\nname = "a"\nkind = "event"\ncodes = "alarm.*"\ntypes = [3]\n')
    with pytest.raises(RuleConfigError, match=r"'types' of rule 'a' .* list of names"):
        load_rules(p)


def test_a_file_not_in_utf_8_or_not_readable_is_refused_naming_the_file(tmp_path):
    p = tmp_path / "rules.toml"
    p.write_bytes('# Sønderborg\n[[rule]]\nname = "x"\nkind = "event"\ncodes = ["a.*"]\n'
                  .encode("latin-1"))
    with pytest.raises(RuleConfigError, match=f"{p}: not UTF-8 text"):
        load_rules(p)
    folder = tmp_path / "rules.d"
    (folder / "a.toml").mkdir(parents=True)   # a folder where a file should be
    with pytest.raises(RuleConfigError, match="a.toml: cannot be read"):
        load_rules(folder)


def test_max_gap_defaults_to_the_for_duration_and_needs_one(tmp_path):
    rule = '[[rule]]\nname = "low"\nkind = "threshold"\nmetric = "spo2"\nbelow = 90\n'
    (low,) = load_rules(write(tmp_path, rule + 'for = "10m"\n'))
    assert (low.max_gap_s, low.gap_s) == (None, 600)
    (low,) = load_rules(write(tmp_path, rule + 'for = "10m"\nmax_gap = "2m"\n'))
    assert low.gap_s == 120
    with pytest.raises(RuleConfigError, match=r"'max_gap' of rule 'low' .* give 'for' too"):
        load_rules(write(tmp_path, rule + 'max_gap = "2m"\n'))
    with pytest.raises(RuleConfigError, match=r"'max_gap' of rule 'low' .* longer than 0"):
        load_rules(write(tmp_path, rule + 'for = "10m"\nmax_gap = 0\n'))


def test_a_rule_without_max_gap_keeps_the_definition_hash_its_stored_state_is_under(tmp_path):
    # the state every engine stored before max_gap existed is read by the hash of the rule
    # (persist.definition_hash); a rule that does not use it must hash as it did
    (low,) = load_rules(write(tmp_path, '[[rule]]\nname = "spo2_low"\nkind = "threshold"\n'
                                        'metric = "spo2"\nbelow = 90\nclear_at = 93\n'
                                        'for = "10m"\n'))
    assert hashes_read(low.definition)[1] == "15ff5b721b1e"
    with_gap = dataclasses.replace(low, max_gap_s=120.0)
    assert with_gap.definition != low.definition   # a reload starts it afresh
    assert definition_hash(with_gap.definition) != definition_hash(low.definition)  # as stored


def test_a_clock_rule_takes_its_skew_and_time_and_refuses_a_skew_a_drift_would_reach(tmp_path):
    rule = '[[rule]]\nname = "c"\nkind = "clock"\n'
    (c,) = load_rules(write(tmp_path, rule))
    assert (c.max_skew_s, c.for_s) == (3600.0, 900.0)
    (c,) = load_rules(write(tmp_path, rule + 'max_skew = "6h"\nfor = "1h"\n'))
    assert (c.max_skew_s, c.for_s) == (6 * 3600.0, 3600.0)
    with pytest.raises(RuleConfigError, match=r"'max_skew' of rule 'c' .* at least 10 minutes"):
        load_rules(write(tmp_path, rule + 'max_skew = "5m"\n'))
