"""Rule files: the defaults load, and every error names the file, the rule and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from vagt.rules import RuleConfigError, load_rules


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
