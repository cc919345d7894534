"""The bulk lane's MQTT session in a process of its own.

paho's packet handling was more than half of the engine's samples while a backlog drained,
and it shared the GIL with the batch's decoding, rules and SQL: the engine drained at 0.4-0.5
of a bare consumer. Here the session (`MqttSession`: paho, manual acknowledgement) runs in a
child process that only receives, batches, and acknowledges when told; the engine's bulk
lane takes the batches from the pipe and sends back the number of each batch it committed.

Nothing changes in what is acknowledged when: the child acknowledges a batch only when the
engine says it is committed, in the order the batches came (PUBACKs in order, as MQTT
requires), and only on the connection it came on (`MqttSession.ack`). What a dead child
held, or a dead engine had not committed, the broker sends again.

The child imports paho and vagt's light ingest modules, not numpy or the pipeline (20 MB,
not 150).

The pipe's messages:
- engine to child: the `ReceiverSettings` first, then (ACK, first batch, last batch) and
  (STOP, 0, 0);
- child to engine: (BATCH, number, the session's connection, the first connection of the
  broker's session it is part of, topics, payloads, arrival times, {index: size} of the
  oversized, cut to their first bytes, [index] of those that came retained, [index] of
  those that came at QoS 0), (ACKED, how many) after each acknowledgement, (CONNECTED,
  up or not) when that changes, and (READING, paused or not, seconds paused in all) when
  the session stops or starts reading at its Receive Maximum, and each second it has been
  paused (`MqttSession.reading_paused`), and (REFUSED, filters) when the filters the broker
  refused change (`MqttSession.refused_filters`).
"""

from __future__ import annotations

import collections
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from vagt.app import heap
from vagt.app.child import ChildProcess, child_pipe, child_signals, yield_cpu
from vagt.app.config import LOG_FORMAT
from vagt.ingest.consumer import MqttSession, SessionSettings, at_most_once, connection_of
from vagt.ingest.model import RawMessage

log = logging.getLogger("vagt.engine")

BATCH, ACKED, CONNECTED, READING, REFUSED = ("batch", "acked", "connected", "reading",
                                             "refused")                 # child to engine
ACK, STOP = "ack", "stop"                                   # engine to child


@dataclass(frozen=True)
class ReceiverSettings:
    session: SessionSettings
    batch_max: int
    batch_wait_s: float
    nice: int = 0        # the process's niceness (see LaneSpec.nice)


@dataclass(frozen=True, slots=True)
class _BatchToken:
    """Every message of a batch carries it: which child sent the batch, its number, and the
    child's session's connection it came on; one of its own for the messages that came at QoS
    0 (the broker sends those once)."""

    incarnation: int
    number: int
    connection: int
    at_most_once: bool = False


class ReceiverProcess(ChildProcess):
    """The bulk lane's session as the lane sees it (`take`, `ack`, `connected`, `close`),
    with the MQTT session in a child process.

    Batches are made in the child, with the settings' size and wait; `take` hands them out
    whole. The child reports what it acknowledged through `on_acked` (how many), not `ack`'s
    return: it acknowledges after `ack` returns.

    A thread reads the pipe, so the child never waits to send: what it holds is bounded by
    the session's Receive Maximum (the child stops reading at it,
    `stop_reading_at_receive_maximum`), and so is what waits here.
    """

    def __init__(self, settings: ReceiverSettings,
                 on_acked: Callable[[int], None] = lambda n: None) -> None:
        super().__init__("bulk_receiver", "vagt.app.receiver:run_receiver", settings,
                         stop_message=(STOP, 0, 0))
        self._on_acked = on_acked
        self._cond = threading.Condition()
        self._batches: collections.deque[list[RawMessage]] = collections.deque()
        self._connection = 0     # the child's session's connection the batches came on
        self._connected = False
        self._behind = False
        self._child_wait_s = settings.batch_wait_s
        self._reading_paused = False
        self._paused_s = 0.0          # the child now running's, as it last said
        self._paused_s_before = 0.0   # the children before it, in all
        self._refused: tuple[str, ...] = ()

    def __enter__(self) -> ReceiverProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the child: it acknowledges what it was told to, then disconnects."""
        self.stop()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def waiting(self) -> int:
        """Messages received and not taken yet."""
        with self._cond:
            return sum(map(len, self._batches))

    @property
    def behind(self) -> bool:
        """The last `take` left batches waiting here."""
        return self._behind

    @property
    def reading_paused(self) -> bool:
        """The child's session does not read from the broker: it holds its Receive Maximum
        of messages the engine has not committed (as the child last said)."""
        return self._reading_paused

    @property
    def refused_filters(self) -> tuple[str, ...]:
        """The filters the broker refused the child's session (as the child last said)."""
        return self._refused

    @property
    def reading_paused_s(self) -> float:
        """Seconds the children's sessions did not read at their Receive Maximum, in all."""
        with self._cond:
            return self._paused_s_before + self._paused_s

    def _started(self, control: Connection) -> None:
        """What the child before said of its session is not the new one's: a new child
        tells only what changes from nothing (refused none, reading), so a refusal kept here
        would be served for good once a subscribe is granted."""
        with self._cond:
            self._batches.clear()   # a dead child's: the broker sends them again
            self._connection = 0
            self._connected = False
            self._reading_paused = False
            self._refused = ()
            self._paused_s_before += self._paused_s
            self._paused_s = 0.0
            incarnation = self.incarnation
        threading.Thread(target=self._read, args=(control, incarnation), daemon=True,
                         name=f"vagt-bulk-receiver-{incarnation}").start()

    def take(self, max_n: int, max_wait_s: float, stop: threading.Event) -> list[RawMessage]:
        """The batches the child made since the last take, whole and in order, up to `max_n`
        messages (at least one batch); [] if none came within a second or when stopping.

        The child sends a batch as soon as it has one (within the settings' wait): while the
        engine commits, several small ones queue here, and are committed as one (batch
        overhead was most of the cost, at ~1,000 messages a batch). `max_wait_s` is how long
        the messages may wait to fill a batch of `max_n` in all: the child's batches waited
        the settings' part of it, the rest is waited here, from the first batch's coming.
        """
        with self._cond:
            if not self._batches:
                self._cond.wait(timeout=1.0)
            if not self._batches or stop.is_set():
                return []
            if (more := max_wait_s - self._child_wait_s) > 0:
                deadline = time.monotonic() + more
                while (sum(map(len, self._batches)) < max_n and not stop.is_set()
                       and (left := deadline - time.monotonic()) > 0):
                    self._cond.wait(timeout=left)
            batch = self._batches.popleft()
            while self._batches and len(batch) + len(self._batches[0]) <= max_n:
                batch += self._batches.popleft()
            self._behind = bool(self._batches)
            return batch

    def ack(self, messages: list[RawMessage]) -> int:
        """Tell the child the messages (what one `take` returned) are committed. Returns 0:
        what the child acknowledges is counted through `on_acked`. Messages from a child
        that has died since are not acknowledged: the broker sends them again."""
        if not messages:
            return 0
        first, last = messages[0].token, messages[-1].token
        assert isinstance(first, _BatchToken) and isinstance(last, _BatchToken)
        # the child's batches first to last, whole (see take); only to the child that sent
        # them: the next one numbers its batches from 1 again
        self._send((ACK, first.number, last.number), incarnation=first.incarnation)
        return 0

    def _read(self, control: Connection, incarnation: int) -> None:
        while True:
            try:
                message = control.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == BATCH:
                _, number, connection, began, topics, payloads, arrived, cut, kept, qos0 \
                    = message
                token = _BatchToken(incarnation, number, connection)
                batch = [RawMessage(t, p, a, token) for t, p, a in zip(topics, payloads, arrived)]
                for i, size in cut.items():   # oversized: only their first bytes came
                    batch[i] = RawMessage(topics[i], payloads[i], arrived[i], token, size)
                for i in kept:                # the broker's retained copies: dead letters
                    batch[i] = RawMessage(topics[i], payloads[i], arrived[i], token,
                                          batch[i].size, retained=True)
                if qos0:
                    once = _BatchToken(incarnation, number, connection, at_most_once=True)
                    for i in qos0:
                        m = batch[i]
                        batch[i] = RawMessage(m.topic, m.payload, m.received_at, once, m.size,
                                              m.retained)
                with self._cond:
                    if incarnation != self.incarnation:
                        break
                    if connection != self._connection:
                        # The child connected again. What waits here from earlier
                        # connections of the same broker session is being sent again and
                        # cannot be acknowledged: kept, each reconnect while the engine is
                        # stalled (its database away) would add a Receive Maximum of copies.
                        # What came at QoS 0 the broker sent once: kept. What is from before
                        # it (a session the broker lost) comes never again: kept and stored
                        # (its acknowledgements are no-ops).
                        self._batches = collections.deque(
                            kept for b in self._batches
                            if (kept := b if _connection(b) < began else _sent_once(b)))
                        self._connection = connection
                    self._batches.append(batch)
                    self._cond.notify()
            elif kind == ACKED:
                self._on_acked(message[1])
            elif kind == CONNECTED:
                with self._cond:
                    if incarnation == self.incarnation:
                        self._connected = bool(message[1])
            elif kind == READING:
                with self._cond:
                    if incarnation == self.incarnation:
                        self._reading_paused, self._paused_s = bool(message[1]), message[2]
            elif kind == REFUSED:
                with self._cond:
                    if incarnation == self.incarnation:
                        self._refused = tuple(message[1])
        with self._cond:
            if incarnation == self.incarnation:
                self._connected = False


def _connection(batch: list[RawMessage]) -> int:
    """The child's session's connection a batch (as `_read` made it) came on."""
    token = batch[0].token
    assert isinstance(token, _BatchToken)
    return token.connection


def _sent_once(batch: list[RawMessage]) -> list[RawMessage]:
    """What of a batch came at QoS 0 (see `_BatchToken`)."""
    return [m for m in batch
            if isinstance(m.token, _BatchToken) and m.token.at_most_once]


def run_receiver(argv: list[str]) -> None:
    """The child (see the module's text): until the engine says stop or is gone."""
    control, log_level, settings = child_pipe(argv)
    logging.basicConfig(level=log_level, format=LOG_FORMAT, stream=sys.stderr)
    stop = threading.Event()
    child_signals(stop)
    yield_cpu(settings.nice)          # before the session's thread starts: it inherits it
    held: dict[int, list[object]] = {}     # per batch sent, its messages' tokens
    sending = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        try:
            with sending:
                control.send(message)
        except OSError:         # the engine is gone: what we hold comes again
            stop.set()

    heap.settle()
    with MqttSession(settings.session) as session:
        threading.Thread(target=_acknowledge, args=(control, session, held, send, stop),
                         name="vagt-bulk-receiver-acks", daemon=True).start()
        numbers = itertools.count(1)
        connected: bool | None = None
        paused, paused_s = False, 0.0     # as last told
        refused: tuple[str, ...] = ()
        while not stop.is_set():
            if session.connected != connected:
                connected = session.connected
                send((CONNECTED, connected))
            # each batch's take, or each second while none comes (a pause's seconds too)
            if session.reading_paused != paused or session.reading_paused_s - paused_s >= 1.0:
                paused, paused_s = session.reading_paused, session.reading_paused_s
                send((READING, paused, paused_s))
            if session.refused_filters != refused:
                refused = session.refused_filters
                send((REFUSED, refused))
            # A batch is one connection's: the engine keeps or drops it by its connection,
            # and the acknowledgements go by the batch. A take right after a reconnect can
            # hold QoS 0 messages of the connection before (kept: they never come again)
            # and the new connection's: sent as two batches, or the new ones would be
            # dropped with the old connection's and acknowledged all the same, never stored.
            for batch in _by_connection(session.take(settings.batch_max,
                                                     settings.batch_wait_s, stop)):
                number = next(numbers)
                held[number] = [m.token for m in batch]   # not the payloads: 20,000 of them
                connection = connection_of(batch[0].token)
                send((BATCH, number, connection, session.session_began(connection),
                      [m.topic for m in batch], [m.payload for m in batch],
                      [m.received_at for m in batch],
                      {i: m.size for i, m in enumerate(batch) if m.size >= 0},
                      [i for i, m in enumerate(batch) if m.retained],
                      [i for i, m in enumerate(batch) if at_most_once(m.token)]))


def _by_connection(batch: list[RawMessage]) -> list[list[RawMessage]]:
    """The batch in runs of messages that came on one connection, in order. The inbox is
    in the order of the connections (what a reconnect keeps stays in front): a batch whose
    first and last came on one came all on it, as nearly every batch does."""
    if not batch or connection_of(batch[0].token) == connection_of(batch[-1].token):
        return [batch] if batch else []
    runs: list[list[RawMessage]] = []
    for m in batch:
        if runs and connection_of(runs[-1][-1].token) == connection_of(m.token):
            runs[-1].append(m)
        else:
            runs.append([m])
    return runs


def _acknowledge(control: Connection, session: MqttSession, held: dict[int, list[object]],
                 send: Callable[[tuple[Any, ...]], None], stop: threading.Event) -> None:
    """The child's side of the acknowledgements, in the order the engine committed.

    Whatever ends it ends the child: a child that received on and acknowledged nothing
    would hold Receive Maximum messages and stall the lane, unseen. Ended, it is started
    again, and the broker sends what it had not acknowledged."""
    try:
        while True:
            try:
                kind, first, last = control.recv()
            except (EOFError, OSError):
                log.warning("event=engine_gone "
                            "note=bulk_receiver_stopping_unacknowledged_come_again")
                return
            if kind == ACK:
                acked = 0
                for number in range(first, last + 1):
                    acked += session.ack_tokens(held.pop(number))
                # The engine acknowledges in order: batches before this one that are still
                # held were dropped there (an earlier connection's, which the broker sent
                # again; see ReceiverProcess._read) and are acknowledged by nobody.
                for number in [n for n in list(held) if n < first]:
                    held.pop(number, None)
                send((ACKED, acked))
            elif kind == STOP:
                return
    except BaseException:  # a bug: say so, and end the child
        log.exception("event=bulk_receiver_acknowledgements_failed note=child_ends")
        raise
    finally:
        stop.set()
