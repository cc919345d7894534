"""The engine process: two MQTT lanes, one pipeline, one database pool, metrics.

The alarm lane is its own MQTT session (own queue and in-flight window at the broker), so a
telemetry backlog never holds an alarm back. Each lane: take a batch, process it in one
transaction, commit, then acknowledge. `run_engine` returns when `stop` is set, after each
lane has committed and acknowledged the batch in hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import getpass
import logging
import os
import queue as queues
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from vagt.alerts import outbox
from vagt.alerts.engine_rules import SERVICE_CENTRE_QUEUE
from vagt.alerts.policy import AlertPolicy, DeliveryPolicy, install_policy, load_policy
from vagt.alerts.routing import queues_of
from vagt.alerts.silence_scope import install_rule_book
from vagt.app import db, heap, retention, rule_queries, statistics, store
from vagt.app.alarm_process import AlarmLaneProcess, AlarmPipeline, serve_control
from vagt.app.child import ChildProcess, child_pipe, child_signals, yield_cpu
from vagt.app.config import LOG_FORMAT, Config, redact_url
from vagt.app.metrics import EngineMetrics
from vagt.app.pipeline import BatchOutcome, Pipeline, state_at
from vagt.app.receiver import ReceiverProcess, ReceiverSettings
from vagt.app.watchdog import WATCHDOG, guarded_connection
from vagt.devices.catalogue import Catalogue, load_catalogue
from vagt.devices.fleet import Fleet, StateUpdate
from vagt.errors import first_line, log_value
from vagt.ingest.consumer import MqttSession, SessionSettings
from vagt.ingest.model import Channel, RawMessage
from vagt.ingest.topics import every_device_topic, subscription_filters
from vagt.privacy import mask_cpr
from vagt.rules import Rule, load_rules
from vagt.threads import start_kept_running

log = logging.getLogger("vagt.engine")

T = TypeVar("T")
P = TypeVar("P")    # a part of what failed as a whole (`Lane._halving`)


@dataclass(frozen=True)
class LaneSpec:
    name: str
    channels: tuple[Channel, ...]
    batch_max: int
    batch_wait_s: float
    # Commit events and alerts first, then the devices' state in a second transaction, then
    # acknowledge. The bulk lane's open transaction holds the row locks of thousands of
    # devices (a personal alarm's heartbeats come on the bulk lane too); waiting on them was
    # most of an alarm's latency during a drain (py-spy: 36% of the alarm lane's busy time).
    # The rules' state is written in the second transaction too, under the devices' lock
    # (the alert came from the state in memory), by a thread of its own (`_Settler`) so that
    # the next alarm does not wait. A crash between the two redelivers the alarm: events and
    # alerts ignore the copy, the state is written then.
    state_apart: bool = False
    # The lane thread's niceness (Linux: per thread), and its receiver process's: the bulk
    # lane yields the CPU to the alarm lane's process. While a backlog drains, the machine's
    # CPU is busy, and alarms waited for it (p99 670 ms in one run; 116 ms at 10, 47 at 19).
    nice: int = 0
    # How long a batch may wait to fill while the lane drains a backlog (see CatchingUp):
    # the batch's messages are old already, and each batch costs its round trips and its
    # commit whatever its size. The bulk lane, committing as fast as the receiver fed it,
    # took 1,200 messages a batch while it drained a backlog; waiting up to 250 ms, 8,700,
    # and PostgreSQL and the engine spent a fifth less CPU per message (README).
    backlog_wait_s: float = 0.0
    # Its session stops reading while it holds mqtt.receive_maximum messages not yet
    # acknowledged (`SessionSettings.stop_reading_at_receive_maximum`): Mosquitto 2.0.11
    # sends past the limit once acknowledgements flow, and an engine slower than its
    # receiver held the backlog in memory. The bulk lane's; the alarm lane reads on.
    stop_reading_at_receive_maximum: bool = False
    # How long one of the lane's transactions may take before its connection is cut and it
    # is tried on a new one (vagt.app.watchdog); the state left apart has the bulk lane's
    # (it waits for the bulk lane's locks).
    transaction_timeout_s: float = 120.0
    state_timeout_s: float = 120.0
    # The lane subscribes to every device topic (`{root}/dev/#`) and reads `channels` in
    # its place only if the broker refuses it: a device on a channel no lane reads (a
    # personal alarm set to 'alarms') is kept as a dead letter, with an alert, not dropped
    # at the broker. The bulk lane's; it gets the alarm channel's copies too, and leaves
    # them to the alarm lane (`skip`): acknowledged with its batch, nothing else. Not a third
    # filter beside its two: Mosquitto 2 sends a message once per matching subscription.
    every_device_topic: bool = False
    skip: frozenset[str] = frozenset()


def lane_specs(config: Config) -> list[LaneSpec]:
    ing = config.ingest
    # A batch is at most what the broker may have sent unacknowledged (MQTT 5's Receive
    # Maximum): a lane waiting to fill a bigger one while draining would wait in vain.
    bulk_max = ing.bulk_batch_max
    if config.mqtt.protocol == 5:
        bulk_max = min(bulk_max, config.mqtt.receive_maximum)
    limits = config.database
    return [
        LaneSpec("alarm", (Channel.ALARM,), ing.alarm_batch_max, 0.0, state_apart=True,
                 transaction_timeout_s=limits.alarm_transaction_timeout_s,
                 state_timeout_s=limits.transaction_timeout_s),
        LaneSpec("bulk", (Channel.TELEMETRY, Channel.STATUS), bulk_max,
                 ing.bulk_batch_wait_ms / 1000, nice=ing.bulk_nice,
                 backlog_wait_s=ing.bulk_backlog_wait_ms / 1000,
                 stop_reading_at_receive_maximum=True,
                 transaction_timeout_s=limits.transaction_timeout_s,
                 state_timeout_s=limits.transaction_timeout_s,
                 every_device_topic=True, skip=frozenset({Channel.ALARM.value})),
    ]


def session_settings(config: Config, lane: LaneSpec) -> SessionSettings:
    m = config.mqtt
    filters = tuple(subscription_filters(m.topic_root, lane.channels, m.share_group))
    fallback: tuple[str, ...] = ()
    if lane.every_device_topic:
        filters, fallback = (every_device_topic(m.topic_root, m.share_group),), filters
    return SessionSettings(
        client_id=f"{m.client_id}-{lane.name}",
        filters=filters, fallback_filters=fallback,
        host=m.host, port=m.port, username=m.username, password=m.password, tls=m.tls,
        ca_file=m.ca_file, protocol=m.protocol, session_expiry_s=m.session_expiry_s,
        receive_maximum=m.receive_maximum, keepalive_s=m.keepalive_s,
        max_payload_bytes=config.ingest.max_payload_bytes,
        stop_reading_at_receive_maximum=lane.stop_reading_at_receive_maximum,
    )


# A batch whose messages are mostly this much older than their arrival is a backlog being
# drained (a device's own buffered flush is a few messages, not most of a batch).
CATCH_UP_LAG_S = 120.0


class CatchingUp:
    """Which lanes are draining a backlog: their last batch was full, or its messages were
    mostly older than CATCH_UP_LAG_S by the devices' own clocks.

    While one is, the rules' deadlines wait (see RuleTimer): after an outage, a device's
    dose.taken or heartbeat may still be queued at the broker behind its dose.due, and a
    deadline judged by the wall clock would open false alerts by the thousand.
    """

    def __init__(self, lanes: Iterable[str] = ()) -> None:
        # Until a lane has taken its first batch it may be in front of a backlog: at start,
        # after an outage, the broker holds what came meanwhile.
        self._full: dict[str, bool] = dict.fromkeys(lanes, True)
        self._others: list[Callable[[], bool]] = []

    def mark(self, lane: str, full: bool) -> None:
        self._full[lane] = full

    def follow(self, catching_up: Callable[[], bool]) -> None:
        """Count a lane that runs elsewhere (the alarm lane's process) too."""
        self._others.append(catching_up)

    def __bool__(self) -> bool:
        return any(self._full.values()) or any(f() for f in self._others)


class Session(Protocol):
    """What a lane takes its batches from: an `MqttSession`, or the bulk lane's receiving
    process (`ReceiverProcess`)."""

    @property
    def connected(self) -> bool: ...

    @property
    def behind(self) -> bool:
        """The last `take` left messages waiting: the lane is behind (a backlog)."""

    @property
    def refused_filters(self) -> tuple[str, ...]:
        """The filters the broker refused the session (an ACL too narrow)."""

    def take(self, max_n: int, max_wait_s: float,
             stop: threading.Event) -> list[RawMessage]: ...

    def ack(self, messages: list[RawMessage]) -> int: ...

    def close(self) -> None: ...


class Lane:
    """One session's loop: take, process, commit, acknowledge."""

    def __init__(self, spec: LaneSpec, session: Session, pool: ConnectionPool,
                 pipeline: Pipeline, metrics: EngineMetrics,
                 catching_up: CatchingUp | None = None,
                 renew: Callable[[Callable[[Pipeline], object]], object] | None = None
                 ) -> None:
        self.spec = spec
        self.session = session
        self.pool = pool
        self.pipeline = pipeline
        self.metrics = metrics
        self.catching_up = catching_up if catching_up is not None else CatchingUp()
        # the pipeline loaded again, between batches (the alarm lane's process: AlarmPipeline)
        self._renew = renew
        self._behind = False   # the last batch taken left more waiting (see CatchingUp)
        self._draining = False  # the last batch committed was part of a backlog
        # when each batch taken and not yet committed and acknowledged was taken, oldest
        # first (the alarm lane's settler finishes them in order)
        self._in_hand: deque[float] = deque()
        metrics.batch_in_hand.labels(spec.name).set_function(self.oldest_in_hand_s)
        # 0 from the start: a first one served at 1 is no increase to `increase()`
        metrics.messages_refused.labels(spec.name)
        metrics.db_errors.labels(spec.name)

    def oldest_in_hand_s(self) -> float:
        """How long ago the oldest batch still in hand was taken; 0 with none."""
        try:
            return time.monotonic() - self._in_hand[0]
        except IndexError:
            return 0.0

    def run(self, stop: threading.Event) -> None:
        # read at each scrape: set in the loop, it said 1 for as long as a commit waited for
        # the database, however long the broker had been gone
        self.metrics.mqtt_connected.labels(self.spec.name).set_function(
            lambda: 1.0 if self.session.connected else 0.0)
        if self.spec.nice:
            yield_cpu(self.spec.nice, threading.get_native_id())
        settler = _Settler(self, stop) if self.spec.state_apart else None
        try:
            while not stop.is_set():
                if settler is not None:
                    settler.check()
                wait = self.spec.batch_wait_s
                if self._draining:
                    wait = max(wait, self.spec.backlog_wait_s)
                batch = self.session.take(self.spec.batch_max, wait, stop)
                # full, or more waiting: not the same with the receiver, whose merged batches
                # stop short of batch_max (whole batches only) while a backlog queues behind
                self._behind = len(batch) >= self.spec.batch_max or self.session.behind
                if batch:
                    self._in_hand.append(time.monotonic())
                    self._commit_until_done(batch, stop, settler)
                else:
                    self._mark_draining(False)
                    if self._renew is not None and not self._in_hand:  # none to settle
                        self._renew(functools.partial(setattr, self, "pipeline"))
        finally:
            if settler is not None:
                settler.close()
        if settler is not None:
            settler.check()

    def _commit_until_done(self, batch: list[RawMessage], stop: threading.Event,
                           settler: _Settler | None = None) -> None:
        """Commit the batch, retrying while the database is away; then acknowledge it.

        The broker resends nothing within a connection, so a batch taken is held until it
        commits. If we stop before that, it is not acknowledged and comes again next time.

        A batch that fails otherwise (a bug, or data the database refuses, set off by one
        of its messages) goes again in halves (`_in_halves`), and the message that fails is
        kept as a dead letter, with an alert (`Pipeline.refuse`). Raised, the error would
        end the lane, the broker would send the same batch again, and it would fail again:
        the alarms behind it would wait for ever.
        """
        name = self.spec.name
        started = time.monotonic()
        try:
            done = self._in_transaction(
                lambda conn: self.pipeline.process(conn, batch, self.spec.state_apart,
                                                   self.spec.skip), stop)
        except Exception:
            log.exception("event=batch_failed lane=%s messages=%d note=again_in_halves",
                          name, len(batch))
            done = self._in_halves(batch, stop)
        if done is None:
            log.warning("event=batch_abandoned lane=%s messages=%d "
                        "note=not_acknowledged_broker_will_resend", name, len(batch))
            self._in_hand.popleft()
            return
        outcome = done[0]
        committed = time.time()
        if settler is not None and outcome.state_apart:
            settler.put((batch, outcome, committed, started))  # the lane takes the next one
            return
        self._finish(batch, outcome, committed, started)

    def _in_halves(self, batch: list[RawMessage],
                   stop: threading.Event) -> tuple[BatchOutcome] | None:
        """The batch again in halves (`_halving`), each part with its device state; the
        message that fails alone is refused. Returns what they did together, None if we stop
        first.

        One message that fails holds up its batch for about 2 log2(n) transactions, where
        one message at a time took n: every alarm of a burst's batch waited a transaction
        of its own, and a bulk batch of 10,000 its lane 10,000 of them."""
        total = BatchOutcome(state_apart=self.spec.state_apart)  # through the settler, in order

        def done(_part: list[RawMessage], out: BatchOutcome) -> None:
            self.pipeline.after_commit(out)
            total.add(out)

        def refuse(part: list[RawMessage], e: Exception) -> bool:
            [m] = part
            log.exception("event=message_refused lane=%s topic=%s", self.spec.name,
                          log_value(mask_cpr(m.topic)[0]))
            self.metrics.messages_refused.labels(self.spec.name).inc()
            refused = self._in_transaction(
                functools.partial(self.pipeline.refuse, message=m, error=e), stop)
            if refused is not None:
                done(part, refused[0])
            return refused is not None

        process = functools.partial(self.pipeline.process, skip=self.spec.skip)
        ok = self._halving(_halves(batch) or [batch], _halves, len,
                           lambda part: functools.partial(process, messages=part),
                           None, refuse, done, stop, "messages")
        return (total,) if ok else None

    def _halving(self, parts: list[P], halves: Callable[[P], list[P]],
                 size: Callable[[P], int], work: Callable[[P], Callable[[psycopg.Connection], T]],
                 timeout_s: float | None, refuse: Callable[[P, Exception], bool],
                 done: Callable[[P, T], None], stop: threading.Event, unit: str) -> bool:
        """What failed as a whole, again in `parts` (in order), each in a transaction of its
        own, and a part that fails in `halves` again, until the part that fails is alone
        (`size` 1); alone it is tried twice (once could be the moment, not the data), and
        then `refuse`d (called where its error is handled: the log has the traceback). The
        failing one is found in about 2 log2(n) transactions. False if we stop first."""
        todo = parts[::-1]      # the next part last
        while todo:
            part = todo.pop()
            alone = size(part) <= 1
            try:
                got = (self._twice(work(part), stop, timeout_s) if alone
                       else self._in_transaction(work(part), stop, timeout_s))
            except Exception as e:
                if alone:
                    if not refuse(part, e):
                        return False
                    continue
                log.warning("event=part_failed lane=%s %s=%d error=%s note=again_in_halves",
                            self.spec.name, unit, size(part), log_value(
                                mask_cpr(f"{type(e).__name__}: {first_line(e)}")[0]))
                todo += halves(part)[::-1]
                continue
            if got is None:
                return False
            done(part, got[0])
        return True

    def _twice(self, work: Callable[[psycopg.Connection], T],
               stop: threading.Event, timeout_s: float | None = None) -> tuple[T] | None:
        """`_in_transaction`, and once more if it fails: once could be the moment (an error
        on a connection going bad, say), not the data. What fails twice is raised."""
        try:
            return self._in_transaction(work, stop, timeout_s)
        except Exception:
            return self._in_transaction(work, stop, timeout_s)

    def _in_transaction(self, work: Callable[[psycopg.Connection], T],
                        stop: threading.Event,
                        timeout_s: float | None = None) -> tuple[T] | None:
        """`work` in a transaction of its own, committed, and retried while the database is
        away or does not answer within `timeout_s` (the lane's transaction_timeout_s); None
        if we stop first. Any other error rolls back and is raised."""
        limit = timeout_s if timeout_s is not None else self.spec.transaction_timeout_s
        delay = 0.2
        while True:
            try:
                with self.pool.connection() as conn:
                    with WATCHDOG.guard(conn, limit, self._unresponsive):
                        done = work(conn)
                        conn.commit()
                    return (done,)
            except psycopg.OperationalError as e:
                self.metrics.db_errors.labels(self.spec.name).inc()
                log.error("event=commit_failed lane=%s error=%r retry_in=%.1fs",
                          self.spec.name, first_line(e), delay)
                if stop.wait(delay):
                    return None
                delay = min(delay * 2, 5.0)

    def _unresponsive(self, waited_s: float) -> None:
        """The watchdog cut a connection of ours that answered nothing (see
        vagt.app.watchdog). The pool's other connections were most likely opened to the same
        server: they are replaced too, or each would be waited on in turn."""
        log.error("event=database_unresponsive lane=%s waited_s=%.1f "
                  "note=connection_cut_retrying_on_a_new_one", self.spec.name, waited_s)
        self.pool.drain()

    def _mark_draining(self, draining: bool) -> bool:
        """Whether the lane drains a backlog, for its own next wait and for the rules'
        timer (CatchingUp), set in one place so that the two never disagree."""
        self._draining = draining
        self.catching_up.mark(self.spec.name, draining)
        return draining

    def _finish(self, batch: list[RawMessage], outcome: BatchOutcome, committed: float,
                started: float) -> None:
        """After the commit: in-memory state, acknowledgement, metrics."""
        if self._mark_draining(self._behind or outcome.device_lag_s > CATCH_UP_LAG_S):
            self.metrics.backlog_messages.labels(self.spec.name).inc(len(batch))
        self.pipeline.after_commit(outcome)
        acked = self.session.ack(batch)
        self._in_hand.popleft()
        self._observe(batch, outcome, committed, time.monotonic() - started, acked)

    def _write_state(self, batch: list[RawMessage], outcome: BatchOutcome,
                     stop: threading.Event) -> bool:
        """The state left apart, retried like a batch; False if we stop first (then the
        batch is not acknowledged and comes again).

        A state that fails twice (a bug, or data the database refuses) goes again in halves
        by device, and a half that fails in halves again, until the device whose state
        fails is alone (`Pipeline.state_halves`). That device's state is left unwritten: its
        alarms and alerts are committed already, and a batch held back would hold every
        alarm behind it. Its messages are kept as dead letters, and the service centre
        hears of it (`Pipeline.refuse`); the other devices' state is written."""
        timeout = self.spec.state_timeout_s
        try:
            return self._twice(functools.partial(self.pipeline.write_state, out=outcome),
                               stop, timeout) is not None
        except Exception as e:
            parts = self.pipeline.state_halves(outcome)
            if not parts:   # one device, or none
                devices = [] if outcome.rows is None else outcome.rows.devices.tolist()
                if not self._refuse_state(_of_devices(batch, outcome, devices) or batch,
                                          outcome, e, stop):
                    return False
                outcome.state = StateUpdate()   # not in the table: not in memory either
                return True
            log.exception("event=state_failed lane=%s messages=%d note=again_in_halves",
                          self.spec.name, len(batch))
        refused: list[int] = []    # devices whose state is not written

        def refuse(part: BatchOutcome, e: Exception) -> bool:
            assert part.rows is not None
            device = int(part.rows.devices[0])
            refused.append(device)
            return self._refuse_state(_of_devices(batch, outcome, [device]), outcome, e, stop)

        if not self._halving(parts, self.pipeline.state_halves,
                             lambda part: 0 if part.rows is None else len(part.rows.devices),
                             lambda part: functools.partial(self.pipeline.write_state, out=part),
                             timeout, refuse, lambda part, _: outcome.add_written(part), stop,
                             "devices"):
            return False
        if refused:   # what is not in the table is not in memory either
            outcome.state = state_at(outcome.state, np.flatnonzero(
                ~np.isin(outcome.state.device, refused)))
        return True

    def _refuse_state(self, messages: list[RawMessage], outcome: BatchOutcome,
                      error: BaseException, stop: threading.Event) -> bool:
        """The messages whose device state failed, as dead letters with the service centre's
        alert (their alarms are delivered: `Pipeline.refuse`); False if we stop first. Called
        where `error` is handled, so that the log has its traceback."""
        log.exception("event=state_refused lane=%s messages=%d", self.spec.name, len(messages))
        self.metrics.messages_refused.labels(self.spec.name).inc(len(messages))
        refuse = functools.partial(self.pipeline.refuse, error=error, delivered=True)
        done = self._in_transaction(lambda conn: [refuse(conn, m) for m in messages], stop)
        if done is None:
            return False
        for each in done[0]:
            outcome.dead += each.dead
            outcome.dead_again += each.dead_again
            outcome.opened += each.opened
        return True

    def _observe(self, batch: list[RawMessage], outcome: BatchOutcome, committed: float,
                 seconds: float, acked: int) -> None:
        m, name = self.metrics, self.spec.name
        m.received.labels(name).inc(len(batch) - outcome.skipped)
        if outcome.skipped:
            m.skipped.labels(name).inc(outcome.skipped)
        m.decoded.labels(name).inc(outcome.decoded)
        m.acked.labels(name).inc(acked)
        m.readings.inc(outcome.readings)
        m.events.inc(outcome.events)
        m.batch_size.labels(name).observe(len(batch))
        m.commit_seconds.labels(name).observe(seconds)
        m.latency.observe_many(name, committed - np.fromiter(
            (msg.received_at for msg in batch), dtype=np.float64, count=len(batch)))
        for d in outcome.dead:
            m.dead_letters.labels(d.reason.value).inc()
            # masked: what a device sends may hold a CPR number, and the log is kept
            # beyond `vagt privacy scan`; quoted: a topic may hold spaces and '=' (Mosquitto
            # takes them), which would read as further fields
            log.warning("event=dead_letter reason=%s topic=%s detail=%s", d.reason.value,
                        log_value(mask_cpr(d.topic)[0]), log_value(mask_cpr(d.detail)[0]))
        for d in outcome.dead_again:
            m.dead_letters_again.labels(d.reason.value).inc()
            log.info("event=dead_letter_kept_before reason=%s topic=%s", d.reason.value,
                     log_value(mask_cpr(d.topic)[0]))
        for alert_id, queue in outcome.opened:
            m.alerts_opened.labels(queue).inc()
            log.info("event=alert_opened alert_id=%d queue=%s", alert_id, queue)
        if outcome.cleared:
            m.alerts_cleared.inc(outcome.cleared)
        for alert_id in outcome.taken_back:   # late rows in order do not fire it
            log.info("event=alert_taken_back alert_id=%d lane=%s", alert_id, name)
        for alert_id in outcome.noted:        # the same, but an operator holds it
            log.info("event=alert_taken_back_noted alert_id=%d lane=%s", alert_id, name)
        if outcome.replayed:
            m.rule_replays.labels(name).inc(outcome.replayed)
        if outcome.too_late:
            m.rule_too_late.labels(name).inc(outcome.too_late)
            log.info("event=late_rows_skipped lane=%s devices=%d", name, outcome.too_late)
        if outcome.before_deployment:
            m.rule_before_deployment.labels(name).inc(outcome.before_deployment)
            log.info("event=rows_before_deployment_skipped lane=%s devices=%d", name,
                     outcome.before_deployment)
        for (vendor, model, metric), n in outcome.bad_readings.items():
            m.bad_readings.labels(vendor, model, metric).inc(n)


class _Settler:
    """The alarm lane's second transactions (device and rule state, see
    `LaneSpec.state_apart`), in a thread of their own and in order, each followed by the
    acknowledgement: the lane takes the next alarm while a bulk batch holds the devices'
    rows the state waits for. PUBACKs stay in the order the messages came (MQTT requires it).
    """

    def __init__(self, lane: Lane, stop: threading.Event) -> None:
        self.lane = lane
        self.stop = stop
        self.failure: BaseException | None = None
        self._items: queues.Queue[tuple[list[RawMessage], BatchOutcome, float, float] | None] \
            = queues.Queue(maxsize=64)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"vagt-lane-{lane.spec.name}-state")
        self._thread.start()

    def put(self, item: tuple[list[RawMessage], BatchOutcome, float, float]) -> None:
        """Queue `item`, waiting while the queue is full (a bulk batch holds the devices'
        rows), and raise the thread's failure if it fails meanwhile: the lane would wait on
        a queue nobody empties, its process alive and its alarms unacknowledged, for good."""
        while True:
            self.check()
            try:
                self._items.put(item, timeout=0.5)
                return
            except queues.Full:
                continue

    def check(self) -> None:
        """Raise what failed in the thread (a bug), in the lane."""
        if self.failure is not None:
            raise self.failure

    def close(self) -> None:
        """Settle what is queued (an unsettled batch is not acknowledged and comes again)."""
        while self._thread.is_alive():
            try:
                self._items.put(None, timeout=0.5)  # a full queue whose thread died: give up
                break
            except queues.Full:
                continue
        self._thread.join()

    def _run(self) -> None:
        try:
            while (item := self._items.get()) is not None:
                batch, outcome, committed, started = item
                if self.lane._write_state(batch, outcome, self.stop):
                    self.lane._finish(batch, outcome, committed, started)
        except BaseException as e:  # a bug: the lane raises it
            self.failure = e
            self.stop.set()


# psycopg_pool tries a lost connection again after 1, 2, 4 ... 128 s, for 300 s, and the
# lanes only wait for the pool: a database back after 135 s of outage waited until the next
# try, and an alarm held through it was committed 97 s after. Tries give up after
# RECONNECT_WINDOW_S, and `_try_again` starts new ones at once (1, 2, 4, 3 s apart): a try
# every 4 s at most for as long as the database is away.
RECONNECT_WINDOW_S = 10.0


def _of_devices(batch: list[RawMessage], outcome: BatchOutcome,
                devices: list[int]) -> list[RawMessage]:
    """The messages of `batch` from `devices` (dense indexes): those whose state failed, not
    another's, nor one of an unknown device, a dead letter already."""
    return [m for m, d in zip(batch, outcome.msg_device.tolist()) if d in devices]


def _halves(part: list[RawMessage]) -> list[list[RawMessage]]:
    """`part` in two, in order (`Lane._halving`); a part of one message has none (halved
    into nothing and itself, a failure every batch sets off would be halved for ever)."""
    middle = len(part) // 2
    return [part[:middle], part[middle:]] if middle else []


def open_engine_pool(conninfo: str, config: Config,
                     size: tuple[int, int] | None = None) -> ConnectionPool:
    least, most = size if size is not None else \
        (config.database.pool_min, config.database.pool_max)
    pool = ConnectionPool(
        db.with_network_timeouts(conninfo), min_size=least, max_size=most,
        configure=store.prepare_connection, open=False, name="vagt-engine",
        reconnect_timeout=RECONNECT_WINDOW_S, reconnect_failed=_try_again,
    )
    pool.open(wait=True, timeout=30)
    return pool


# How long a stopping process's batches in hand may still wait for the database before
# they are given up (not acknowledged: the broker sends them again). A service manager
# kills what has not ended in its stop timeout (Kubernetes: 30 s): the lanes, the rules'
# timer and the alert threads each waited for the database as they would have running (a
# connection from the pool: 30 s; a transaction on a database gone silent: up to
# `transaction_timeout_s`), one after the other, the alarm lane's process last.
STOP_GRACE_S = 10.0


def give_up_database_when_stopped(pool: ConnectionPool, stop: threading.Event,
                                  grace_s: float = STOP_GRACE_S) -> None:
    """Once `stop` is set and `grace_s` has passed with `pool` still open, cut what waits
    for the database: the watchdog's connections (`Watchdog.cut_all`) and the pool's
    waits (closed: each fails, as a database away does, and the stopping work ends)."""
    def give_up() -> None:
        stop.wait()
        deadline = time.monotonic() + grace_s
        while not pool.closed and time.monotonic() < deadline:
            time.sleep(0.1)
        if pool.closed:
            return
        log.warning("event=stop_gave_up_on_the_database grace_s=%g "
                    "note=not_acknowledged_broker_will_resend", grace_s)
        WATCHDOG.cut_all()
        pool.close(timeout=0)

    threading.Thread(target=give_up, name="vagt-stop-grace", daemon=True).start()


def _try_again(pool: ConnectionPool) -> None:
    """The pool's `reconnect_failed`: the database is still away; grow the pool again now
    (`check` starts a new connection attempt when it is short of connections)."""
    if not pool.closed:
        pool.check()


def run_engine(config: Config, stop: threading.Event,
               clock: Callable[[], float] = time.time,
               metrics: EngineMetrics | None = None,
               on_ready: Callable[[], None] | None = None,
               reload: threading.Event | None = None) -> None:
    """Run until `stop` is set. Raises if a lane fails (a bug: the supervisor restarts us).

    Setting `reload` (SIGHUP) reads the rules again; a file that does not load is refused
    and the running rules stay.

    `on_ready` is called once the schema, fleet and rules are loaded, just before the MQTT
    sessions connect (benchmarks time the drain from there).

    With `config.ingest.alarm_process` (the default) the alarm lane runs in a process of its
    own (`vagt.app.alarm_process`), on the wall clock; `clock` is then this process's only.
    """
    conninfo = config.database.url
    if not conninfo:
        raise ValueError("run_engine needs config.database.url; `vagt run` starts an embedded "
                         "PostgreSQL when none is configured")
    log.info("event=engine_starting mqtt=%s", redact_url(config.mqtt.url))
    rules, catalogue, policy = load_engine_files(config)
    if not wait_for_database(conninfo, stop):
        log.info("event=engine_stopped note=stopped_before_the_database_answered")
        return
    db.migrate(conninfo)
    install_policy(policy)
    install_rule_book(rules)   # silences the API takes are judged by the rules that run
    # The delivery targets before the alarm lane's process starts: an alarm's events go to
    # the targets enabled when it is committed, and one added to the policy would miss the
    # alarms of the start (`alert_services` registers them again, to the same effect).
    with psycopg.connect(db.with_network_timeouts(conninfo)) as conn:
        outbox.register_targets(conn, policy.delivery)
    metrics = metrics or EngineMetrics()
    # The alarm lane's process first: it loads the fleet while this one does, and it is
    # the lane that must not be late after a restart.
    alarm = _start_alarm_process(AlarmLaneStart(config, policy, rules, catalogue), metrics,
                                 stop) if config.ingest.alarm_process else None
    try:
        _serve(config, stop, clock, metrics, rules, catalogue, policy, alarm, on_ready,
               reload or threading.Event())
    finally:
        if alarm is not None:
            alarm.stop()
    log.info("event=engine_stopped")


# How long the engine waits between attempts to reach a database that is not there at start.
DATABASE_RETRY_S = 5.0


def wait_for_database(conninfo: str, stop: threading.Event,
                      retry_s: float = DATABASE_RETRY_S) -> bool:
    """Until the database answers (True) or `stop` is set (False), trying every `retry_s`.

    An engine started before its database (both booting after a power cut, or a database
    being restarted) must come up by itself when the database does, not exit and wait for
    someone to start it again.

    A database or role that does not exist is waited for as well: a refused connection
    has no SQLSTATE in psycopg 3 (libpq keeps only the server's message, in its language),
    and matching that text is not reliable, so only the log line says which.
    """
    while not stop.is_set():
        try:
            with psycopg.connect(db.with_network_timeouts(conninfo)):
                return True
        except psycopg.OperationalError as e:
            log.warning("event=database_unreachable url=%s error=%r retry_in_s=%g",
                        redact_url(conninfo), first_line(e), retry_s)
        stop.wait(retry_s)
    return False


def load_engine_files(config: Config) -> tuple[list[Rule], Catalogue, AlertPolicy]:
    """The rules, the catalogue and the alert policy: before the schema is touched, a file
    that does not load stops the start (RuleConfigError, CatalogueError, PolicyError: `vagt
    run` exits 2) with nothing changed in the database. Read once: the alarm lane's process
    is sent them (`AlarmLaneStart`)."""
    rules = load_rules(config.rules or None)
    catalogue = load_catalogue(config.catalogue or None)
    # the webhook secrets named by the policy's `secret_env` come from the environment
    policy = load_policy(config.alerts or None, os.environ)
    return rules, catalogue, policy


def _serve(config: Config, stop: threading.Event, clock: Callable[[], float],
           metrics: EngineMetrics, rules: list[Rule], catalogue: Catalogue,
           policy: AlertPolicy,
           alarm: AlarmLaneProcess | None, on_ready: Callable[[], None] | None,
           reload: threading.Event) -> None:
    # here, not at the top: the alarm lane's process imports this module and serves no API
    from vagt.alerts.service import ApiSettings, alert_services

    with open_engine_pool(config.database.url, config) as pool:
        give_up_database_when_stopped(pool, stop)
        fleet, pipeline = _load_pipeline(config, pool, rules, catalogue, clock)
        with _guarded(pool, timeout=pool.timeout, limit_s=config.database.transaction_timeout_s,
                      who="thread=rule-state-restore") as conn:
            restored = pipeline.restore(conn)
            upkeep = not statistics.autovacuum_on(conn)
        log.info("event=rule_state_restored devices=%d", restored)
        heap.settle()
        queues = [*queues_of(policy.root), SERVICE_CENTRE_QUEUE,    # the engine's own alerts
                  *([policy.escalation_queue] if policy.escalation_queue else [])]
        # and each rule's own, where no route sets one: the rules running now (SIGHUP)
        metrics.watch_open_alerts(lambda: _open_alerts_by_queue(
            pool, [*queues, *(r.queue for r in pipeline.rules.rules)]))
        metrics.watch_queue(lambda: _queue_alerts(pool))
        metrics.watch_deliveries(lambda: _waiting_deliveries(pool))
        metrics.watch_fleet(lambda: fleet.counts(clock()))
        server = metrics.serve(config.metrics_host, config.metrics_port) \
            if config.metrics_port else None
        log.info("event=engine_ready devices=%d rules=%d", len(fleet), len(rules))
        if on_ready is not None:
            on_ready()
        start_kept_running("fleet-refresh", lambda s: _refresh_fleet(lambda: fleet, pool, s), stop,
                           metrics.thread_crashed)
        specs = [spec for spec in lane_specs(config) if alarm is None or spec.name != "alarm"]
        catching_up = CatchingUp(spec.name for spec in specs)
        if alarm is not None:
            catching_up.follow(alarm.catching_up)
        timer = RuleTimer(config, pool, pipeline, metrics, clock, reload, catching_up,
                          on_reload=_reload_in(alarm) if alarm is not None else None)
        timer_thread = start_kept_running("rules-timer", timer.run, stop,
                                          metrics.thread_crashed)
        start_kept_running("prune", retention.Pruner(config.database.url, clock).run, stop,
                           metrics.thread_crashed)
        if upkeep:
            log.warning("event=database_autovacuum_off "
                        "note=the_engine_analyzes_and_vacuums_its_own_tables")
            start_kept_running("table-upkeep",
                               statistics.StatisticsKeeper(config.database.url).run, stop,
                               metrics.thread_crashed)
        try:
            with alert_services(pool, policy, clock=clock, observer=metrics,
                                mqtt_defaults=_mqtt_defaults(config),
                                client_id=config.mqtt.client_id,
                                api=ApiSettings(config.api_host, config.api_port)
                                if config.api_port else None,
                                on_crash=metrics.thread_crashed,
                                transaction_limit_s=config.database.alarm_transaction_timeout_s,
                                timer_limit_s=config.database.transaction_timeout_s):
                _run_lanes(config, pool, pipeline, metrics, stop, catching_up, specs)
        finally:
            timer_thread.join(timeout=10)
            if server is not None:
                server.shutdown()


def _load_pipeline(config: Config, pool: ConnectionPool, rules: list[Rule],
                   catalogue: Catalogue, clock: Callable[[], float],
                   whole_fleet: bool = True) -> tuple[Fleet, Pipeline]:
    """The fleet and the pipeline (see `Pipeline.load`), on a connection cut if the database
    does not answer within `database.transaction_timeout_s` (`_guarded`), as a lane's would
    be: the alarm lane's process loads again between alarms (`AlarmPipeline.renewed`), and a
    load that waited for ever on a database gone silent held every alarm behind it."""
    with _guarded(pool, timeout=pool.timeout, limit_s=config.database.transaction_timeout_s,
                  who="thread=pipeline-load") as conn:
        pipeline = Pipeline.load(conn, topic_root=config.mqtt.topic_root, rules=rules,
                                 clock=clock, ingest=config.ingest,
                                 catalogue=catalogue,
                                 whole_fleet=whole_fleet)
    return pipeline.fleet, pipeline


@dataclass(frozen=True)
class AlarmLaneStart:
    """What the alarm lane's process starts with, at each of its starts: the configuration,
    and the policy, rules and catalogue this process runs, not the files again (edited
    since, they would route or judge differently; broken, the lane would not start again,
    though a reload refused them). A reload the engine takes replaces the rules."""

    config: Config
    policy: AlertPolicy
    rules: list[Rule]
    catalogue: Catalogue


def _start_alarm_process(start: AlarmLaneStart, metrics: EngineMetrics,
                         stop: threading.Event) -> AlarmLaneProcess:
    # The policy without its delivery: the child delivers nothing, and no secret need cross
    # the pipe.
    alarm = AlarmLaneProcess("vagt.app.engine:run_alarm_lane", dataclasses.replace(
        start, policy=dataclasses.replace(start.policy, delivery=DeliveryPolicy())))
    alarm.start()
    metrics.include(alarm.families, lambda: alarm.incarnation)
    _supervise(alarm, metrics, stop)
    # told as the engine's lanes are, not after them: each has its grace for the batch in
    # hand (STOP_GRACE_S), and one after the other they passed a service manager's timeout
    def ask_when_stopped() -> None:
        stop.wait()
        alarm.ask_to_stop()

    threading.Thread(target=ask_when_stopped, daemon=True,
                     name="vagt-alarm_lane-stopper").start()
    return alarm


def _reload_in(alarm: AlarmLaneProcess) -> Callable[[list[Rule]], None]:
    """What the engine does with the rules it reloaded: the alarm lane's process runs them
    too, and starts with them if it starts again."""
    def reload(rules: list[Rule]) -> None:
        alarm.reload(rules, dataclasses.replace(alarm.first, rules=rules))
    return reload


def _supervise(child: ChildProcess, metrics: EngineMetrics, stop: threading.Event) -> None:
    """Start the child again when it dies, until `stop`; its `vagt_child_process_up` and
    restarts counted."""
    metrics.child_up.labels(child.name).set_function(lambda: 1 if child.alive else 0)
    restarts = metrics.child_restarts.labels(child.name)
    threading.Thread(target=child.supervise, args=(stop, restarts.inc),
                     name=f"vagt-{child.name}-supervisor", daemon=True).start()


# The alarm lane's process holds few connections: its lane, its second transactions, the
# fleet refresh.
ALARM_POOL_SIZE = (1, 3)


def run_alarm_lane(argv: list[str]) -> None:
    """The alarm lane's process (see vagt.app.alarm_process): until the engine says stop or
    is gone. Its rules' state is read from the table as each alarm comes (`sync`).

    Its fleet holds the devices that sent alarms (and those with an open rule alert), not
    the whole registry: 44 MB less at 100,000 devices, of which a few thousand alarm. It is
    loaded again after `ingest.alarm_lane_renew_after` devices more (`AlarmPipeline`)."""
    control, log_level, start = child_pipe(argv)
    config, policy = start.config, start.policy
    logging.basicConfig(level=log_level, format=LOG_FORMAT, stream=sys.stderr)
    # The centre's policy routes, inhibits and reopens the alarms' alerts here as in the
    # engine's process; without it they would follow the built-in one.
    install_policy(policy)
    stop = threading.Event()
    child_signals(stop)
    metrics = EngineMetrics()
    spec = next(s for s in lane_specs(config) if s.name == "alarm")
    catching_up = CatchingUp([spec.name])
    with open_engine_pool(config.database.url, config, size=ALARM_POOL_SIZE) as pool:
        give_up_database_when_stopped(pool, stop)
        alarm = AlarmPipeline(
            lambda rules: _load_pipeline(config, pool, rules, start.catalogue, time.time,
                                         whole_fleet=False)[1],
            start.rules, config.ingest.alarm_lane_renew_after)
        threading.Thread(target=serve_control, name="vagt-alarm-lane-control", daemon=True,
                         args=(control, metrics.registry, lambda: bool(catching_up),
                               lambda rules: alarm.using(functools.partial(
                                   _apply_or_start_again, pool, rules=rules, stop=stop,
                                   limit_s=config.database.transaction_timeout_s)),
                               stop)).start()
        start_kept_running("fleet-refresh",
                           lambda s: _refresh_fleet(lambda: alarm.pipeline.fleet, pool, s, True),
                           stop, metrics.thread_crashed)
        heap.settle()
        _run_lanes(config, pool, alarm.pipeline, metrics, stop, catching_up, [spec],
                   renew=alarm.renewed)


def _run_lanes(config: Config, pool: ConnectionPool, pipeline: Pipeline,
               metrics: EngineMetrics, stop: threading.Event,
               catching_up: CatchingUp, specs: list[LaneSpec],
               renew: Callable[[Callable[[Pipeline], object]], object] | None = None
               ) -> None:
    failures: list[BaseException] = []
    lane_stop = threading.Event()

    def supervise(lane: Lane) -> None:
        try:
            lane.run(lane_stop)
        except BaseException as e:  # a bug: stop everything, loudly
            log.exception("event=lane_crashed lane=%s", lane.spec.name)
            failures.append(e)
            lane_stop.set()

    sessions = [_open_session(config, spec, metrics, lane_stop) for spec in specs]
    threads = []
    for spec, session in zip(specs, sessions):
        lane = Lane(spec, session, pool, pipeline, metrics, catching_up, renew)
        t = threading.Thread(target=supervise, args=(lane,), name=f"vagt-lane-{spec.name}")
        t.start()
        threads.append(t)
    # the lanes hold it; held here too, the alarm lane's first would outlive its renewal
    del pipeline
    try:
        while not stop.wait(0.2) and not lane_stop.is_set():
            pass
    finally:
        lane_stop.set()
        for t in threads:
            t.join()
        for session in sessions:
            session.close()
    if failures:
        raise RuntimeError("an engine lane failed; see the log") from failures[0]


def _open_session(config: Config, spec: LaneSpec, metrics: EngineMetrics,
                  stop: threading.Event) -> Session:
    """The lane's MQTT session, connecting; the bulk lane's in a process of its own with
    `ingest.bulk_receiver_process` (see `vagt.app.receiver`)."""
    settings = session_settings(config, spec)
    session: ReceiverProcess | MqttSession
    if spec.name == "bulk" and config.ingest.bulk_receiver_process:
        session = ReceiverProcess(
            ReceiverSettings(settings, spec.batch_max, spec.batch_wait_s, spec.nice),
            on_acked=metrics.acked.labels(spec.name).inc)
        session.start()
        _supervise(session, metrics, stop)
    else:
        session = MqttSession(settings).__enter__()
    if spec.stop_reading_at_receive_maximum:
        metrics.watch_reading(spec.name, lambda: session.reading_paused,
                              lambda: session.reading_paused_s)
    metrics.subscriptions_refused.labels(spec.name).set_function(
        lambda: len(session.refused_filters))
    return session


MAX_TICK_DEFERRAL_S = 600.0


class RuleTimer:
    """The rules' clock: every `rules_tick_s`, deadlines that passed without a message (each
    process, for its own devices) and, in the one process holding the advisory lock, the
    fleet-wide absence sweep; each tick in a transaction of its own. Also reloads the rules
    when asked (SIGHUP), between ticks, while the lanes go on."""

    def __init__(self, config: Config, pool: ConnectionPool, pipeline: Pipeline,
                 metrics: EngineMetrics, clock: Callable[[], float],
                 reload: threading.Event, catching_up: CatchingUp | None = None,
                 on_reload: Callable[[list[Rule]], None] | None = None) -> None:
        self.config = config
        self.on_reload = on_reload
        self.catching_up = catching_up if catching_up is not None else CatchingUp()
        self._deferred_since: float | None = None
        self.pool = pool
        self.pipeline = pipeline
        self.metrics = metrics
        self.clock = clock
        self.reload = reload
        self._lock_conn: psycopg.Connection | None = None
        self._holding = False
        # its age counts from the timer's start until the first tick: 0 (1970) made an alert
        # on it fire at every start, for as long as the ticks waited for a backlog
        metrics.rule_tick_done_at.set_to_current_time()

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                if self.reload.is_set():
                    self.reload.clear()
                    self.reload_rules()
                if not self._defer():
                    self.tick()
                heap.trim()   # what the tick and the lanes' batches left free (see heap)
                deadline = time.monotonic() + self.config.rules_tick_s
                while not stop.is_set() and not self.reload.is_set() \
                        and time.monotonic() < deadline:
                    stop.wait(0.1)
        finally:
            if self._lock_conn is not None:
                self._lock_conn.close()

    def reload_rules(self) -> None:
        rules = reload_rules(self.config, self.pool, self.pipeline)
        if rules is not None and self.on_reload is not None:
            self.on_reload(rules)

    def _defer(self) -> bool:
        """Hold the deadlines while a lane catches up, for at most MAX_TICK_DEFERRAL_S: an
        engine that never catches up must still see silent devices and missed doses."""
        now = time.monotonic()
        if not self.catching_up:
            if self._deferred_since is not None:
                log.info("event=rules_tick_resumed deferred_s=%.0f", now - self._deferred_since)
            self._deferred_since = None
            return False
        if self._deferred_since is None:
            self._deferred_since = now
            log.info("event=rules_tick_deferred reason=catching_up_with_a_backlog")
        if now - self._deferred_since > MAX_TICK_DEFERRAL_S:
            log.warning("event=rules_tick_forced deferred_s=%.0f note=still_behind",
                        now - self._deferred_since)
            self._deferred_since = now
            return False
        self.metrics.rule_ticks_deferred.inc()
        return True

    def tick(self) -> None:
        limit = self.config.database.transaction_timeout_s
        try:
            sweeper = self._hold_sweep_lock()
            with self.pool.connection(timeout=10) as conn:
                with WATCHDOG.guard(conn, limit, self._unresponsive):
                    out = self.pipeline.tick(conn, self.clock(), sweep=sweeper)
                    conn.commit()
        except (psycopg.Error, TimeoutError) as e:  # the next tick tries again
            self.metrics.rule_ticks.labels("failed").inc()
            log.warning("event=rules_tick_failed error=%s", first_line(e))
            return
        self.metrics.rule_ticks.labels("done").inc()
        self.metrics.rule_tick_done_at.set_to_current_time()
        self.pipeline.after_commit(out)
        for alert_id, queue in out.opened:
            self.metrics.alerts_opened.labels(queue).inc()
            log.info("event=alert_opened alert_id=%d queue=%s by=timer", alert_id, queue)
        if out.cleared:
            self.metrics.alerts_cleared.inc(out.cleared)

    def _unresponsive(self, waited_s: float) -> None:
        log.error("event=database_unresponsive thread=rules-timer waited_s=%.1f "
                  "note=connection_cut_retrying_next_tick", waited_s)
        self.pool.drain()

    def _hold_sweep_lock(self) -> bool:
        """True while this process holds the sweep lock, on a connection of its own that it
        keeps: the lock is held while that session lives and handed on when it ends."""
        limit = self.config.database.transaction_timeout_s
        c = self._lock_conn
        if c is not None and not c.closed:
            try:
                with WATCHDOG.guard(c, limit, self._unresponsive):
                    if self._holding:
                        c.execute("SELECT 1")
                        return True
                    self._holding = rule_queries.try_sweep_lock(c)
            except psycopg.Error:
                c.close()
                self._lock_conn, self._holding = None, False
                raise
        else:
            self._lock_conn = psycopg.connect(
                db.with_network_timeouts(self.config.database.url), autocommit=True)
            with WATCHDOG.guard(self._lock_conn, limit, self._unresponsive):
                self._holding = rule_queries.try_sweep_lock(self._lock_conn)
        if self._holding:
            log.info("event=absence_sweep_lock_taken")
        return self._holding


def reload_rules(config: Config, pool: ConnectionPool, pipeline: Pipeline
                 ) -> list[Rule] | None:
    """The rules files again, in place of the running rules; a file that does not load is
    refused and the running rules stay. Returns the rules now running if they changed."""
    from vagt.rules import RuleConfigError

    limit_s = config.database.transaction_timeout_s
    try:
        rules = load_rules(config.rules or None)
    except RuleConfigError as e:
        log.error("event=rules_reload_refused note=old_rules_stay error=%s", e)
        _audit_reload(pool, limit_s, "rules.reload_refused", {"error": first_line(e)})
        return None
    changed = apply_rules(pool, pipeline, rules, limit_s)
    if changed is None:
        return None
    install_rule_book(rules)
    _audit_reload(pool, limit_s, "rules.reload", {"rules": len(rules), "changed": changed})
    return rules


def _audit_reload(pool: ConnectionPool, limit_s: float, action: str,
                  details: dict[str, object]) -> None:
    """A reload of the rules in `audit_log`: the rules decide which alarms reach the queue.
    A signal carries no name, so the row says the signal, and the host and login of the
    engine it reached (who could send it); the reload stands if the row cannot be written
    (logged: the database away)."""
    details = {**details, "host": socket.gethostname(), "login": getpass.getuser(),
               "pid": os.getpid()}
    try:
        with _guarded(pool, timeout=10, limit_s=limit_s, who="thread=rules-reload") as conn:
            conn.execute("INSERT INTO audit_log (actor, action, subject, details) "
                         "VALUES ('signal:SIGHUP', %s, 'rules', %s)",
                         (action, Jsonb(details)))
    except (psycopg.Error, TimeoutError) as e:
        log.error("event=rules_reload_not_audited error=%s", first_line(e))


def _apply_or_start_again(pool: ConnectionPool, pipeline: Pipeline, rules: list[Rule],
                          stop: threading.Event, limit_s: float) -> None:
    """The alarm lane's process: the rules the engine reloaded, or, if the database does
    not let it, an end after the alarm in hand: the engine starts it again, with them."""
    if apply_rules(pool, pipeline, rules, limit_s) is None:
        log.error("event=alarm_lane_reload_failed note=starting_again_with_the_engines_rules")
        stop.set()


def apply_rules(pool: ConnectionPool, pipeline: Pipeline, rules: list[Rule],
                limit_s: float) -> list[str] | None:
    """`rules` in place of the running rules (the alarm lane's process: those the engine
    loaded); returns the names of the rules changed, or None if the database did not let
    it, and the running rules stay.

    The open alerts that seed them are read on a connection cut after `limit_s`
    (`_guarded`): a reload that waited for ever on a database gone silent held the rules'
    timer with it (or the alarm lane's control: its metrics, its stop). The rules change
    once they are read, not before: a reload said to have failed has changed nothing."""
    try:
        with _guarded(pool, timeout=10, limit_s=limit_s, who="thread=rules-reload") as conn:
            open_alerts = rule_queries.open_rule_alerts(conn)
    except (psycopg.Error, TimeoutError) as e:
        log.error("event=rules_reload_failed note=old_rules_stay error=%s", first_line(e))
        return None
    changed = pipeline.reload_rules(rules, open_alerts)
    log.info("event=rules_reloaded rules=%d changed=%s", len(rules), ",".join(changed) or "-")
    return changed


FLEET_REFRESH_S = 30.0


def _refresh_fleet(fleet: Callable[[], Fleet], pool: ConnectionPool, stop: threading.Event,
                   known_only: bool = False) -> None:
    """Now and then, take in what other engines and the registry commands changed into the
    fleet running then (with `known_only`, for the devices it holds: see `Fleet.refresh`)."""
    while not stop.wait(FLEET_REFRESH_S):
        try:
            with _guarded(pool, timeout=10, limit_s=4 * FLEET_REFRESH_S,
                          who="thread=fleet-refresh") as conn:
                fleet().refresh(conn, known_only)
        except (psycopg.Error, OSError, TimeoutError) as e:  # try again next time
            log.warning("event=fleet_refresh_failed error=%s", type(e).__name__)


# A scrape reads three queries; Prometheus gives up on a scrape after 10 s by default.
SCRAPE_QUERY_LIMIT_S = 2.0


@contextlib.contextmanager
def _guarded(pool: ConnectionPool, timeout: float, limit_s: float = SCRAPE_QUERY_LIMIT_S,
             who: str = "thread=metrics") -> Iterator[psycopg.Connection]:
    """A connection from `pool` (waiting `timeout` for it) cut if the block and its commit
    take longer than `limit_s` (`guarded_connection`): a database gone silent fails the
    block rather than holding it for ever."""
    with guarded_connection(pool, limit_s, who, timeout) as conn:
        yield conn
        conn.commit()


def _open_alerts_by_queue(pool: ConnectionPool, queues: Sequence[str]
                          ) -> list[tuple[str, int]]:
    """Per queue, its alerts not resolved: every one of `queues` (the policy's and the
    rules'), 0 for none (a series that vanished at 0 showed a gap, not a queue emptied),
    and any other that has some."""
    with _guarded(pool, timeout=2) as conn:
        rows = conn.execute(
            "SELECT queue, count(*) FROM alerts "
            "WHERE status IN ('open', 'claimed', 'acknowledged') GROUP BY queue").fetchall()
    return list(({q: 0 for q in queues} | {str(q): int(n) for q, n in rows}).items())


def _queue_alerts(pool: ConnectionPool) -> list[tuple[str, int, str, int]]:
    with _guarded(pool, timeout=2) as conn:
        rows = conn.execute(
            "SELECT queue, priority, status, count(*) FROM alerts "
            "WHERE status <> 'resolved' GROUP BY 1, 2, 3").fetchall()
    return [(str(q), int(p), str(s), int(n)) for q, p, s, n in rows]


def _waiting_deliveries(pool: ConnectionPool) -> list[tuple[str, bool, int, float | None]]:
    with _guarded(pool, timeout=2) as conn:
        return outbox.waiting_by_target(conn)


def _mqtt_defaults(config: Config) -> dict[str, object]:
    m = config.mqtt
    return {"host": m.host, "port": m.port, "username": m.username, "password": m.password,
            "tls": m.tls}
