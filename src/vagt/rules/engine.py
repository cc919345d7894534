"""The rule engine: rules with their per-device state, evaluated over batches and timer ticks.

One engine is shared by the lanes of a process (and by a backtest, which replays history
through the same code). Evaluation returns transitions and staged state; the caller applies
the state with `apply()`. The engine process does so inside the batch's transaction and reads
the state back from the database if that transaction rolls back (`vagt.app.rule_state`).

The state lives in per-device numpy arrays, a row for each device a rule applies to (a rule
for one device type has rows for those devices only: `RuleState.devices`; a rule judged by
event codes, only for the devices that sent one: `BY_CODE`); the kinds see a
batch and context numbered by their rule's rows (`_view`), and what they return is turned
back into the fleet's indexes. The engine process keeps the state in the `rule_state` table
too (`vagt.app.rule_state`, through `vagt.rules.persist`): restored at start, shared by
engines on one `$share` subscription. What a restart or a reload of a changed rule still
loses:
- a changed rule's state starts again, seeded from the alert queue (`seed`): an alert open
  before is still known to be open, so a clearing value still clears it;
- rate-of-change memory that does not reach back is rebuilt from the stored readings.

The alarm and bulk lanes evaluate under one lock (CPU only, short). Whoever evaluates a
device holds its row in the database, so a device is evaluated by one lane or process at a
time; if state from a later device time is in memory already, it stays (`Update.apply`).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from vagt.arrays import factorize, positions
from vagt.devices.catalogue import Catalogue
from vagt.rules._columns import F64, I64, Bools, Transitions
from vagt.rules.config import Rule
from vagt.rules.kinds import (
    absence,
    clock,
    event,
    flapping,
    rate,
    sequence,
    stuck,
    threshold,
    validity,
)
from vagt.rules.state import (
    Batch,
    Context,
    FleetView,
    HistorySource,
    RuleState,
    Update,
    places_in,
)

_EVALUATE = {
    "threshold": threshold.evaluate, "stuck": stuck.evaluate, "event": event.evaluate,
    "absence": absence.evaluate, "sequence": sequence.evaluate, "rate": rate.evaluate,
    "flapping": flapping.evaluate,
}
_TICK = {"event": event.tick, "sequence": sequence.tick, "flapping": flapping.tick}
# The kinds the fleet-wide sweep judges (`RuleEngine.sweep_absence`), from what every engine
# committed of each device's last message.
SWEPT = ("absence", "clock")
# The kinds whose rules keep a row only for the devices that sent one of their codes
# (`RuleEngine._cover_codes`): they judge nothing else, and most devices never send the
# code a rule waits for (a fall alarm, a tamper, mains power lost, a gateway's lost
# connection). A row per device of the fleet for each was 25 MB at 200,000 devices.
BY_CODE = ("event", "flapping")
# A rule with rows for fewer than one device in this many has them looked up by a binary
# search, not by a map of the whole fleet (4 bytes a device, for each such array of rows).
SPARSE = 16

# Per kind, the arrays that only say which rows its rules have seen (`RuleState.watermarks`):
# a batch that moves nothing else changes nothing they decide. Not flapping's `last_t`: its
# quiet time is measured from there. Absence has none (it goes by the fleet's last seen).
_WATERMARKS = {kind: ("last_t",) for kind in
               ("threshold", "stuck", "rate", "validity", "event", "sequence")}

# Per rule and device: how many rows its batches fired for, all told (ticks not counted: a
# timer's firing goes by its deadline, and a second one changes nothing). Late rows evaluated
# again from an earlier state leave it at what one evaluation in order makes it, so the
# difference is what the alert queue must count (`Pipeline.record`).
FIRED = "fired"


@dataclass
class _View:
    """What a rule's kind sees of a batch or tick: its state, and the context and batch
    numbered by the state's rows (`devices`: the fleet index of each; None, by the fleet's
    own); `readings`, which of the batch's reading rows it holds (None: all)."""

    state: RuleState
    ctx: Context
    batch: Batch | None
    readings: I64 | None
    devices: I64 | None


# The views of one evaluation or tick, by (id of the rows, events only): rules with the same
# rows share one, but a rule kept by code never shares one that has readings left out.
_Views = dict[tuple[int, bool], _View]


@dataclass
class _Rows:
    """A rule's rows (`RuleState.devices`) as the engine looks them up: `dense`, each fleet
    device's row (-1: none; 4 bytes a device, for each array of rows the rules have), or
    None where the rows are few (`SPARSE`) and a binary search finds them; and each row's
    (vendor, model) place in the plausible ranges."""

    devices: I64
    dense: npt.NDArray[np.int32] | None
    model: I64

    def of(self, devices: I64) -> I64:
        """The rows of `devices` (fleet indexes); -1 for a device with none."""
        if self.dense is None:
            return places_in(self.devices, devices)
        return self.dense[devices].astype(np.int64)


def _by_rows(history: HistorySource | None, devices: I64) -> HistorySource | None:
    """`history` for a rule's rows: asked and answered by row, not by fleet index."""
    if history is None:
        return None

    def by_rows(metric: str, rows: I64, since: float, until: float) -> tuple[I64, F64, F64]:
        d, t, v = history(metric, devices[rows], since, until)
        return places_in(devices, d), t, v
    return by_rows


@dataclass
class Evaluation:
    """What a batch (or a tick) did: alert transitions, bad readings, staged state."""

    rules: list[Rule]
    transitions: Transitions = field(default_factory=Transitions)
    bad: Bools = field(default_factory=lambda: np.zeros(0, dtype=bool))
    updates: list[Update] = field(default_factory=list)

    def changed_devices(self) -> I64:
        """The devices whose state the evaluation changes (dense indexes, sorted)."""
        return _unique([u.devices() for u in self.updates])

    def devices(self) -> I64:
        """The devices it changes state of or raises or clears an alert for."""
        t = self.transitions
        return _unique([u.devices() for u in self.updates] + list(t.dev) + list(t.c_dev))


def _state(rule: Rule) -> RuleState:
    """A rule's state: rows for the devices it applies to only, where its filters leave
    some out, and for the kinds judged by codes only as their codes come (`BY_CODE`). The
    swept kinds keep a row per device: their sweep judges the whole fleet (and clears an
    alert of a device the rule no longer applies to)."""
    every = rule.kind in SWEPT or rule.kind not in BY_CODE \
        and not (rule.types or rule.models or rule.municipalities)
    return RuleState(_WATERMARKS.get(rule.kind, ()), every_device=every)


def _unique(parts: list[I64]) -> I64:
    if not parts:
        return np.empty(0, dtype=np.int64)
    return np.unique(np.concatenate(parts)).astype(np.int64)


class RuleEngine:
    def __init__(self, rules: list[Rule], fleet: FleetView, catalogue: Catalogue | None = None,
                 history: HistorySource | None = None) -> None:
        self.fleet = fleet
        self.catalogue = catalogue
        self.history = history
        self.lock = threading.Lock()
        self._rules = list(rules)
        self._states: dict[str, RuleState] = {r.name: _state(r) for r in rules}
        self._applies: dict[str, Bools] = {}
        # of the rules kept for some devices only (`_view`): per array of their rows, its
        # map from the fleet; per rule, which of its rows it applies to
        self._rows: dict[int, _Rows] = {}
        self._applies_by_row: dict[str, tuple[I64, Bools]] = {}
        self._ranges: dict[str, tuple[F64, F64]] = {}
        self._model: I64 = np.empty(0, dtype=np.intp)
        self._heartbeat = np.empty(0)
        # (vendor, model) met so far: its row in the ranges and in _model_heartbeat
        self._models: dict[tuple[str, str], int] = {}
        self._model_heartbeat = np.empty(0)
        self._n = 0
        self._version = -1

    @property
    def rules(self) -> list[Rule]:
        return self._rules

    def rule_states(self) -> list[tuple[Rule, RuleState]]:
        """Every rule with its state (to persist it: `vagt.rules.persist`)."""
        return [(r, self._states[r.name]) for r in self._rules]

    def order_free_events(self, b: Batch) -> Bools:
        """Which event rows of `b` only rules that take them in any order read: event rules
        without clearing codes, where every alarm counts however late it comes (a fall
        alarm a device kept while offline). A row too late for the others still goes to
        them (see `Pipeline._evaluate_locked`)."""
        free = np.zeros(len(b.e_code), dtype=bool)
        bound = np.zeros(len(b.e_code), dtype=bool)
        for rule in self._rules:
            if rule.kind == "event" and not rule.clear_codes:
                free |= b.code_mask(rule.codes)
            else:
                bound |= b.code_mask(rule.codes + rule.clear_codes + rule.first + rule.then)
        return free & ~bound

    # -- batches and ticks --------------------------------------------------------------------

    def evaluate(self, b: Batch, history: HistorySource | None = None) -> Evaluation:
        """Every rule over one batch. Nothing changes until `apply()`.

        `history` answers rate rules whose memory does not reach back (else `self.history`).
        """
        with self.lock:
            rules, n = self._rules, self._sync()
            ev = Evaluation(rules, bad=np.zeros(len(b.r_device), dtype=bool))
            latest = np.full(n, -np.inf)
            if len(b.m_device):
                np.maximum.at(latest, b.m_device, b.m_time)
            if len(b.r_device):
                np.maximum.at(latest, b.r_device, b.r_time)
            if len(b.e_device):
                np.maximum.at(latest, b.e_device, b.e_time)
            ctx = self._context(None, n, latest, ev)
            if history is not None:
                ctx.history = history
            self._cover_codes(b)
            views: _Views = {}
            marked = []
            for i, rule in enumerate(rules):
                if rule.kind == "validity":
                    view = self._view(rule, ctx, b, views)
                    assert view.batch is not None
                    checked, bad = validity.mark(rule, view.ctx, view.batch)
                    if view.readings is None:
                        ev.bad |= bad
                    else:
                        ev.bad[view.readings] |= bad
                    marked.append((i, rule, checked, bad))
            ctx.bad = ev.bad
            for i, rule, checked, bad in marked:
                self._run(rule, ctx, b, views, ev, functools.partial(
                    validity.evaluate, i, rule, checked=checked, bad=bad, out=ev.transitions))
            for i, rule in enumerate(rules):
                fn = _EVALUATE.get(rule.kind)
                if fn is not None:
                    self._run(rule, ctx, b, views, ev,
                              functools.partial(fn, i, rule, out=ev.transitions))
            self._count_fired(ev, n)
            return ev

    def _view(self, rule: Rule, ctx: Context, b: Batch | None,
              views: _Views) -> _View:
        """The context and batch the kind of `rule` sees: numbered by the rule's rows
        (`RuleState.devices`), those of devices it has none for left out; for the kinds
        kept by code, its events only. Rules with the same rows share the batch."""
        st = self._states[rule.name]
        devs = st.devices
        if devs is None:
            ctx.applies = self._applies[rule.name]
            return _View(st, ctx, b, None, None)
        events_only = rule.kind in BY_CODE
        known = views.get((id(devs), events_only))
        if known is None or known.devices is not devs:
            rows = self._rows_of(devs)
            lb, readings = b.of_devices(rows.of, events_only) if b is not None \
                else (None, None)
            latest = ctx.latest_seen[devs] if len(ctx.latest_seen) == ctx.n \
                else ctx.latest_seen
            behind = ctx.behind[devs] if len(ctx.behind) == ctx.n else ctx.behind
            known = views[id(devs), events_only] = _View(st, dataclasses.replace(
                ctx, n=len(devs), model=rows.model, latest_seen=latest, behind=behind,
                history=_by_rows(ctx.history, devs)), lb, readings, devs)
        applies = self._applies_by_row.get(rule.name)
        if applies is None or applies[0] is not devs:
            applies = self._applies_by_row[rule.name] = (devs, self._applies[rule.name][devs])
        local = dataclasses.replace(
            known.ctx, applies=applies[1],
            bad=ctx.bad[known.readings] if known.readings is not None else ctx.bad)
        return _View(st, local, known.batch, known.readings, devs)

    def _cover_codes(self, b: Batch) -> None:
        """Rows, in the rules of the kinds kept by code (`BY_CODE`), for the devices that
        send one of a rule's codes in `b` for the first time (those it applies to)."""
        if len(b.e_device) == 0:
            return
        for rule in self._rules:
            if rule.kind in BY_CODE:
                st = self._states[rule.name]
                devs = b.e_device[b.code_mask(rule.codes + rule.clear_codes)]
                devs = devs[self._applies[rule.name][devs]]
                st.cover(devs[st.rows_of(devs) < 0])   # most have rows already

    def _rows_of(self, devices: I64) -> _Rows:
        """How `devices` (a rule's rows) are found from the fleet's indexes, kept while
        they stay the rows of some rule and the fleet is as it is."""
        rows = self._rows.get(id(devices))
        if rows is None or rows.devices is not devices:
            # what rules have since covered more devices than (rows by code: often) goes
            self._rows = {id(st.devices): r for st in self._states.values()
                          if (r := self._rows.get(id(st.devices))) is not None
                          and r.devices is st.devices}
            dense = None
            if len(devices) * SPARSE >= self._n:
                dense = np.full(self._n, -1, dtype=np.int32)
                dense[devices] = np.arange(len(devices), dtype=np.int32)
            rows = self._rows[id(devices)] = _Rows(devices, dense, self._model[devices])
        return rows

    def _run(self, rule: Rule, ctx: Context, b: Batch | None, views: _Views,
             ev: Evaluation, kind: Callable[..., None]) -> None:
        """`kind` (an evaluate of the rule's kind given all but its state, context and
        batch; a tick, all but its state and context, with no batch) over the rule's rows;
        its fires and clears by fleet index."""
        view = self._view(rule, ctx, b, views)
        t = ev.transitions
        fires, clears = len(t.dev), len(t.c_dev)
        if view.batch is None:
            kind(view.state, view.ctx)
        else:
            kind(view.state, view.ctx, view.batch)
        if view.devices is not None:
            t.dev[fires:] = [view.devices[d] for d in t.dev[fires:]]
            t.c_dev[clears:] = [view.devices[d] for d in t.c_dev[clears:]]

    def _count_fired(self, ev: Evaluation, n: int) -> None:
        """Stage FIRED: what it was, plus the rows each rule fired for per device."""
        rule, dev, *_, count, _ = ev.transitions.fires()
        if len(dev) == 0:
            return
        keys, at = np.unique(rule * n + dev, return_inverse=True)
        sums = np.bincount(at, weights=count).astype(np.int64)
        for r in np.unique(keys // n).tolist():
            sel = keys // n == r
            devs = keys[sel] % n
            st = self._states[ev.rules[r].name]
            rows = st.rows_of(devs)      # it fired for them: it has their rows
            ev.updates.append(Update(st, rows, {FIRED: st.i64(FIRED, st.size(n))[rows]
                                                + sums[sel]}))

    def fired(self, devs: I64) -> I64:
        """FIRED in memory: a row per rule (in order), a column per device of `devs`."""
        with self.lock:
            return np.array([self._states[r.name].values(FIRED, devs, 0) for r in self._rules],
                            dtype=np.int64).reshape(len(self._rules), len(devs))

    def holds_from(self, devs: I64, rules: list[Rule]) -> F64:
        """Per rule of `rules` (rows) and device of `devs` (columns), from what device time
        its state may hold an alert for the device with no new row: -inf where the
        condition holds (`active`), and where the rule is not one that rows in order decide
        (the swept kinds, events that count in any order, a rule that does not apply to
        the device); a deadline still waiting (a dose due: the tick fires at it); +inf,
        never. After late rows were evaluated again in order, an alert of the device that
        last fired before it stands on nothing the rules still hold (`app.replay`).
        `rules`: those an evaluation ran (`Evaluation.rules`); if they were reloaded since,
        -inf everywhere."""
        with self.lock:
            out = np.full((len(rules), len(devs)), np.inf)
            if rules is not self._rules:
                out[:] = -np.inf
                return out
            self._sync()
            for i, rule in enumerate(self._rules):
                st = self._states[rule.name]
                if rule.kind in SWEPT or rule.kind == "event" and not rule.clear_codes:
                    out[i] = -np.inf
                    continue
                if rule.kind == "sequence":
                    out[i] = sequence.waiting_until(rule, st, devs)
                held = st.values("active", devs, False).astype(bool)
                held |= ~self._applies[rule.name][devs]
                out[i, held] = -np.inf
            return out

    def tick(self, now: float, behind: F64 | None = None) -> Evaluation:
        """Deadlines that pass without a message: missed doses, event timeouts, quiet flaps.

        Every process ticks its own state (its devices' messages reach it alone). `behind`:
        per device index, how far its clock is behind `now`'s (NaN or missing: 0).
        """
        with self.lock:
            rules, n = self._rules, self._sync()
            ev = Evaluation(rules)
            ctx = self._context(None, n, np.full(0, -np.inf), ev)
            ctx.behind = np.zeros(n)
            if behind is not None:
                k = min(n, len(behind))
                ctx.behind[:k] = np.nan_to_num(behind[:k], nan=0.0)
            views: _Views = {}
            for i, rule in enumerate(rules):
                fn = _TICK.get(rule.kind)
                if fn is not None:
                    self._run(rule, ctx, None, views, ev,
                              functools.partial(fn, i, rule, now=now, out=ev.transitions))
            return ev

    def sweep_absence(self, now: float, last_seen: F64,
                      open_alerts: Iterable[tuple[str, int]],
                      last_heard: F64 | None = None) -> Evaluation:
        """The fleet-wide sweep of the absence and clock rules (one process at a time runs
        it).

        `last_seen` per device index (NaN: never heard), as committed by every process, the
        device time its alerts are dated by; `last_heard` when we heard it, by the clock
        `now` is on, which silence is judged by (None: `last_seen`, as a backtest replays
        device time); `open_alerts` the (rule, device index) of absence alerts open in the
        queue.
        """
        with self.lock:
            rules, n = self._rules, self._sync()
            ev = Evaluation(rules)
            ctx = self._context(None, n, np.full(0, -np.inf), ev)
            seen, heard = np.full(n, np.nan), np.full(n, np.nan)
            seen[:min(n, len(last_seen))] = last_seen[:n]
            heard_from = last_seen if last_heard is None else last_heard
            heard[:min(n, len(heard_from))] = heard_from[:n]
            open_by_rule: dict[str, list[int]] = {}
            for name, d in open_alerts:
                open_by_rule.setdefault(name, []).append(d)
            deployed = np.asarray(self.fleet.status[:n], dtype=object) == "deployed"
            for i, rule in enumerate(rules):
                if rule.kind not in SWEPT:
                    continue
                is_open = np.zeros(n, dtype=bool)
                is_open[[d for d in open_by_rule.get(rule.name, []) if 0 <= d < n]] = True
                ctx.applies = self._applies[rule.name]
                if rule.kind == "absence":
                    absence.sweep(i, rule, self._states[rule.name], ctx, now, seen, heard,
                                  self._heartbeat, deployed, is_open, ev.transitions)
                else:
                    clock.sweep(i, rule, self._states[rule.name], ctx, now, seen, heard,
                                deployed, is_open, ev.transitions)
            return ev

    def apply(self, ev: Evaluation, devices: I64 | None = None) -> None:
        """Make an evaluation's state changes real (of `devices` only, if given)."""
        with self.lock:
            for u in ev.updates:
                u.apply(devices)

    def moved(self, ev: Evaluation) -> I64:
        """The devices whose state the evaluation changes in more than which rows its rules
        have seen (watermarks), or that it raises or clears an alert for (sorted). The rest
        it leaves as it was, but for knowing that some rows are old."""
        with self.lock:
            t = ev.transitions
            return _unique([u.moved() for u in ev.updates] + list(t.dev) + list(t.c_dev))

    # -- state across restarts and reloads ----------------------------------------------------

    def seed(self, open_alerts: Iterable[tuple[str, str, float]]) -> None:
        """Mark the alerts open in the queue as open in the rules' state: (rule, device, last
        fired, device time). Restarted timers begin from nothing; open alerts can still clear."""
        with self.lock:
            n = self._sync()
            by_rule: dict[str, tuple[list[str], list[float]]] = {}
            for name, device_id, fired in open_alerts:
                ids, times = by_rule.setdefault(name, ([], []))
                ids.append(device_id)
                times.append(fired)
            known = {r.name: r for r in self._rules}
            index = {d: i for i, d in enumerate(self.fleet.ids[:n])}
            for name, (ids, times) in by_rule.items():
                if name not in known or known[name].kind == "validity" and \
                        known[name].alert_after <= 0:
                    continue
                idx = positions(index, ids, len(ids))
                ok = idx >= 0
                st = self._states[name]
                st.cover(np.unique(idx[ok]))   # a device the rule no longer applies to too
                rows, last = st.rows_of(idx[ok]), np.asarray(times, dtype=np.float64)[ok]
                size = st.size(n)
                st.flag("active", size)
                st.put("active", rows, np.ones(len(rows), dtype=bool))
                st.f64("last_fire", size, -np.inf)
                st.put("last_fire", rows, last)
                st.f64("fired_at", size, -np.inf)
                st.put("fired_at", rows, last)
                if known[name].kind == "flapping":  # quiet is measured from the last flap
                    st.f64("last_t", size, -np.inf)
                    st.put("last_t", rows, last)

    def reload(self, rules: list[Rule], open_alerts: Iterable[tuple[str, str, float]]) -> list[str]:
        """Swap in new rules. A rule whose definition is unchanged keeps its state; a new or
        changed one starts fresh, seeded from the open alerts. Returns the names that changed."""
        with self.lock:
            old = {r.name: r for r in self._rules}
            states: dict[str, RuleState] = {}
            changed = []
            for r in rules:
                prev = old.get(r.name)
                if prev is not None and prev.definition == r.definition:
                    states[r.name] = self._states[r.name]
                else:
                    states[r.name] = _state(r)
                    changed.append(r.name)
                    self._applies.pop(r.name, None)
            changed += [name for name in old if name not in states]
            self._rules, self._states = list(rules), states
            self._n = 0  # recompute applicability for new rules
        fresh_names = set(changed)
        self.seed(a for a in open_alerts if a[0] in fresh_names)
        return changed

    # -- fleet-derived columns ----------------------------------------------------------------

    def _context(self, applies: Bools | None, n: int, latest: F64, ev: Evaluation) -> Context:
        return Context(n=n, applies=applies if applies is not None else np.zeros(n, bool),
                       ranges=self._ranges, model=self._model, latest_seen=latest,
                       history=self.history,
                       updates=ev.updates, bad=ev.bad)

    def _sync(self) -> int:
        """Applicability, plausible ranges and heartbeats, again when devices were added or
        one's vendor, model, type or municipality changed since last time: for the devices
        added only, when nothing else changed. The alarm lane's process adds each device as
        its first alarm comes, one or a few at a time; computed again for all, each new
        device cost a pass over every device the lane held (a batch of 4 first alarms 151.6
        ms at 30,000 held, 119.4 ms so; docs/performance.md, "eighth session")."""
        f = self.fleet
        version = f.registry_version   # before reading the columns: a change meanwhile
        # makes the next call compute them again; a device being added (its columns one
        # after another, `Fleet._add`) is counted once it has them all
        n = min(len(f), len(f.vendor), len(f.model), len(f.type), len(f.municipality))
        whole = version != self._version \
            or not all(r.name in self._applies for r in self._rules)
        if n == self._n and not whole:
            return n
        start = 0 if whole else self._n
        types = np.asarray(f.type[start:n], dtype=object)
        models = np.asarray(f.model[start:n], dtype=object)
        full = np.asarray([f"{v} {m}" for v, m in zip(f.vendor[start:n], f.model[start:n])],
                          dtype=object)
        munis = np.asarray(f.municipality[start:n], dtype=object)
        for r in self._rules:
            mask = np.ones(n - start, dtype=bool)
            if r.types:
                mask &= np.isin(types, list(r.types))
            if r.models:
                mask &= np.isin(models, list(r.models)) | np.isin(full, list(r.models))
            if r.municipalities:
                mask &= np.isin(munis, list(r.municipalities))
            self._applies[r.name] = np.concatenate([self._applies[r.name][:start], mask]) \
                if start else mask
            if r.kind not in BY_CODE:   # those get rows as their codes come
                self._states[r.name].cover(start + np.flatnonzero(mask))
        self._share_rows()
        self._catalogue_columns(start, n)
        for r in self._rules:
            if r.kind == "validity" and r.alert_after > 0:
                self._cover_metrics(r, start, n)
        self._n, self._version = n, version
        self._rows.clear()
        self._applies_by_row.clear()
        return n

    def _cover_metrics(self, rule: Rule, start: int, n: int) -> None:
        """Rows in the validity rule's part for each metric (`RuleState.part`) for the
        devices from `start` whose model has a plausible range for it, those whose readings
        of it the rule judges: given as the fleet is learnt, not one batch at a time as the
        readings come, each time moving every row of the part along (the rules cost twice
        as much a message so in `benchmarks/rules.py`)."""
        st = self._states[rule.name]
        applies, model = self._applies[rule.name][start:n], self._model[start:n]
        for metric, (low, _) in self._ranges.items():
            if not rule.metrics or metric in rule.metrics:
                st.part(metric).cover(start + np.flatnonzero(applies & ~np.isnan(low[model])))

    def _share_rows(self) -> None:
        """Rules kept for the same devices share one array of them, and so one batch of
        their rows per evaluation (`_view`)."""
        shared: dict[bytes, I64] = {}
        for st in self._states.values():
            if st.devices is not None:
                st.devices = shared.setdefault(st.devices.tobytes(), st.devices)

    def _catalogue_columns(self, start: int, n: int) -> None:
        """Heartbeats per device; plausible ranges per (vendor, model), with each device's
        row in them (a few models: per device, 16 MB for 100,000 devices and 10 metrics).
        Devices before `start` keep theirs: a model's row never changes (one catalogue)."""
        f = self.fleet
        codes, uniques = factorize(list(zip(f.vendor[start:n], f.model[start:n])))
        known = len(self._models)
        rows = np.fromiter((self._models.setdefault(u, len(self._models)) for u in uniques),
                           dtype=np.intp, count=len(uniques))[codes]
        if len(self._models) > known:
            self._model_columns()
        self._model = np.concatenate([self._model[:start], rows]).astype(np.intp)
        self._heartbeat = np.concatenate([self._heartbeat[:start], self._model_heartbeat[rows]])

    def _model_columns(self) -> None:
        """Per (vendor, model) met so far: its heartbeat and its plausible ranges."""
        k = len(self._models)
        self._model_heartbeat = np.full(k, np.nan)
        ranges: dict[str, tuple[F64, F64]] = {}
        for (vendor, model), row in self._models.items():
            m = self.catalogue.get(vendor, model) if self.catalogue is not None else None
            if m is None:
                continue
            self._model_heartbeat[row] = m.heartbeat_s
            for metric, rng in m.metrics.items():
                lo, hi = ranges.setdefault(metric, (np.full(k, np.nan), np.full(k, np.nan)))
                lo[row], hi[row] = rng.low, rng.high
        self._ranges.clear()
        self._ranges.update(ranges)
