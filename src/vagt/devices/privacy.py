"""Citizens are pseudonymous references: what one may look like, and never a CPR number.

A Danish civil registration (CPR) number is DDMMYY-XXXX, often written as 10 digits. vagt
refuses any text with something shaped like one in it (the database refuses it in a citizen
reference too), and never repeats the value in a message: the message could end up in a log.
"""

from __future__ import annotations

import re
import unicodedata

from vagt.devices.errors import InvalidValue
from vagt.privacy import contains_cpr
from vagt.text import unprintable_problem

MAX_CITIZEN_REF = 64
MAX_MUNICIPALITY = 100
MAX_NOTE = 500

# Matched against a name in lower case with separators as "_": a name with "cpr" anywhere in
# it ("Borger CPR", "patient_cpr", "cprnr"), personnummer, person_nr, pnr, civil
# registration number, social security number.
_CPR_NAME = re.compile(r"cpr|person_?n(umme)?r|person_?number|civil_?reg|social_?security"
                       r"|(^|_)p_?nr($|_)|(^|_)ssn($|_)")
_CITIZEN_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
# A name (lower case, separators as "_") that announces who the citizen is or where they
# live, in English or Danish: a word of it is an address, phone, e-mail or birthday word
# ("gateway_address" is the citizen's home), or it names a person (`_PERSON_NAME`;
# "model_name" does not). A network word right before one of those words is the device's
# own ("mac_address", "sim_phone", "mobile_operator"), and only that pair is let through.
_CONTACT_WORDS = frozenset({
    "address", "adresse", "addr", "street", "vejnavn", "postnr", "postnummer", "postcode",
    "postal", "zipcode", "phone", "telephone", "telefon", "telefonnr", "telefonnummer", "tlf",
    "tlfnr", "mobile", "mobil", "mobilnr", "email", "mail", "birthday", "birthdate", "birth",
    "dob", "foedselsdato", "fodselsdato", "fødselsdato", "fødselsdag"})
_NETWORK_PAIRS = frozenset({
    *((n, a) for n in ("mac", "ip", "ipv4", "ipv6", "ble", "bt", "bluetooth", "lan", "wifi",
                       "mqtt", "server", "broker") for a in ("address", "addr")),
    *((n, p) for n in ("sim", "modem") for p in ("phone", "telefon", "tlf", "mobile", "mobil",
                                                 "mobilnr", "telefonnr", "tlfnr")),
    *((m, o) for m in ("mobile", "mobil") for o in ("operator", "network", "data", "modem"))})
# A word naming the citizen, last in the name or before a word of identity: "borger_id",
# "patient_nr", "citizen ref", "borger" are the citizen's, not the device's, and an
# attribute stays with the device when it goes to the next citizen (only the assignment's
# pseudonymous citizen_ref is the citizen's). "patient_monitor_mode" or "borger_app_version"
# are the device's.
_CITIZEN_WORDS = frozenset({"citizen", "borger", "patient", "beboer", "borgers", "patients"})
_IDENTITY_WORDS = frozenset({"id", "nr", "no", "number", "nummer", "ref", "reference", "key",
                             "kode", "code", "ident", "identifier"})
_PERSON_WORDS = ("citizen", "borger", "patient", "person", "contact", "kontakt", "relative",
                 "paaroerende", "pårørende", "owner", "ejer", "first", "last", "full", "fulde",
                 "sur", "given", "for", "efter")
# The whole name, or its last two words, name a person: "name", "person", "firstname",
# "contactperson", "borgernavn", "first_name", "device_owner_name" ("last_firmware_name" is not).
_PERSON_NAME = re.compile(rf"^({'|'.join(_PERSON_WORDS)})?_?(name|navn|person)$")

CPR_ADVICE = "vagt never stores CPR numbers: remove it (a pseudonymous citizen reference may stay)"


class PrivacyError(InvalidValue):
    """A value is not allowed in vagt because of what it could reveal, or is not a reference."""


def looks_like_cpr_name(name: str) -> bool:
    """A column or attribute name that announces a CPR number (cpr, Borger CPR, CPR-nr,
    personnummer), or holds something shaped like one."""
    return bool(_CPR_NAME.search(re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_"))
                ) or contains_cpr(name)


def looks_like_personal_data_name(name: str) -> bool:
    """A column or attribute name that announces a citizen's name, address, phone number,
    e-mail or birthday, or names the citizen (`borger_id`, `patient_nr`): data about who the
    citizen is, which vagt does not keep (a pseudonymous reference is all it knows of them)."""
    key = re.sub(r"[^a-zæøå0-9]+", "_", name.lower()).strip("_")
    words = key.split("_")
    for k in range(len(words) - 1):        # "mac_address": the device's, not the citizen's
        if (words[k], words[k + 1]) in _NETWORK_PAIRS:
            words[k] = words[k + 1] = ""
    names_citizen = any(w in _CITIZEN_WORDS and (k == len(words) - 1
                                                  or words[k + 1] in _IDENTITY_WORDS)
                        for k, w in enumerate(words))
    return not _CONTACT_WORDS.isdisjoint(words) or names_citizen or bool(
        _PERSON_NAME.match(key) or _PERSON_NAME.match("_".join(words[-2:])))


PERSONAL_DATA_ADVICE = ("vagt keeps no names, addresses, phone numbers, e-mail addresses or "
                        "other identifiers of citizens, only a pseudonymous citizen_ref (an "
                        "attribute stays with the device when it goes to the next citizen): "
                        "remove the column (or rename it if it is about the device)")


def citizen_ref_problem(value: str) -> str | None:
    """Why `value` cannot be a citizen reference, or None when it can."""
    if not value:
        return "the citizen reference is empty"
    if contains_cpr(value):
        return ("the citizen reference looks like a civil registration (CPR) number "
                "(DDMMYY-XXXX or 10 digits); vagt never stores CPR numbers: use the "
                "pseudonymous reference from the municipality's care system")
    if len(value) > MAX_CITIZEN_REF or not _CITIZEN_REF.match(value):
        return (f"the citizen reference is not valid: use 1 to {MAX_CITIZEN_REF} of "
                "A-Z a-z 0-9 . _ : - (a pseudonymous reference such as cit-7f3a9c01e2d4)")
    return None


def checked_citizen_ref(value: str) -> str:
    """The reference, stripped; PrivacyError saying why when it cannot be one."""
    value = value.strip()
    problem = citizen_ref_problem(value)
    if problem:
        raise PrivacyError(problem)
    return value


def municipality_problem(value: str) -> str | None:
    if not value:
        return "the municipality is empty"
    if contains_cpr(value):
        return ("the municipality holds something shaped like a civil registration (CPR) "
                "number; vagt never stores CPR numbers")
    if len(value) > MAX_MUNICIPALITY:
        return f"the municipality is not valid: use 1 to {MAX_MUNICIPALITY} printable characters"
    return unprintable_problem(value, "the municipality")


def same_spelling(municipality: str) -> str:
    """The name as it is kept: its spaces folded, its letters composed (NFC). "Århus" saved
    by a Mac (an "A" and a combining ring) looks the same and is not: two municipalities."""
    return unicodedata.normalize("NFC", " ".join(municipality.split()))


def checked_note(note: str | None) -> str | None:
    """A free-text note for the audit trail, its white space folded, or None; refused if it
    holds a CPR number or a character that is not printable (vagt.text)."""
    note = " ".join((note or "").split())
    if not note:
        return None
    if contains_cpr(note):
        raise PrivacyError("the note holds something shaped like a civil registration (CPR) "
                           "number; vagt never stores CPR numbers: leave it out")
    if len(note) > MAX_NOTE:
        raise PrivacyError(f"the note is longer than {MAX_NOTE} characters")
    if problem := unprintable_problem(note, "the note"):
        raise InvalidValue(problem)
    return note


def checked_attributes(attributes: dict[str, str]) -> dict[str, str]:
    """Attributes kept with a device (serial number, asset tag): none may be or announce a
    CPR number, nor announce a citizen's name, address or contact details, nor hold a
    character that is not printable (vagt.text; a value may hold line breaks, as a cell of
    a spreadsheet may)."""
    for key, value in attributes.items():
        if contains_cpr(key):
            raise PrivacyError("the name of an attribute holds something shaped like a civil "
                               f"registration (CPR) number; {CPR_ADVICE}")
        if problem := unprintable_problem(key, "the name of an attribute"):
            raise InvalidValue(problem)   # before the messages below repeat the name
        if looks_like_cpr_name(key):
            raise PrivacyError(f"the attribute '{key}' looks like a civil registration (CPR) "
                               f"number; {CPR_ADVICE}")
        if looks_like_personal_data_name(key):
            raise PrivacyError(f"the attribute '{key}' looks like personal data about a "
                               f"citizen; {PERSONAL_DATA_ADVICE}")
        if contains_cpr(value):
            raise PrivacyError(f"the value of attribute '{key}' holds something shaped like "
                               f"a civil registration (CPR) number; {CPR_ADVICE}")
        if problem := unprintable_problem(value, f"the value of attribute '{key}'",
                                          line_breaks=True):
            raise InvalidValue(problem)
    return attributes
