"""What vagt takes for a CPR number in free text, and what it must not: a table of cases."""

from __future__ import annotations

import pytest

from vagt.devices.privacy import looks_like_cpr_name
from vagt.privacy import contains_cpr, mask_cpr


@pytest.mark.parametrize("text", [
    "cpr 010190-1234, bor alene",         # inside a sentence
    "borger 010190\u20131234",            # an en dash, as a word processor writes '-'
    "cpr 010190 \u2013 1234",             # ... with spaces around it
    "010190\u22121234",                   # a minus sign
    "010190.1234", "010190_1234", "010190:1234", "cpr 010190/1234",
    "cit:010190:1234",                    # inside a reference
    "cpr 01 01 90 1234", "cpr 01.01.90-1234", "01-01-90-1234",
    "x.010190-1234",                      # after a dot that follows no number
    "cpr0101901234", "personnr0101901234",  # glued to the word that announces it
    "010190\u00a01234",                   # a no-break space
    "311299-1234", "0101901234",
    "0101 90 1234",                       # read aloud: the day and month, the year, the serial
    "01.01.1990-1234", "cpr 01/01/1990 1234",   # the year with its century
    "cpr 01.01.90 1234", "cpr-nr. 01.01.90 0930",   # a date and a time, but announced
    "personnummer: 01.01.1990 1234",
])
def test_a_cpr_number_written_any_common_way_is_found(text):
    assert contains_cpr(text)


@pytest.mark.parametrize("text", [
    "356938035643809",                    # an IMEI (15 digits)
    "01019012345", "10101901234",         # eleven digits: longer than a CPR number
    "001122334455",                       # a MAC address without separators
    "01:01:90:12:34:56", "00:1A:2B:3C:4D:5E", "01-01-90-12-34-56",
    "+4520123456", "+45 20 12 34 56", "12 34 56 78",   # phone numbers
    "SN0101901234",                       # inside a word of letters and digits
    "cit-1234567890ab", "cit-7f3a9c01e2d4",
    "123e4567-e89b-12d3-a456-426614174000",
    "3201901234", "0113901234",           # no day 32, no month 13
    "2024-01-15", "15.01.2024 12:30", "fw 1.02.03.1234",
    "101901234",                          # nine digits, in a column not named for CPR
    "10.10.10.10:8883", "172.16.10.20:1883",   # an IPv4 address and its port
    "besøg 12.03.24 0930-1000 ok", "ny adapter 23.11.20 1030",   # a date and a time
    "besøg 12.03.2024 0930", "01.01.2024 10:30:00",            # ... with the century
    "2012 34 56", "+45 2012 3456",        # phone numbers in pairs and fours
])
def test_digits_that_are_not_a_cpr_number_are_let_through(text):
    assert not contains_cpr(text)


def test_nine_digits_are_a_cpr_number_without_its_zero_in_a_column_named_for_cpr():
    assert contains_cpr("101901234", cpr_column=True)


@pytest.mark.parametrize(("text", "masked", "n"), [
    ("101901234", "[cpr removed]", 1),
    ("101901234, 0101901234", "[cpr removed], [cpr removed]", 2),
    ("1019012345 101901234x", "1019012345 101901234x", 0),   # ten digits, in a word
])
def test_nine_digits_are_masked_in_a_column_named_for_cpr_as_they_are_found(text, masked, n):
    assert mask_cpr(text, cpr_column=True) == (masked, n)
    assert not contains_cpr(masked, cpr_column=True)
    assert mask_cpr("101901234") == ("101901234", 0)


@pytest.mark.parametrize("name", ["Borger CPR", "patient_cpr", "cprnr", "CPR-nr", "pnr", "p_nr",
                                  "personnr", "Personnummer", "social security number", "SSN",
                                  "note 010190-1234"])
def test_a_name_with_cpr_in_it_announces_a_cpr_number(name):
    assert looks_like_cpr_name(name)


@pytest.mark.parametrize("name", ["serial", "snr", "description", "mac_address", "asset_tag",
                                  "imei", "mqtt_user_name"])
def test_a_name_about_the_device_does_not_announce_a_cpr_number(name):
    assert not looks_like_cpr_name(name)


@pytest.mark.parametrize(("text", "masked", "n"), [
    ("ringede til 010190-1234 kl 10", "ringede til [cpr removed] kl 10", 1),
    ("a\n01\n01\n90  1234\tb", "a\n[cpr removed]\tb", 1),    # white space around kept
    ("0101901234.0101901234", "[cpr removed].[cpr removed]", 2),
    ("besøg 12.03.24 0930, cpr 020290-1234", "besøg 12.03.24 0930, cpr [cpr removed]", 1),
    ("fw 1.02.03.1234", "fw 1.02.03.1234", 0),
    # escapes read as what they write: a payload's JSON text, a device's string by repr
    ('{"note": "ringede 010190\\n1234"}', '{"note": "ringede [cpr removed]"}', 1),
    ("metric 'cpr 010190\\xa01234' is not known", "metric 'cpr [cpr removed]' is not known", 1),
    ("01\\/01\\/90\\u2013 1234 and C:\\temp\\n5", "[cpr removed] and C:\\temp\\n5", 1),
])
def test_masking_replaces_each_cpr_number_and_keeps_the_rest(text, masked, n):
    assert mask_cpr(text) == (masked, n)
    assert not contains_cpr(masked)
