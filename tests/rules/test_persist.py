"""Rule state packed into rows and back: another engine continues exactly where this one was."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
from tests.rules.harness import Harness

from vagt.rules.config import Rule
from vagt.rules.persist import Layout, definition_hash, pack, unpack

RULES = """
[[rule]]
name = "stuck"
kind = "stuck"
metric = "spo2"
count = 5
severity = "warning"
priority = 4
queue = "technical"
summary = "stuck"

[[rule]]
name = "dose"
kind = "sequence"
first = ["dose.due*"]
then = ["dose.taken"]
within = "30m"
severity = "major"
priority = 2
queue = "home_care"
summary = "missed"

[[rule]]
name = "flap"
kind = "flapping"
codes = ["link.*"]
count = 3
window = "1h"
stable = "1h"
severity = "warning"
priority = 4
queue = "technical"
summary = "flapping"
"""
T = 1_700_000_000.0


def arrays(h: Harness, rows: list[int]) -> dict[tuple[str, str], str]:
    """Every state array's values for the devices `rows`, as text (so that NaN equals NaN)."""
    return {(r.name, name): str(st.at(name, np.array(rows)).tolist())
            for r, st in h.engine.rule_states() for name, _, _, _ in st.arrays()}


def test_state_packed_and_unpacked_in_another_engine_is_the_same_state(tmp_path):
    h = Harness(tmp_path, RULES)
    h.batch(readings=[(0, "spo2", 95, T + k) for k in range(3)],
            events=[(2, "dose.due", T), (2, "dose.due.evening", T + 60), (4, "link.down", T),
                    (4, "link.up", T + 5)])
    rows = np.array([0, 2, 4], dtype=np.int64)
    with h.engine.lock:
        p = pack(h.engine, rows)
    other = Harness(tmp_path, RULES)
    unpack(other.engine, rows, p.layout, p.slots, p.values, p.texts)
    assert arrays(other, [0, 2, 4]) == arrays(h, [0, 2, 4])
    assert arrays(other, [2])[("dose", "pending_code")] == "['dose.due']"  # a text slot
    assert arrays(other, [2])[("dose", "pending_more_code")] == \
        "[['dose.due.evening', '', '']]"  # and a row of them

    # and it goes on from there: two more identical values make the five in a row
    for e in (h, other):
        e.batch(readings=[(0, "spo2", 95, T + 3), (0, "spo2", 95, T + 4)])
    assert other.book.open_ == h.book.open_ == {("stuck", 0): T + 4}


def test_a_device_with_nothing_to_remember_packs_to_an_empty_row(tmp_path):
    h = Harness(tmp_path, RULES)
    h.batch(readings=[(0, "spo2", 95, T)])
    with h.engine.lock:
        p = pack(h.engine, np.array([1], dtype=np.int64))
    assert (p.slots, p.values, p.texts) == ([b""], [b""], [None])


def test_a_rule_whose_definition_differs_is_not_read_into(tmp_path):
    h = Harness(tmp_path, RULES)
    h.batch(readings=[(0, "spo2", 95, T + k) for k in range(3)])
    with h.engine.lock:
        p = pack(h.engine, np.array([0], dtype=np.int64))
    changed = Harness(tmp_path, RULES.replace("count = 5", "count = 7"))
    unpack(changed.engine, np.array([0], dtype=np.int64), p.layout, p.slots, p.values, p.texts)
    assert ("stuck", "run") not in arrays(changed, [0])  # starts afresh, as a reload does


def test_state_an_engine_of_before_stored_under_its_rules_repr_is_read(tmp_path):
    # until 2026-12-06 a rule's state was kept under the hash of its repr
    h = Harness(tmp_path, RULES)
    h.batch(events=[(2, "dose.due", T)])
    rows = np.array([2], dtype=np.int64)
    with h.engine.lock:
        p = pack(h.engine, rows)
    by_repr = {r.name: hashlib.sha256(repr(r.definition).encode()).hexdigest()[:12]
               for r, _ in h.engine.rule_states()}
    old = Layout(json.dumps([[e[0], by_repr[e[0]], *e[2:]] for e in p.layout.entries]))
    assert old.spec != p.layout.spec
    other = Harness(tmp_path, RULES)
    unpack(other.engine, rows, old, p.slots, p.values, p.texts)
    assert arrays(other, [2])[("dose", "pending_code")] == "['dose.due']"


def test_a_field_added_to_rules_later_leaves_the_hash_their_state_is_under(tmp_path):
    # with a default, as every field after the first must have; set, it is a changed rule
    later = dataclasses.make_dataclass("Rule", [("new_setting", float, dataclasses.field(
        default=1.0))], bases=(Rule,), frozen=True)
    for rule, _ in Harness(tmp_path, RULES).engine.rule_states():
        d = rule.definition
        assert definition_hash(later(**dataclasses.asdict(d))) == definition_hash(d)
        assert definition_hash(later(**dataclasses.asdict(d), new_setting=2.0)) != \
            definition_hash(d)
