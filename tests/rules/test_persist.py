"""Rule state packed into rows and back: another engine continues exactly where this one was."""

from __future__ import annotations

import numpy as np
from tests.rules.harness import Harness

from vagt.rules.persist import pack, unpack

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
    """Every state array's values for `rows`, as text (so that NaN equals NaN)."""
    return {(r.name, name): str(np.asarray(a)[rows].tolist())
            for r, st in h.engine.rule_states() for name, a, _, _ in st.arrays()}


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
