"""One batch through every stage, in one transaction: decode → devices → store → rules → alerts.

The lane that calls `process()` commits, then acknowledges. Nothing here talks to MQTT.
Every write is idempotent, so a batch that is delivered again changes nothing: rows by their
keys, device state and alerts by device time.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import psycopg

from vagt.alerts.engine_rules import (
    ALARM_BEFORE_DEPLOYMENT_RULE,
    BAD_TOPIC_RULE,
    DEVICE_LABELS,
    OUT_OF_SERVICE_RULE,
    REFUSED_ALARM_RULE,
    REFUSED_RULE,
    SERVICE_CENTRE_PRIORITY,
    SERVICE_CENTRE_QUEUE,
    UNKNOWN_DEVICE_RULE,
    UNREADABLE_ALARM_RULE,
    UNREGISTERED_ALARM_RULE,
    alarm_destination,
)
from vagt.alerts.store import AlertFiring, clear_alerts, fingerprint, record_firings
from vagt.app import conflicts, rule_queries, store
from vagt.app.config import IngestConfig
from vagt.app.replay import (
    Recount,
    correct,
    rejudged,
    take_back_answered,
    take_back_unsupported,
)
from vagt.app.rule_state import Seen, SharedRuleState, without_last_citizens
from vagt.arrays import F64, I64, Bools, Objs
from vagt.devices.actions import hold_off_deployments
from vagt.devices.catalogue import Catalogue
from vagt.devices.fleet import Fleet, StateUpdate
from vagt.errors import first_line, log_value
from vagt.ingest.canonical import EVENT_CODE, EVENT_CODE_MAX
from vagt.ingest.decode import decode_batch
from vagt.ingest.model import Channel, DeadLetter, DeadLetterReason, DecodedBatch, RawMessage
from vagt.ingest.topics import DEVICE_ID, TopicError, channel_levels, device_level, parser_for
from vagt.privacy import mask_cpr
from vagt.rules import Batch, Evaluation, HistorySource, Rule, RuleEngine, Transitions
from vagt.rules.engine import SWEPT
from vagt.rules.kinds.absence import NEVER_HEARD

log = logging.getLogger("vagt.engine")


@dataclass
class DeviceRows:
    """Per device of a batch (sorted): the earliest and the latest device time of its rows,
    and where they are late, how far the rules had seen its rows before (NaN: not late;
    what the device-state UPDATE returned, `store.update_device_state`)."""

    devices: I64
    first: F64
    latest: F64
    seen: F64


@dataclass
class BatchOutcome:
    messages: int = 0
    decoded: int = 0
    readings: int = 0          # new rows stored (a redelivery stores none)
    events: int = 0
    dead: list[DeadLetter] = field(default_factory=list)   # kept now
    # dead letters whose topic and bytes were kept before (a broker's redelivery, a retained
    # copy sent again at a subscribe, the same bytes sent again): not kept again
    dead_again: list[DeadLetter] = field(default_factory=list)
    opened: list[tuple[int, str]] = field(default_factory=list)   # (alert id, queue)
    cleared: int = 0
    # alerts that late rows, evaluated again in order, do not fire: resolved (counted in
    # `cleared` too), or left to the operator who holds them, with a note (`replay`)
    taken_back: list[int] = field(default_factory=list)
    noted: list[int] = field(default_factory=list)
    # bad readings per (vendor, model, metric), as the validity rules judged them
    bad_readings: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # applied to the in-memory fleet only after the commit
    state: StateUpdate = field(default_factory=StateUpdate)
    registry_firings: list[AlertFiring] = field(default_factory=list)
    # copies of messages another lane reads, left to it (`Pipeline.process`'s `skip`)
    skipped: int = 0
    # median of (arrival - device time) over the batch's usable messages: how far behind
    # the devices' own clocks the batch is (a backlog after an outage: hours)
    device_lag_s: float = 0.0
    # the device state rows; with process(state_apart=True) not yet written: write_state()
    # writes them (again if its commit failed; only the gap count could then be counted
    # twice, and only if the commit had in fact gone through)
    state_rows: tuple[Any, ...] | None = None
    rows: DeviceRows | None = None   # its devices' rows, for telling late ones
    state_apart: bool = False
    batch: Batch | None = None   # with state_apart: for write_state() to evaluate again
    transitions: Transitions | None = None   # and what the rules did from memory
    # devices whose rows came after newer ones: evaluated again in order from their state
    # before (`replayed`), or too late for that, their late rows skipped by the rules
    replayed: int = 0
    too_late: int = 0
    # devices whose rows were from before their deployment (the last citizen's), skipped
    before_deployment: int = 0
    # devices whose rows in the batch were not all stored before (a redelivery's are)
    fresh: I64 = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    # per message, its device's dense index (-1: none, a dead letter): with state_apart,
    # whose messages a device state that fails alone is (`Pipeline.state_halves`)
    msg_device: I64 = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def add(self, other: BatchOutcome) -> None:
        """Count in what `other` did, committed already (its state applied: see
        `Pipeline.after_commit`): a batch that went again in parts (`Lane._in_halves`)."""
        self.messages += other.messages
        self.skipped += other.skipped
        self.decoded += other.decoded
        self.readings += other.readings
        self.events += other.events
        self.dead += other.dead
        self.dead_again += other.dead_again
        self.opened += other.opened
        self.cleared += other.cleared
        self.taken_back += other.taken_back
        self.noted += other.noted
        self.bad_readings += other.bad_readings
        self.replayed += other.replayed
        self.too_late += other.too_late
        self.before_deployment += other.before_deployment
        self.device_lag_s = max(self.device_lag_s, other.device_lag_s)

    def add_written(self, part: BatchOutcome) -> None:
        """Count in what the state apart's evaluation under the lock did (`write_state`'s),
        or `write_state` for a part of this batch's state (`Pipeline.state_halves`). The
        devices skipped before their deployment are the first evaluation's again, not more;
        an alert opened by both is counted once."""
        self.replayed += part.replayed
        self.too_late += part.too_late
        self.before_deployment = max(self.before_deployment, part.before_deployment)
        self.opened += [a for a in part.opened if a not in self.opened]
        self.cleared += part.cleared
        self.taken_back += part.taken_back
        self.noted += part.noted


# A device evaluated again in order (see Pipeline._evaluate_locked) reads its stored rows
# since its earlier state; a batch that would read more skips its late rows instead.
REPLAY_MAX_ROWS = 50_000
# How long the answer to "is an unknown id a registered one in other case" is kept: a device
# that keeps sending costs a scan of the registry this often, not every batch (24 ms at
# 100,000 devices); at most ALIKE_MAX ids are kept.
ALIKE_TTL_S = 300.0
ALIKE_MAX = 10_000


@dataclass
class _Rows:
    """The usable rows of a batch as numpy columns, with their device index."""

    device: I64
    device_id: list[str]
    msg: I64
    time: F64


class Pipeline:
    """The stages wired together. One instance is shared by the engine's lanes."""

    def __init__(self, *, topic_root: str, ingest: IngestConfig, fleet: Fleet,
                 rules: list[Rule], clock: Callable[[], float],
                 open_alerts: Iterable[tuple[str, str, float]] = ()) -> None:
        """`open_alerts` (rule, device id, last fired) seeds the rules: an alert open before a
        restart is still known to be open, so its condition can clear it."""
        self.topic_root = topic_root
        self.ingest = ingest
        self.fleet = fleet
        self.clock = clock
        self.rules = RuleEngine(rules, fleet, fleet.catalogue)
        self.rules.seed(open_alerts)
        self.shared = SharedRuleState(self.rules, fleet)
        self._alike: dict[str, tuple[float, str | None]] = {}   # id: (when asked, answer)

    @classmethod
    def load(cls, conn: psycopg.Connection, *, topic_root: str, rules: list[Rule],
             clock: Callable[[], float], ingest: IngestConfig | None = None,
             catalogue: Catalogue | None = None, whole_fleet: bool = True) -> Pipeline:
        """A pipeline over the registered fleet, the rules seeded from the open alerts.

        Without `whole_fleet`, the fleet holds at first only the devices with an open rule
        alert, and takes in the others as they send (`Fleet.resolve`), their rules' state
        from the `rule_state` table (the alarm lane's process: a few thousand alarm)."""
        fleet = Fleet(catalogue)
        open_alerts = rule_queries.open_rule_alerts(conn)
        if whole_fleet:
            fleet.load(conn)
        else:
            fleet.resolve(conn, sorted({device_id for _, device_id, _ in open_alerts}))
        return cls(topic_root=topic_root, ingest=ingest or IngestConfig(), fleet=fleet,
                   rules=rules, open_alerts=open_alerts, clock=clock)

    def process(self, conn: psycopg.Connection, messages: Sequence[RawMessage],
                state_apart: bool = False, skip: Collection[str] = ()) -> BatchOutcome:
        """Everything the batch causes, written in `conn`'s open transaction (not committed).

        With `state_apart`, the devices' state is left for `write_state()` in a transaction of
        its own after this one commits (the alarm lane: see `LaneSpec.state_apart`). A
        message on a channel in `skip` is another lane's copy: nothing is done with it.
        """
        dec = decode_batch(messages, topic_root=self.topic_root,
                           max_payload_bytes=self.ingest.max_payload_bytes, now=self.clock(),
                           max_future_skew_s=self.ingest.max_future_skew_s, skip=skip)
        out = BatchOutcome(messages=len(messages), dead=list(dec.dead), state_apart=state_apart,
                           skipped=len(dec.skipped_msg))
        received = np.fromiter((m.received_at for m in messages), dtype=np.float64,
                               count=len(messages))
        msg_time = _message_times(dec, received)
        device_of_msg = out.msg_device = self._attribute(conn, messages, dec, msg_time, out,
                                                           state_apart)
        usable = device_of_msg >= 0
        # an alarm used in part is kept as a dead letter too (one of an unknown device is
        # one already, as unknown_device)
        _keep_dead(conn, [d for d, i in zip(dec.apart, dec.apart_msg) if usable[i]], out)
        if usable.any():
            out.device_lag_s = float(np.median(received[usable] - msg_time[usable]))

        r = _rows(dec.r_device, dec.r_msg, dec.r_time, usable, device_of_msg)
        r_keep = _keep(dec.r_msg, usable)
        r_metric = np.asarray(_pick(dec.r_metric, r_keep), dtype=object)
        r_value = np.asarray(dec.r_value, dtype=np.float64)[r_keep]
        r_unit = _pick(dec.r_unit, r_keep)
        out.readings, new_readings, stored = store.insert_readings(
            conn, r.device_id, r_metric.tolist(), r_value, r_unit, r.time, received[r.msg])
        if stored:   # another value of a reading's device, metric and time was stored
            r, r_metric, r_value = _without_conflicting(conn, messages, stored, r, r_metric,
                                                        r_value, r_unit, out)
        e = _rows(dec.e_device, dec.e_msg, dec.e_time, usable, device_of_msg)
        e_keep = _keep(dec.e_msg, usable)
        e_code = np.asarray(_pick(dec.e_code, e_keep), dtype=object)
        e_severity = _pick(dec.e_severity, e_keep)
        out.events, new_events, clashing = store.insert_events(
            conn, e.device_id, e_code.tolist(), e_severity, _pick(dec.e_details, e_keep), e.time,
            received[e.msg])
        if clashing:   # an event with other details was stored for a device, code and time
            _keep_dead(conn, conflicts.event_dead_letters(
                messages, clashing, e.msg, e.device_id, e_code.tolist(), e_severity, e.time),
                out)
        if new_events is not None:   # the rules saw the others when they came first
            e = _Rows(e.device[new_events], _pick(e.device_id, new_events), e.msg[new_events],
                      e.time[new_events])
            e_code = e_code[new_events]
        r_new = r.device if new_readings is None else \
            r.device[np.fromiter((d in new_readings for d in r.device_id), dtype=bool,
                                 count=len(r.device_id))]
        out.fresh = np.union1d(r_new, e.device).astype(np.int64)
        out.decoded = int(usable.sum())

        msgs = np.flatnonzero(usable)
        batch = Batch(r.device, r_metric, r_value, r.time, e.device, e_code, e.time,
                      device_of_msg[msgs], msg_time[msgs])
        self._update_devices(conn, dec, device_of_msg, usable, msg_time, received, r,
                             r_metric, r_value, batch, out)
        if not state_apart:
            self.write_state(conn, out)
        recount = skipped = None
        if state_apart:
            # The alarm lane: alerts from the state in memory, without waiting for devices
            # that a bulk batch holds; write_state() evaluates again under their lock and
            # keeps the state (the same firing recorded twice changes nothing: alerts go by
            # device time). What another process committed for these devices is read first.
            rows = out.rows if out.rows is not None else _device_rows(batch)
            began = self.shared.sync(conn, rows.devices)
            # what a redeployed device kept from the last citizen is not this one's alarm
            batch, out.before_deployment = self._without_last_citizens(
                batch, rows.devices, rows.first, began, out)
            ev = self.rules.evaluate(batch, history=self._history(conn))
            out.batch, out.transitions = batch, ev.transitions
        else:
            ev, batch, recount, skipped = self._evaluate_locked(conn, batch, out, out.rows,
                                                                out.fresh)
        self._store_bad_readings(conn, batch, ev, out)
        # the alarm lane's first evaluation is of this batch's new rows only (the events
        # stored before are left out above; no late rows are evaluated again here): what it
        # fires is new, even dated before an alert it resolved (a clock behind)
        # an alarm among the bulk lane's new rows is news too, dated however it is (a clock
        # behind; too late to evaluate in order, the rows before it gone): unless its
        # device's rows were evaluated again with stored ones (`replay.correct` weighs those)
        news = None if state_apart else \
            np.setdiff1d(out.fresh, recount.devices if recount is not None else [])
        self.record(conn, ev, out, out.registry_firings, recount, skipped=skipped,
                    new=state_apart, news=news)
        return out

    def _evaluate_locked(self, conn: psycopg.Connection, batch: Batch, out: BatchOutcome,
                         rows: DeviceRows | None, fresh: I64
                         ) -> tuple[Evaluation, Batch, Recount | None, Batch | None]:
        """The rules over the batch from the state its devices have in the database. The
        device-state UPDATE holds their rows until the transaction ends: another process
        evaluates them after us.

        A device whose rows here are older than rows the rules have seen (another engine
        committed newer ones first, or the device flushed its buffer after live readings) is
        evaluated again in order, with every stored row since (this batch's are stored
        already): from its stored state if the rows are newer than that, else from its
        earlier state (`prev`, see `rule_state.CHECKPOINT_AGE_S`); their alerts are
        corrected by what that changes (`Recount`), and those the rows in order no longer fire
        are taken back (`record`), unless the device's rows were all stored before (`fresh`
        has the devices whose were not: a redelivery brings nothing new). Rows too old even
        for that are skipped, but for events that only order-free rules take (a personal
        alarm: every one counts), and returned: a dose.taken among them still takes back the
        missed dose it answered (`replay.take_back_answered`). `rows`: the batch's devices'
        rows, as the device-state UPDATE left them (see `write_state`). Returns the
        evaluation, the batch evaluated, the recount and the rows skipped."""
        if rows is None:   # no usable message: no device, nothing to evaluate
            rows = _device_rows(batch)
        held = rows.devices
        locked = self.shared.lock(conn, held, held=True, seen=rows.seen)
        late = locked.late(rows.first)
        replay, too_late = late.replayed, late.too_late
        fired = None
        since = locked.since(late)
        if replay.any():
            merged = self._with_stored_rows(conn, batch, held[replay], since[replay])
            if merged is None:    # more than REPLAY_MAX_ROWS: skip the late rows, as before
                too_late, replay = too_late | replay, np.zeros_like(replay)
            else:
                fired = self.rules.fired(held[replay])   # what their alerts have counted
                self.shared.rewind(conn, held[late.again], prev=False)
                self.shared.rewind(conn, held[late.back])
                batch = merged
        skipped = None
        if too_late.any():   # (an alarm is never too late)
            older = batch.split(held[too_late], locked.seen[too_late])[1]
            skipped = older if len(older.e_device) else None   # (only events answer)
            batch = batch.newer_than(held[too_late], locked.seen[too_late],
                                     self.rules.order_free_events(batch))
        batch, earlier = self._without_last_citizens(batch, held, rows.first, locked.began,
                                                     out)
        out.replayed += int(replay.sum())
        out.too_late += int(too_late.sum())
        out.before_deployment += earlier
        replayed = held[replay]
        seen = Seen(held, np.fmax(rows.latest, locked.seen), replayed, held[replay & late.back])
        ev = self.shared.evaluate(
            conn, lambda: self.rules.evaluate(batch, history=self._history(conn)), held, seen)
        recount = None if fired is None else Recount(
            replayed, self.rules.fired(replayed) - fired, since[replay],
            self.rules.holds_from(replayed, ev.rules), np.isin(replayed, fresh), batch)
        return ev, batch, recount, skipped

    def _without_last_citizens(self, batch: Batch, devs: I64, first: F64, began: F64,
                               out: BatchOutcome) -> tuple[Batch, int]:
        """`rule_state.without_last_citizens`; an alarm among the rows it leaves out still
        reaches the personal alarm's queue, not as the citizen's alarm (it may be the last
        citizen's), but as one dated before the deployment: the device's clock may be wrong
        (one that lost power may restart at 2000-01-01), and someone may need help."""
        batch, theirs, earlier = without_last_citizens(batch, devs, first, began)
        if not earlier:    # (every batch: what follows, only for a redeployed device's)
            return batch, 0
        critical = [code for r in self.rules.rules if r.kind == "event"
                    and r.severity == "critical" for code in r.codes]
        alarms = np.flatnonzero(theirs.code_mask(critical))
        if len(alarms):
            dev, t = theirs.e_device[alarms], theirs.e_time[alarms]
            ids = [self.fleet.ids[int(d)] for d in dev]
            since = dict(zip(devs.tolist(), began.tolist()))
            deployed = {i: _iso(since[int(d)]) for i, d in zip(ids, dev)}
            latest: dict[str, float] = {}
            for i, when in zip(ids, t.tolist()):
                latest[i] = max(when, latest.get(i, when))
            out.registry_firings += _registry_firings(
                ALARM_BEFORE_DEPLOYMENT_RULE, ids, t, [""] * len(ids),
                lambda d, _: f"an alarm from {d} dated {_iso(latest[d])} (device time), more than "
                             f"an hour before it went to the citizen it is with now (at "
                             f"{deployed[d]}): its clock may be wrong, or it was pressed "
                             "at the last citizen's home; contact the citizen it is with now",
                *self._alarm_route())
        return batch, earlier

    def _with_stored_rows(self, conn: psycopg.Connection, batch: Batch, devs: I64,
                          since: F64) -> Batch | None:
        """The batch with the rows of `devs` replaced by every stored row of theirs newer
        than `since` (per device); None if there are more than REPLAY_MAX_ROWS."""
        stored = rule_queries.stored_batch(conn, self.fleet, devs, since, REPLAY_MAX_ROWS)
        return None if stored is None else batch.without(devs).plus(stored)

    def _history(self, conn: psycopg.Connection) -> HistorySource:
        return lambda m, d, a, b: rule_queries.reading_history(conn, self.fleet, m, d, a, b)

    def tick(self, conn: psycopg.Connection, now: float, sweep: bool) -> BatchOutcome:
        """Deadlines passed without a message (every process, its own devices); with `sweep`,
        also the fleet-wide absence sweep (the process holding the sweep lock), in a
        transaction of its own: the tick's is committed first. In one, the sweep locked the
        silent devices while the tick's devices were held, and a batch holding one of those
        and waiting, in device order, for one of these was cancelled by the database as a
        deadlock (twice in a 20-minute soak, each time at the tick forced during a drain)."""
        out = BatchOutcome()
        self.shared.refresh(conn)  # deadlines other processes set
        # Deadlines are judged on each device's clock: how far behind ours it is comes from
        # when we last heard it, which another process sharing the subscription may know
        # and this one not (up to FLEET_REFRESH_S old; never heard here: taken as 0, which
        # judged a backlog's doses by our clock). The devices the tick touches are read
        # again under their lock, and the tick runs again on that.
        ev = self.shared.evaluate(
            conn, lambda: self.rules.tick(now, self.fleet.clock_behind()),
            on_locked=lambda devs: self.fleet.refresh_devices(conn, devs))
        self.record(conn, ev, out)
        if sweep and any(r.kind in SWEPT for r in self.rules.rules):
            conn.commit()
            names = [r.name for r in self.rules.rules if r.kind in SWEPT]
            opened = rule_queries.open_rule_alerts(conn, names)
            idx = self.fleet.lookup([d for _, d, _ in opened])
            open_pairs = [(name, int(i)) for (name, _, _), i in zip(opened, idx) if i >= 0]
            seen, heard = rule_queries.last_heard(conn, self.fleet)
            ev = self.shared.evaluate(
                conn, lambda: self.rules.sweep_absence(now, seen, open_pairs, heard))
            self.record(conn, ev, out)
        return out

    def write_state(self, conn: psycopg.Connection, out: BatchOutcome) -> None:
        """The batch's device state (last seen, battery, signal, firmware, counter); with
        `state_apart` also its rules' state, evaluated again under the devices' lock."""
        if out.state_rows is not None and out.rows is not None:
            late, moved = store.update_device_state(conn, *out.state_rows)
            # deployed, returned or retired since this process read them: the alerts and
            # the rules' applicability go by what the registry says now
            self.fleet.take_registry(moved)
            out.rows.seen[:] = np.nan
            if late:   # (staging empties at commit: a test's second batch in one
                # transaction finds the first's rows there too, and this batch has not them)
                idx = self.fleet.lookup([d for d, _ in late])
                ok = np.isin(idx, out.rows.devices)
                out.rows.seen[np.searchsorted(out.rows.devices, idx[ok])] = \
                    np.array([t for _, t in late])[ok]
        if out.batch is not None:
            again = BatchOutcome()
            # no recount: the first transaction recorded the batch's firings as they came
            # (evaluated from memory), and a correction would count them twice; what the
            # rules did the same under the lock (as they mostly do) is not recorded again,
            # unless late rows were evaluated in order (alerts they do not fire are taken
            # back; the same fires recorded again change nothing) or skipped as too old
            # (a missed dose they answered is taken back)
            ev, _, recount, skipped = self._evaluate_locked(conn, out.batch, again, out.rows,
                                                            out.fresh)
            if out.transitions is None or not ev.transitions.same_as(out.transitions) \
                    or recount is not None or skipped is not None:
                self.record(conn, ev, again, recount=recount, count=False, skipped=skipped)
            out.add_written(again)

    def state_halves(self, out: BatchOutcome) -> list[BatchOutcome]:
        """The state `out` leaves apart (process(state_apart=True)), in two by device, in
        device order; each written alone by `write_state`, when the whole fails (see
        `Lane._write_state`). A part's firings are recorded again under the lock, which
        changes nothing where they are the same (alerts go by device time). [] for the state
        of one device or none: it has no halves."""
        if out.rows is None or out.state_rows is None or out.batch is None \
                or len(out.rows.devices) < 2:
            return []
        devices = out.rows.devices
        middle = len(devices) // 2
        return [self._state_part(out, np.arange(middle)),
                self._state_part(out, np.arange(middle, len(devices)))]

    def _state_part(self, out: BatchOutcome, k: I64) -> BatchOutcome:
        """`out`'s state apart for the devices at `k` of `out.rows.devices`."""
        assert out.rows is not None and out.state_rows is not None and out.batch is not None
        rows = out.rows
        devices = rows.devices[k]
        at = k.tolist()
        return BatchOutcome(
            state_apart=True, msg_device=out.msg_device,
            state_rows=tuple([column[i] for i in at] for column in out.state_rows),
            state=state_at(out.state, k),
            rows=DeviceRows(devices, rows.first[k], rows.latest[k], rows.seen[k].copy()),
            batch=out.batch.without(np.setdiff1d(rows.devices, devices)),
            fresh=np.intersect1d(out.fresh, devices))

    def refuse(self, conn: psycopg.Connection, message: RawMessage,
               error: BaseException, delivered: bool = False) -> BatchOutcome:
        """A message that processing failed on (a bug, or data the database refused), kept
        as a dead letter, and an alert so that a person looks: for a message on the alarm
        channel in the personal alarm's queue (someone may have pressed the button), for
        any other the service centre's. `delivered`: only its device state failed (see
        `write_state`), its events and alerts are stored; the service centre's, then."""
        try:
            device_id, channel, _ = parser_for(self.topic_root).lookup(message.topic)
        except TopicError:
            device_id, channel = "", None
        what = ("its events and alerts were stored, its device state was not" if delivered
                else "the rest of its batch went on")
        dead = DeadLetter(
            message.topic, message.payload, message.received_at,
            DeadLetterReason.PROCESSING_FAILED,
            f"vagt failed on this message ({type(error).__name__}: {first_line(error)}); "
            f"{what}. A bug, or data the database refused: the engine's log has the "
            "traceback", device_id or None)
        kept, again = _by_kept([dead], store.insert_dead_letters(conn, [dead]))
        who = device_id or message.topic[:200]
        alarm = channel is Channel.ALARM and not delivered
        summary = (f"an alarm from {who} could not be processed: contact the citizen (the "
                   "message is kept as a dead letter)" if alarm else
                   f"the device state a message from {who} carried could not be stored (its "
                   "events and alerts were; kept as a dead letter)" if delivered else
                   f"a message from {who} could not be processed (kept as a dead letter; the "
                   "engine's log says why)")
        d = self._known(conn, device_id)
        severity, priority, queue = (self._alarm_route() if alarm else
                                     ("warning", SERVICE_CENTRE_PRIORITY, SERVICE_CENTRE_QUEUE))
        firings = _registry_firings(REFUSED_ALARM_RULE if alarm else REFUSED_RULE, [who],
                                    np.array([message.received_at]), [message.topic],
                                    lambda _d, _t: summary, severity, priority, queue,
                                    labels={who: self._registry_labels(d)} if d >= 0 else None)
        return BatchOutcome(messages=1, dead=kept, dead_again=again,
                            opened=record_firings(conn, firings))

    def _known(self, conn: psycopg.Connection, device_id: str) -> int:
        """A refused message's device in the fleet (its dense index, -1 if none), from the
        registry if memory does not have it yet: the alarm lane's process learns its devices
        as they send, and a message that failed before it was attributed would make an
        alert without the device's municipality, which that municipality's operators never
        see. A registry that cannot be read (it may be what failed) leaves it -1."""
        if not device_id:
            return -1
        d = int(self.fleet.lookup([device_id])[0])
        if d >= 0:
            return d
        try:
            with conn.transaction():    # a savepoint: what follows goes on if it fails
                return int(self.fleet.resolve(conn, [device_id])[0])
        except psycopg.OperationalError:
            raise                       # the database is away: the refusal is tried again
        except Exception:
            log.exception("event=refused_device_not_read device_id=%s",
                          log_value(mask_cpr(device_id)[0]))
            return -1

    def _alarm_route(self) -> tuple[str, int, str]:
        """Severity, priority and queue of an alert about an alarm no rule saw: the personal
        alarm rule's (someone may have pressed the button)."""
        return ("critical", *alarm_destination(self.rules.rules))

    def after_commit(self, out: BatchOutcome) -> None:
        """Bring the in-memory fleet in line with what was just committed (the rules' state
        is in memory already: see `SharedRuleState`)."""
        self.fleet.apply(out.state)

    def restore(self, conn: psycopg.Connection) -> int:
        """The rules' stored state into memory (at start); returns how many devices had some."""
        return self.shared.restore(conn)

    def reload_rules(self, rules: list[Rule],
                     open_alerts: Iterable[tuple[str, str, float]]) -> list[str]:
        """New rules in place of the old; unchanged ones keep their state, new ones are
        seeded from `open_alerts` (`rule_queries.open_rule_alerts`, read by the caller)."""
        return self.rules.reload(rules, open_alerts)

    # -- stages ------------------------------------------------------------------------------

    def _attribute(self, conn: psycopg.Connection, messages: Sequence[RawMessage],
                   dec: DecodedBatch, msg_time: F64, out: BatchOutcome,
                   state_apart: bool = False) -> I64:
        """Dense device index per message; -1 for dead letters, including unknown devices.

        An unknown device's messages are dead letters, and the service centre gets one alert
        per unknown device id (repeats counted on it), not one per message.

        An alert about dead letters counts each once: a message whose topic and bytes are kept
        as a dead letter already (a copy) adds nothing to the service centre's alert while
        that alert is open (`_news`), and opens it again once it was resolved. One that looks
        like an alarm adds nothing only if it is also a retained copy (sent again at a
        subscribe): the same bytes sent live may be the button pressed again.
        """
        n = len(messages)
        device_of_msg = np.full(n, -1, dtype=np.int64)
        live = np.ones(n, dtype=bool)
        live[np.asarray(dec.dead_msg, dtype=np.int64)] = False
        live[np.asarray(dec.skipped_msg, dtype=np.int64)] = False
        live_pos = np.flatnonzero(live)
        idx = self.fleet.resolve(conn, [dec.msg_device[i] for i in live_pos])
        devices = np.unique(idx[idx >= 0])
        if state_apart:   # its alerts are made without the devices' rows: see the function
            hold_off_deployments(conn, [self.fleet.ids[d] for d in devices.tolist()])
            # as the registry has them now: deployed, returned or retired a moment ago (the
            # bulk lane's device-state UPDATE says so of its devices: `write_state`)
            self.fleet.refresh_registry(conn, devices)
        device_of_msg[live_pos] = idx
        unknown = live_pos[idx < 0]
        alike = self._in_other_case(conn, sorted({dec.msg_device[i] for i in unknown}))
        for i in unknown:
            m, device_id = messages[i], dec.msg_device[i]
            out.dead.append(DeadLetter(
                m.topic, m.payload, m.received_at, DeadLetterReason.UNKNOWN_DEVICE,
                f"device '{device_id}' (topic {m.topic}) is not registered; "
                + (_in_other_case(alike[device_id]) if device_id in alike else
                   "register it with `vagt devices import` before it sends"), device_id))
        # kept now, so that what is a copy (its topic and bytes kept before, or earlier in
        # the batch: a redelivery, a retained copy sent again, the same bytes again) is known
        kept = store.insert_dead_letters(conn, out.dead)
        copies = {i for i, k in zip([*dec.dead_msg, *unknown.tolist()], kept) if not k}
        out.dead, out.dead_again = _by_kept(out.dead, kept)
        # what looks like an alarm: only the broker's retained copy, kept before, is no news
        old_copies = {i for i in copies if messages[i].retained}
        news = np.asarray(_news(conn, UNKNOWN_DEVICE_RULE,
                                {i: dec.msg_device[i] for i in unknown.tolist()}, copies),
                          dtype=np.int64)
        if len(news):
            out.registry_firings = _registry_firings(
                UNKNOWN_DEVICE_RULE, [dec.msg_device[i] for i in news], msg_time[news],
                [messages[i].topic for i in news],
                lambda d, topic: f"unregistered device {d} is sending (last on {topic})"
                                 + (f"; {_in_other_case(alike[d])}" if d in alike else ""))
        # An alarm that could not be read may still be someone who needs help: the personal
        # alarm's queue hears of it (the message is a dead letter). So does an alarm from a
        # device the registry does not know, read or not: one installed but never recorded.
        alarm_ch = Channel.ALARM.value
        unread = [i for i in dec.dead_msg if dec.msg_channel[i] == alarm_ch and dec.msg_device[i]
                  and i not in old_copies]
        stray = [int(i) for i in unknown if dec.msg_channel[i] == alarm_ch
                 and int(i) not in old_copies]
        self._bad_topics(conn, messages, dec, msg_time, out, copies, old_copies)
        placed: dict[str, dict[str, str]] = {}
        if unread:
            idx_unread = self.fleet.resolve(conn, [dec.msg_device[i] for i in unread])
            known = idx_unread >= 0
            stray += [i for i, k in zip(unread, known.tolist()) if not k]
            unread = [i for i, k in zip(unread, known.tolist()) if k]
            placed = {dec.msg_device[i]: self._registry_labels(int(d))
                      for i, d in zip(unread, idx_unread[known].tolist())}
        if stray:
            out.registry_firings += _registry_firings(
                UNREGISTERED_ALARM_RULE, [dec.msg_device[i] for i in stray],
                msg_time[np.asarray(stray)], [messages[i].topic for i in stray],
                lambda d, topic: f"an alarm from {d}, which is not registered: someone may "
                                 f"need help; the service centre can say where it is installed "
                                 f"(last on {topic}; kept as a dead letter)",
                *self._alarm_route())
        if unread:
            reason = dict(zip(dec.dead_msg, (d.reason.value for d in dec.dead)))
            why = {dec.msg_device[i]: EMPTY if messages[i].payload == b"" else
                   _with_codes(reason[i], messages[i].payload) for i in unread}
            out.registry_firings += _registry_firings(
                UNREADABLE_ALARM_RULE, [dec.msg_device[i] for i in unread],
                msg_time[np.asarray(unread)], [messages[i].topic for i in unread],
                lambda d, topic: _unreadable_alarm(d, topic, why[d]),
                *self._alarm_route(), labels=placed)
        # A retired or lost device that sends is kept (nothing is lost), and the service
        # centre hears of it: a lost one is found, a retired one is back in someone's home.
        gone = live_pos[idx >= 0][self.fleet.status_in(idx[idx >= 0], OUT_OF_SERVICE)]
        if len(gone):
            status = {d: self.fleet.status[int(device_of_msg[i])]
                      for i in gone for d in (dec.msg_device[i],)}
            out.registry_firings += _registry_firings(
                OUT_OF_SERVICE_RULE, [dec.msg_device[i] for i in gone], msg_time[gone],
                [messages[i].topic for i in gone],
                lambda d, topic: f"{d} is registered as {status[d]} but is sending "
                                 f"(last on {topic})")
        return device_of_msg

    def _bad_topics(self, conn: psycopg.Connection, messages: Sequence[RawMessage],
                    dec: DecodedBatch, msg_time: F64, out: BatchOutcome,
                    copies: set[int], old_copies: set[int]) -> None:
        """A message on a topic vagt does not read (a channel no lane reads, levels too many
        or too few, a device level that is no device id) is a dead letter already; the
        service centre hears of it, once per device level (`bad_topic`), to set the device
        right. One that looks like an alarm (a level after the device's begins with
        'alarm', or its events hold a code the rule book makes critical) reaches the
        personal alarm's queue too, as an unreadable alarm does: someone may have pressed
        the button. Not as the alarm itself: the device is set wrong, and what it says on a
        topic vagt does not read is not taken as read (README, *Topics and payloads*).
        `copies`, `old_copies`: see `_attribute`."""
        bad = [i for i, d in zip(dec.dead_msg, dec.dead)
               if d.reason is DeadLetterReason.BAD_TOPIC and i not in old_copies]
        if not bad:
            return
        root = self.topic_root
        whole = {i: device_level(messages[i].topic, root) for i in bad}
        level = {i: v[:64] for i, v in whole.items()}   # what an alert names
        no_id = {level[i] for i, v in whole.items() if not DEVICE_ID.match(v)}
        ids = sorted({v for v in whole.values() if DEVICE_ID.match(v)})
        known = {d: int(k) for d, k in zip(ids, self.fleet.resolve(conn, ids).tolist())
                 if k >= 0}
        placed = {d: self._registry_labels(k) for d, k in known.items()}
        news = _news(conn, BAD_TOPIC_RULE, {i: level[i] for i in bad}, copies)
        if news:
            out.registry_firings += _registry_firings(
                BAD_TOPIC_RULE, [level[i] for i in news], msg_time[np.asarray(news)],
                [messages[i].topic for i in news],
                lambda _d, topic: _bad_topic(topic, root), labels=placed)
        critical = [r for r in self.rules.rules if r.kind == "event" and r.severity == "critical"]
        why: dict[str, str] = {}
        looks = []
        for i in bad:
            topic = messages[i].topic
            named = any(x.lower().startswith(ALARM) for x in channel_levels(topic, root).split("/"))
            codes = [c for c in _event_codes(messages[i].payload)
                     if any(r.matches_code(c) for r in critical)]
            if named or codes:
                looks.append(i)
                why[level[i]] = "; ".join(
                    ([f"a level of it begins with '{ALARM}'"] if named else [])
                    + ([f"it names {', '.join(codes[:5])}"] if codes else []))
        if not looks:
            return
        registered = [i for i in looks if level[i] in known]
        stray = [i for i in looks if level[i] not in known]
        for rule, which, summary in (
                (UNREADABLE_ALARM_RULE, registered,
                 lambda d, topic: _alarm_on_bad_topic(d, topic, why[d], root)),
                (UNREGISTERED_ALARM_RULE, stray,
                 lambda d, topic: _unregistered_on_bad_topic(d, topic, why[d],
                                                             d not in no_id))):
            if which:
                out.registry_firings += _registry_firings(
                    rule, [level[i] for i in which], msg_time[np.asarray(which)],
                    [messages[i].topic for i in which], summary, *self._alarm_route(),
                    labels=placed)

    def _update_devices(self, conn: psycopg.Connection, dec: DecodedBatch, device_of_msg: I64,
                        usable: Bools, msg_time: F64, received: F64, r: _Rows,
                        r_metric: Objs, r_value: F64, batch: Batch, out: BatchOutcome) -> None:
        """Fleet state per device of the batch, by device time (a redelivery changes nothing),
        when we heard it last (by our clock: its silence is judged from that, whatever its
        clock says), and the device time each device's rows begin at (for telling late
        rows)."""
        msgs = np.flatnonzero(usable)
        if len(msgs) == 0:
            return
        devs = device_of_msg[msgs]
        uniq, inv = np.unique(devs, return_inverse=True)
        seen = np.full(len(uniq), -np.inf)
        np.maximum.at(seen, inv, msg_time[msgs])
        heard = np.full(len(uniq), -np.inf)
        np.maximum.at(heard, inv, received[msgs])
        pos = {int(d): k for k, d in enumerate(uniq)}
        battery, battery_t = _latest(uniq, r.device, r_metric == "battery", r_value, r.time)
        signal, signal_t = _latest(uniq, r.device, r_metric == "signal", r_value, r.time)
        firmware: list[str | None] = [None] * len(uniq)
        fw_t = np.full(len(uniq), -np.inf)
        for j, i in enumerate(dec.f_msg):  # status messages only: a handful per batch
            if usable[i]:
                k = pos[int(device_of_msg[i])]
                if dec.f_time[j] >= fw_t[k]:
                    fw_t[k], firmware[k] = dec.f_time[j], dec.f_firmware[j]
        fw_t[np.isinf(fw_t)] = np.nan   # none in the batch
        counters = _counters(uniq, devs, np.asarray(dec.msg_seq, dtype=np.int64)[msgs])
        out.rows = rows = _device_rows(batch)   # its devices are `uniq`
        out.state_rows = ([self.fleet.ids[int(d)] for d in uniq], seen.tolist(),
                          heard.tolist(), _nulls(battery), _nulls(battery_t), _nulls(signal),
                          _nulls(signal_t),
                          firmware, _nulls(fw_t), *counters.columns(), rows.first.tolist(),
                          [self.fleet.registry_key(int(d)) for d in uniq])
        out.state = StateUpdate(uniq, seen, battery, battery_t, signal, signal_t, firmware,
                                fw_t, heard)

    def record(self, conn: psycopg.Connection, ev: Evaluation, out: BatchOutcome,
               extra: Sequence[AlertFiring] = (), recount: Recount | None = None,
               count: bool = True, skipped: Batch | None = None, new: bool = False,
               news: I64 | None = None) -> None:
        """An evaluation's fires and clears into the alert queue, round by round: a device's
        second transition in a batch goes in only after its first. The fires of devices
        evaluated again in order (`recount`) correct their alerts first (unless not `count`:
        the alarm lane recorded them from memory; a new episode among them is recorded in its
        round, and the events an alert a person resolved never counted as new:
        `replay.correct`), their clears resolve what the rows out of order had kept firing,
        and the alerts the rows in order do not fire at all are taken back (`replay`), as are
        the missed doses that rows too old to evaluate in order (`skipped`) show answered in
        time. `new`: every fire not of readings is of rows never recorded (the alarm lane's);
        `news`: the devices whose rows evaluated were all new, whose alarms (the rules that
        count every one, in any order) are so (`record_firings(new=True)`)."""
        fr: tuple[npt.NDArray[Any], ...] = ev.transitions.fires()
        every_fire = fr
        cr, cd, ct, co = clears = ev.transitions.clears()
        renew = np.zeros(len(fr[0]), dtype=bool)   # new rows to an alert a person resolved
        if recount is not None and count:
            fr, renew = correct(conn, ev.rules, self.fleet.ids, fr, clears, recount)
        if news is not None and len(fr[0]):
            any_order = np.array([r.kind == "event" and not r.clear_codes for r in ev.rules])
            renew |= any_order[fr[0]] & np.isin(fr[1], news)
        expired = ev.transitions.expired()
        judged = rejudged(recount, cr, cd)
        rounds = np.union1d(fr[7], co).tolist() or ([0] if extra else [])
        for k in rounds:
            sel = fr[7] == k
            firings = self._to_alert_firings(ev.rules, tuple(c[sel & ~renew] for c in fr[:7]))
            if k == rounds[0]:
                firings += list(extra)
            if new:     # of new events; a reading may come again with an alarm's pack
                by_readings = {r.name for r in ev.rules if r.uses_readings}
                out.opened += record_firings(
                    conn, [f for f in firings if f.rule not in by_readings], new=True)
                firings = [f for f in firings if f.rule in by_readings]
            out.opened += record_firings(conn, firings)
            if (sel & renew).any():
                out.opened += record_firings(conn, self._to_alert_firings(
                    ev.rules, tuple(c[sel & renew] for c in fr[:7])), new=True)
            c = co == k
            if c.any():
                fps = [fingerprint(ev.rules[r].name, self.fleet.ids[d])
                       for r, d in zip(cr[c].tolist(), cd[c].tolist())]
                quiet = [_quiet_for(ev.rules[r]) if e else None
                         for r, e in zip(cr[c].tolist(), expired[c].tolist())]
                out.cleared += len(clear_alerts(conn, fps, ct[c].tolist(), quiet,
                                                rejudged=[judged[j] for j in np.flatnonzero(c)]))
        taken: list[tuple[list[int], list[int]]] = []
        if recount is not None:
            taken.append(take_back_unsupported(conn, ev.rules, self.fleet.ids, every_fire,
                                               recount))
        if skipped is not None:
            taken.append(take_back_answered(conn, ev.rules, self.fleet.ids, skipped))
        for resolved, noted in taken:
            out.taken_back += resolved
            out.noted += noted
            out.cleared += len(resolved)

    def _in_other_case(self, conn: psycopg.Connection, ids: list[str]) -> dict[str, str]:
        """`store.registered_in_other_case`, remembered for ALIKE_TTL_S."""
        now = self.clock()
        if len(self._alike) > ALIKE_MAX:
            self._alike = {}
        stale = [d for d in ids if now - self._alike.get(d, (-np.inf, None))[0] > ALIKE_TTL_S]
        if stale:
            found = store.registered_in_other_case(conn, stale)
            self._alike.update({d: (now, found.get(d)) for d in stale})
        return {d: a for d in ids if (a := self._alike.get(d, (now, None))[1]) is not None}

    def _registry_labels(self, d: int) -> dict[str, str]:
        """The labels a rule's alert of device `d` has from the registry (municipality, type,
        vendor, model): the routing tree goes by them, and an operator of a municipality sees
        only the alerts labelled with it."""
        f = self.fleet
        values = (f.municipality[d], f.type[d], f.vendor[d], f.model[d])
        return {k: v for k, v in zip(DEVICE_LABELS, values) if v}

    def _store_bad_readings(self, conn: psycopg.Connection, b: Batch, ev: Evaluation,
                            out: BatchOutcome) -> None:
        rows = np.flatnonzero(ev.bad)
        if len(rows) == 0:
            return
        f = self.fleet
        devs = b.r_device[rows].tolist()
        vendor, model = [f.vendor[d] for d in devs], [f.model[d] for d in devs]
        metric = b.r_metric[rows].tolist()
        out.bad_readings.update(rule_queries.insert_bad_readings(
            conn, [f.ids[d] for d in devs], metric, b.r_time[rows].tolist(),
            b.r_value[rows].tolist(), vendor, model))

    def _to_alert_firings(self, rules: list[Rule], cols: tuple[npt.NDArray[np.generic], ...]
                          ) -> list[AlertFiring]:
        result = []
        f = self.fleet
        for r, d, t0, t1, v, c, k in zip(*(col.tolist() for col in cols)):
            rule = rules[r]
            device_id = f.ids[d]
            if not rule.uses_readings:   # a device's code ("alarm.0101901234" is one)
                c = mask_cpr(c)[0]       # goes to the call centre's systems: masked
            metric = c if rule.kind == "validity" else rule.metric
            summary = rule.summary.format(device_id=device_id, code=c, metric=metric,
                                          value=v)
            if rule.kind == "absence" and c == NEVER_HEARD:
                summary += NEVER_HEARD_NOTE
            what = {"metric": metric} if rule.uses_readings else {"code": c}
            labels = {"rule": rule.name, "device_id": device_id,
                      "municipality": f.municipality[d], "type": f.type[d],
                      "vendor": f.vendor[d], "model": f.model[d], "severity": rule.severity,
                      **what, **rule.labels}
            result.append(AlertFiring(rule.name, device_id, summary, rule.severity,
                                      rule.priority, rule.queue, t0, t1, k, labels))
        return result


# Said after an absence rule's summary for a device never heard since its deployment: its
# template cannot tell (it says how long, which is as true), and what to check differs.
NEVER_HEARD_NOTE = ("; never heard from since it was deployed: check that it was installed "
                    "and connected (power, Wi-Fi or SIM, its gateway)")


def _by_kept(dead: list[DeadLetter], kept: list[bool]
             ) -> tuple[list[DeadLetter], list[DeadLetter]]:
    """The dead letters kept now, and those whose bytes were kept before."""
    return ([d for d, k in zip(dead, kept) if k], [d for d, k in zip(dead, kept) if not k])


def _keep_dead(conn: psycopg.Connection, dead: list[DeadLetter], out: BatchOutcome) -> None:
    """Store dead letters of messages used in part; counted as kept now, or kept before
    (their bytes came before: a redelivery)."""
    kept, again = _by_kept(dead, store.insert_dead_letters(conn, dead))
    out.dead += kept
    out.dead_again += again


def _without_conflicting(conn: psycopg.Connection, messages: Sequence[RawMessage],
                         stored: conflicts.Stored, r: _Rows, r_metric: Objs, r_value: F64,
                         r_unit: list[str], out: BatchOutcome) -> tuple[_Rows, Objs, F64]:
    """The readings without those that another value of their device, metric and time was
    stored before (not stored: the rules and the device's state must not see them either);
    each of their messages is kept as a `conflict` dead letter too, saying what was stored
    and what came. The rest of such a message is used (its rows are stored by now), as an
    alarm used in part is: one reading that a device sent again with another value does not
    hold back its other readings and its events."""
    metric = r_metric.tolist()
    lost, was = conflicts.conflicting(stored, r.device_id, metric, r_value, r.time)
    dead = conflicts.dead_letters(messages, lost, r.msg, r.device_id, metric, r_value, r_unit,
                                  r.time, was)
    _keep_dead(conn, dead, out)
    keep = ~lost
    return (_Rows(r.device[keep], _pick(r.device_id, keep), r.msg[keep], r.time[keep]),
            r_metric[keep], r_value[keep])


def _news(conn: psycopg.Connection, rule: str, keys: Mapping[int, str],
          copies: Collection[int]) -> list[int]:
    """Of the messages `keys` (index: the device id an alert of `rule` names), those that
    add to that alert: all but the copies (see `_attribute`) of a device whose alert is open, or
    that has a message in the batch that is no copy. A copy of a device whose alert was
    resolved opens it again: a device that goes on sending the same bytes (unregistered, or
    on a topic vagt does not read, a status without a time) is not forgotten by the service
    centre for the 90 days its dead letter is kept."""
    named = {i: mask_cpr(k)[0] for i, k in keys.items()}
    told = {k for i, k in named.items() if i not in copies}
    asked = {fingerprint(rule, k): k for i, k in named.items() if i in copies and k not in told}
    told |= {asked[f] for f in rule_queries.unresolved(conn, sorted(asked))}
    return [i for i, k in named.items() if i not in copies or k not in told]


def _message_times(dec: DecodedBatch, received: F64) -> F64:
    """Per message, the latest device time of its rows; its arrival when it has none."""
    t = np.full(len(received), -np.inf)
    for rows_msg, rows_time in ((dec.r_msg, dec.r_time), (dec.e_msg, dec.e_time),
                                (dec.f_msg, dec.f_time)):
        if rows_msg:
            np.maximum.at(t, np.asarray(rows_msg, dtype=np.int64),
                          np.asarray(rows_time, dtype=np.float64))
    return np.where(np.isinf(t), received, t)


OUT_OF_SERVICE = ("retired", "lost")


def _registry_firings(rule: str, device_ids: list[str], times: F64, topics: list[str],
                      summary: Callable[[str, str], str], severity: str = "warning",
                      priority: int = SERVICE_CENTRE_PRIORITY,
                      queue: str = SERVICE_CENTRE_QUEUE,
                      labels: Mapping[str, Mapping[str, str]] | None = None
                      ) -> list[AlertFiring]:
    """One firing per device id of the batch, counting its messages, for what no rule
    sees: by default for the service centre, not the call centre, about a device the
    registry does not expect to hear from (never registered: a swap not recorded, a typo, or
    something that should not be there; retired or lost). `labels`: a device's registry
    labels (`Pipeline._registry_labels`), where the alert must have them."""
    # An id from the wire may be a citizen's CPR number (an installer's naming; the registry
    # refuses such ids): alerts go to the call centre's systems, so it is masked (the dead
    # letter keeps the message whole, for `vagt privacy scan` and `scrub`).
    seen: dict[str, tuple[float, float, str, int, str]] = {}   # first, last, last topic,
    for d, t, topic in zip(device_ids, times.tolist(), topics):  # count, the id as sent
        key = mask_cpr(d)[0]
        first, last, _, n, _ = seen.get(key, (t, t, topic, 0, d))
        seen[key] = (min(first, t), max(last, t), topic, n + 1, d)
    labels = labels or {}
    return [AlertFiring(rule, key, mask_cpr(summary(d, topic))[0], severity, priority, queue,
                        first, last, n, {**labels.get(d, {}), "rule": rule, "device_id": key,
                                         "severity": severity})
            for key, (first, last, topic, n, d) in sorted(seen.items())]


def _quiet_for(rule: Rule) -> str:
    """How long an expired alert's rule heard nothing (its `clear_after`), for its note."""
    s = int(rule.clear_after or 0)
    return f"{s // 3600} h" if s % 3600 == 0 else f"{s // 60} min" if s % 60 == 0 else f"{s} s"


# A channel, or a SenML record's name, that says alarm
ALARM = Channel.ALARM.value

# Why an alarm could not be read, when the message was empty: no device sends that, but it
# is how a retained copy is cleared (published retained), as the alert about one says to do,
# and the broker passes it on to the engine too.
EMPTY = "empty"


def _with_codes(reason: str, payload: bytes) -> str:
    """The reason an alarm could not be read, with the event codes it names that are codes
    (a fall or a panic: the call centre may ask differently)."""
    codes = _event_codes(payload)
    return f"{reason}; it names {', '.join(codes[:5])}" if codes else reason


def _event_codes(payload: bytes) -> list[str]:
    """The event codes a payload names that are codes, sorted: a canonical document's
    `events[].code`, a SenML pack's `vs` of a record named '...event' or '...alarm' (as
    `senml` reads them); [] for anything else."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return []
    if type(doc) is dict:
        events = doc.get("events")
        named = [e["code"] for e in events if type(e) is dict and type(e.get("code")) is str
                 ] if type(events) is list else []
    elif type(doc) is list:
        named, base = [], ""
        for r in doc:           # a record's name is its base name (carried on) and its own
            if type(r) is not dict:
                continue
            if type(r.get("bn")) is str:
                base = r["bn"]
            name, value = r.get("n", ""), r.get("vs")
            if type(name) is str and type(value) is str \
                    and (base + name).endswith(("event", ALARM)):
                named.append(_senml_code(base + name, value))
    else:
        return []
    return sorted({c for c in named if len(c) <= EVENT_CODE_MAX and EVENT_CODE.match(c)})


def _senml_code(name: str, value: str) -> str:
    return f"{ALARM}.{value}" if name.endswith(ALARM) and "." not in value else value


def _bad_topic(topic: str, root: str) -> str:
    return (f"a message on {topic[:200]!r}, a topic vagt does not read: set the device that "
            f"sent it (or its gateway) to publish on {root}/dev/{{its id}}/telemetry, alarm "
            "or status, which vagt reads (kept as a dead letter, which says what is wrong)")


def _alarm_on_bad_topic(device_id: str, topic: str, why: str, root: str) -> str:
    return (f"a message from {device_id} that may be an alarm came on {topic[:200]!r}, a topic "
            f"vagt does not read as an alarm ({why}): contact the citizen; the service centre "
            f"is to set the device to publish alarms on {root}/dev/{device_id}/alarm (kept as "
            "a dead letter)")


def _unregistered_on_bad_topic(level: str, topic: str, why: str, is_id: bool) -> str:
    if not is_id:
        return (f"an alarm on a topic whose device level {level!r} is not a device id: someone "
                "may need help; the service centre can say which device sends on "
                f"{topic[:200]!r} (kept as a dead letter)")
    return (f"a message from {level}, which is not registered, that may be an alarm came on "
            f"{topic[:200]!r}, a topic vagt does not read as an alarm ({why}): someone may "
            "need help; the service centre can say where it is installed (kept as a dead "
            "letter)")


def _unreadable_alarm(device_id: str, topic: str, reason: str) -> str:
    if reason == EMPTY:
        return (f"an empty message came on the alarm topic of {device_id} ({topic}): if the "
                "service centre just cleared a retained copy there (an empty retained "
                "message), it was that; else the device sent it: contact the citizen (kept "
                "as a dead letter)")
    if reason.startswith(DeadLetterReason.RETAINED.value):
        return (f"an old retained copy of an alarm from {device_id} came when vagt subscribed: "
                "it may be the only trace of an alarm; check on the citizen, then have the "
                f"copy cleared (an empty retained message on {topic}) and the device set to "
                "publish with retain=false (kept as a dead letter)")
    return (f"an alarm from {device_id} could not be read ({reason}): contact the citizen "
            f"(last on {topic}; kept as a dead letter)")


def _in_other_case(registered: str) -> str:
    return (f"the registry has '{registered}', which differs from it only in case: device "
            f"ids are case-sensitive, so the device must send as '{registered}'")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _keep(row_msg: list[int], usable: Bools) -> Bools:
    """Which rows belong to a usable message."""
    if not row_msg:
        return np.zeros(0, dtype=bool)
    return usable[np.asarray(row_msg, dtype=np.int64)]


def _rows(device_id: list[str], row_msg: list[int], row_time: list[float], usable: Bools,
          device_of_msg: I64) -> _Rows:
    keep = _keep(row_msg, usable)
    msg = np.asarray(row_msg, dtype=np.int64)[keep]
    return _Rows(device_of_msg[msg], _pick(device_id, keep), msg,
                 np.asarray(row_time, dtype=np.float64)[keep])


def _pick(column: list[str], keep: Bools) -> list[str]:
    if keep.all():
        return column
    return [v for v, k in zip(column, keep) if k]


def _latest(uniq: I64, dev: I64, mask: Bools, value: F64,
            time: F64) -> tuple[F64, F64]:
    """Per device in `uniq`, the value with the latest time among the masked rows (NaN: none)."""
    values = np.full(len(uniq), np.nan)
    times = np.full(len(uniq), np.nan)
    if not mask.any():
        return values, times
    d, v, t = dev[mask], value[mask], time[mask]
    order = np.lexsort((t, d))
    d, v, t = d[order], v[order], t[order]
    last = np.r_[d[1:] != d[:-1], True]
    at = np.searchsorted(uniq, d[last])  # uniq is sorted (np.unique)
    values[at], times[at] = v[last], t[last]
    return values, times


WINDOW = 63   # message counters a device's row keeps track of below its highest (0013)


@dataclass(frozen=True)
class Counters:
    """Per device of a batch, its message counters: the highest (-1: none), the lowest, how
    many distinct, which of the WINDOW up to the highest came (bit i: highest - i), and all
    of them where they span WINDOW or more (else None: the bits say everything). The
    device's row counts the gaps from them under its lock (migrations 0013, 0014)."""

    hi: I64
    lo: I64
    n: I64
    bits: I64
    seqs: list[list[int] | None]

    def columns(self) -> tuple[list[Any], ...]:
        """For the device-state staging table: NULL `hi` where a device sent no counter (the
        SQL looks at the others only where `hi` is not NULL)."""
        return ([None if x < 0 else x for x in self.hi.tolist()], self.lo.tolist(),
                self.n.tolist(), self.bits.tolist(), self.seqs)


def _counters(uniq: I64, devs: I64, seqs: I64) -> Counters:
    """The counters (`seqs`, -1: none) of messages of devices `devs`, per device in `uniq`
    (sorted)."""
    k = len(uniq)
    hi, lo = np.full(k, -1, dtype=np.int64), np.full(k, -1, dtype=np.int64)
    n, bits = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
    every: list[list[int] | None] = [None] * k
    has = seqs >= 0
    if not has.any():
        return Counters(hi, lo, n, bits, every)
    pairs = np.unique(np.stack([devs[has], seqs[has]], axis=1), axis=0)  # by device, counter
    d, s = pairs[:, 0], pairs[:, 1]
    starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
    ends = np.r_[starts[1:], len(d)] - 1
    at = np.searchsorted(uniq, d[starts])
    hi[at], lo[at] = s[ends], s[starts]
    n[at] = ends - starts + 1
    off = np.repeat(s[ends], ends - starts + 1) - s
    flags = np.where(off < WINDOW, np.left_shift(1, np.minimum(off, WINDOW - 1)), 0)
    bits[at] = np.bitwise_or.reduceat(flags.astype(np.int64), starts)
    for g in np.flatnonzero(s[ends] - s[starts] >= WINDOW).tolist():   # rare: big flushes
        every[int(at[g])] = s[starts[g]:ends[g] + 1].tolist()
    return Counters(hi, lo, n, bits, every)


def state_at(state: StateUpdate, k: I64) -> StateUpdate:
    """The rows at `k` of a batch's device state."""
    if len(state.device) == 0:
        return state
    return StateUpdate(device=state.device[k], seen=state.seen[k], battery=state.battery[k],
                       battery_at=state.battery_at[k], signal=state.signal[k],
                       signal_at=state.signal_at[k],
                       firmware=[state.firmware[i] for i in k.tolist()],
                       firmware_at=state.firmware_at[k], heard=state.heard[k])


def _nulls(values: F64) -> list[float | None]:
    """NaN as NULL, for the database."""
    return [None if x != x else x for x in values.tolist()]


def _device_rows(b: Batch) -> DeviceRows:
    """Per device of the batch's messages: the earliest and the latest device time of its
    rows; none late yet."""
    devs = np.unique(b.m_device)
    d = np.concatenate([b.r_device, b.e_device, b.m_device])
    t = np.concatenate([b.r_time, b.e_time, b.m_time])
    at = np.searchsorted(devs, d)
    first = np.full(len(devs), np.inf)
    latest = np.full(len(devs), -np.inf)
    np.minimum.at(first, at, t)
    np.maximum.at(latest, at, t)
    return DeviceRows(devs, first, latest, np.full(len(devs), np.nan))
