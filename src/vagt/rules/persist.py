"""Rules' per-device state as bytes, so it can be kept in a table beside the device.

Two engine processes that share one MQTT subscription both get messages of the same device;
each must continue from the state the other left. `pack` turns some devices' state, across
every rule, into one row per device; `unpack` puts rows back into the engine's arrays.

A row is sparse: only slots that differ from their array's fill are stored, as two byte
strings (slot numbers as uint16, values as float64), and text slots (a pending dose's code;
a list where the array has columns) as JSON. The slots are named by a layout: one (rule,
definition hash, array, dtype, width, fill) per array, shared by every row packed at the
same time. A rule whose definition differs between the writer and the reader (a reload
reached one process first) is skipped on reading, exactly as a reload starts a changed rule
afresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from vagt.rules._columns import F64, I64
from vagt.rules.config import Rule
from vagt.rules.engine import RuleEngine

_NUMERIC = {"f8": np.float64, "i8": np.int64, "b1": np.bool_}


def definition_hash(rule: Rule) -> str:
    """What a rule's stored state is kept under: a hash of the fields its definition sets to
    other than their defaults, by name. A field added to `Rule` later (with a default) leaves
    every hash as it was, so the state engines stored before (pending doses, runs, open
    timers) is still read; a field changed makes a new hash, and the rule starts afresh, as
    a reload does."""
    given = {f.name: getattr(rule, f.name) for f in dataclasses.fields(rule)
             if getattr(rule, f.name) != _default(f)}
    text = json.dumps(given, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _default(f: dataclasses.Field[object]) -> object:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def hashes_read(rule: Rule) -> tuple[str, str]:
    """The hashes a rule's stored state is read under: `definition_hash`, and the hash of
    its repr that state was stored under until 2026-12-06 (a field added to the repr changed
    every rule's; the fields since then are out of it). An engine of before that date reads
    only the latter: while old and new engines share a subscription, a device's state the
    new one wrote starts afresh in the old."""
    return definition_hash(rule), hashlib.sha256(repr(rule).encode()).hexdigest()[:12]


# Per rule, by identity (a Rule is unhashable: its labels are a dict), the hashes its state
# is written and read under. Worked out at every pack and unpack, they took 0.4 ms for the 18
# default rules, a few per cent of the alarm lane's CPU (it packs at each alarm). A Rule is
# frozen; the entry holds it, so its id is not another's while it is kept.
_HASHES: dict[int, tuple[Rule, tuple[str, str]]] = {}
_HASHES_KEPT = 1024


def stored_under(rule: Rule) -> tuple[str, str]:
    """`hashes_read(rule.definition)`: the first is the one its state is written under."""
    got = _HASHES.get(id(rule))
    if got is None:
        if len(_HASHES) >= _HASHES_KEPT:   # rules of reloads long past
            _HASHES.clear()
        got = _HASHES[id(rule)] = (rule, hashes_read(rule.definition))
    return got[1]


@dataclass(frozen=True)
class Layout:
    """Which array every slot of a row belongs to; `key` names it in the database."""

    spec: str   # JSON: [[rule, definition hash, array, dtype, width, fill], ...]

    @cached_property
    def entries(self) -> list[tuple[str, str, str, str, int, object]]:
        return [tuple(e) for e in json.loads(self.spec)]

    @cached_property
    def key(self) -> int:
        """A signed 63-bit number from the spec's hash (a bigint key; equal specs, equal keys)."""
        return int.from_bytes(hashlib.sha256(self.spec.encode()).digest()[:8], "big") >> 1

    @cached_property
    def numeric(self) -> list[tuple[int, int]]:
        """(entry, first slot) of the numeric entries; each takes `width` (or 1) slots."""
        out, slot = [], 0
        for k, e in enumerate(self.entries):
            if e[3] in _NUMERIC:
                out.append((k, slot))
                slot += max(1, e[4])
        return out

    @cached_property
    def fills(self) -> F64:
        parts = [np.full(max(1, self.entries[k][4]), float(self.entries[k][5]))  # type: ignore[arg-type]
                 for k, _ in self.numeric]
        return np.concatenate(parts) if parts else np.empty(0)


@dataclass
class Packed:
    """Rows of some devices' state, in the order of the device indexes packed."""

    layout: Layout
    slots: list[bytes]
    values: list[bytes]
    texts: list[str | None]


def layout(engine: RuleEngine) -> Layout:
    """The layout of the engine's arrays as they are now (they appear as rules first use them)."""
    entries = []
    for rule, st in engine.rule_states():
        h = stored_under(rule)[0]
        for name, a, fill, width in st.arrays():
            dtype = "o" if a.dtype == object else a.dtype.str[1:]
            entries.append([rule.name, h, name, dtype, width,
                            fill if dtype == "o" else float(fill)])  # type: ignore[arg-type]
    return Layout(json.dumps(entries))


def pack(engine: RuleEngine, rows: I64) -> Packed:
    """The state of the devices `rows` (fleet indexes), one row each. Call under
    engine.lock."""
    lay = layout(engine)
    states = dict((r.name, st) for r, st in engine.rule_states())
    k = len(rows)
    cols = []
    texts: list[dict[str, str | list[str]]] = [{} for _ in range(k)]
    for e, entry in enumerate(lay.entries):
        rule, _, name, dtype, width, fill = entry
        got = states[rule].at(name, rows)
        if dtype == "o":
            empty = [fill] * width if width else fill   # a row of fills where it has columns
            for j, v in enumerate(got.tolist()):
                if v != empty:
                    texts[j][str(e)] = [str(x) for x in v] if width else str(v)
        else:
            cols.append(got.astype(np.float64).reshape(k, max(1, width)))
    matrix = np.hstack(cols) if cols else np.empty((k, 0))
    fills = lay.fills
    differ = ~((matrix == fills) | (np.isnan(matrix) & np.isnan(fills)))
    r, c = np.nonzero(differ)  # row-major: each row's slots together, in slot order
    ends = np.cumsum(np.bincount(r, minlength=k))
    starts = ends - np.bincount(r, minlength=k)
    slot_bytes = c.astype("<u2").tobytes()
    value_bytes = matrix[r, c].astype("<f8").tobytes()
    return Packed(lay,
                  [slot_bytes[2 * a:2 * b] for a, b in zip(starts.tolist(), ends.tolist())],
                  [value_bytes[8 * a:8 * b] for a, b in zip(starts.tolist(), ends.tolist())],
                  [json.dumps(t) if t else None for t in texts])


def unpack(engine: RuleEngine, rows: I64, lay: Layout, slots: list[bytes],
           values: list[bytes], texts: list[str | None]) -> None:
    """Put stored rows back: every slot the layout names is set (to its fill where the row
    holds nothing); arrays the layout does not name keep what they had. Call under
    engine.lock."""
    if len(rows) == 0:
        return
    states = {r.name: (stored_under(r), st) for r, st in engine.rule_states()}
    lengths = np.fromiter((len(s) // 2 for s in slots), dtype=np.int64, count=len(slots))
    c = np.frombuffer(b"".join(slots), dtype="<u2").astype(np.int64)
    v = np.frombuffer(b"".join(values), dtype="<f8")
    stored = (np.repeat(np.arange(len(rows)), lengths), c)   # (row, slot) each row holds
    matrix = np.tile(lay.fills, (len(rows), 1))
    matrix[stored] = v
    given = np.zeros(matrix.shape, dtype=bool)   # the slots a row holds (not the fill)
    given[stored] = True
    for e, first in lay.numeric:
        rule, h, name, dtype, width, fill = lay.entries[e]
        here = states.get(rule)
        if here is None or h not in here[0]:
            continue
        block = matrix[:, first:first + max(1, width)]
        here[1].put_at(name, rows, block if width else block[:, 0],
                       np.asarray(given[:, first:first + max(1, width)].any(axis=1)), fill,
                       _NUMERIC[dtype], width)
    parsed = [json.loads(t) if t else {} for t in texts]
    for e, entry in enumerate(lay.entries):
        rule, h, name, dtype, width, fill = entry
        here = states.get(rule)
        if dtype != "o" or here is None or h not in here[0]:
            continue
        text = np.empty((len(rows), width) if width else len(rows), dtype=object)
        text[:] = str(fill)
        held = np.array([str(e) in got for got in parsed], dtype=bool)
        for j in np.flatnonzero(held).tolist():
            text[j] = parsed[j][str(e)]
        here[1].put_at(name, rows, text, held, fill, object, width)
