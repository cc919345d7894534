"""One MQTT session that hands messages out in batches and acknowledges them only when told.

paho-mqtt handles the protocol with `manual_ack=True`, in a network thread of ours; the engine
takes batches with `take()`, commits what they caused, then calls `ack()`. aiomqtt has no
public manual-ack API yet (empicano/aiomqtt#345), so the consuming side uses paho directly.

Why not paho's own thread (`loop_start`): it reads one packet per `select()` (its `loop_read`
reads one when no QoS 2 flow is open), and every acknowledgement queued from another thread
writes a byte to its wake-up socket. For a backlog that is a `select()` and a wake-up per
message; the network thread here reads what the socket holds before it waits again, and is
woken once per round of acknowledgements (paho's external-loop API: `loop_read`,
`loop_write`, `loop_misc` and the socket-register-write callback).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from vagt.errors import log_value
from vagt.ingest.model import RawMessage

log = logging.getLogger("vagt.ingest.consumer")

# Unsubscribed at close and never subscribed (see MqttSession._settle_acks); a fixed name:
# built from the client id, a "+" or "#" in it would make it an invalid filter.
SETTLE_FILTER = "vagt/settle-acks"

RECONNECT_MIN_S, RECONNECT_MAX_S = 1.0, 15.0   # the wait after a lost or refused connection
READ_BURST = 1000   # packets read before acknowledgements are written and keepalive checked
SELECT_S = 1.0      # the longest the network thread sleeps: keepalive is checked as often
PAUSE_LOGGED_S = 10.0   # a pause at the Receive Maximum this long is logged (a drain's are short)
PUBLISH_TYPE = 3    # the packet type of PUBLISH, the first byte's high four bits
# what the session reports when its own network thread failed (not paho's to report)
NETWORK_FAILED = ReasonCode(PacketTypes.DISCONNECT, identifier=0x80)   # unspecified error


@dataclass(frozen=True)
class SessionSettings:
    """What one persistent MQTT session needs. One per lane: its own client id, queue, window."""

    client_id: str
    filters: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str = ""
    protocol: int = 5                  # 5 = MQTT 5, 4 = MQTT 3.1.1
    session_expiry_s: int = 7 * 24 * 3600
    receive_maximum: int = 20000
    keepalive_s: int = 30
    # a payload over this is cut to its first this-many bytes as it arrives (RawMessage.size)
    max_payload_bytes: int = 64 * 1024
    # Read no more from the socket while `receive_maximum` messages of this connection are
    # not acknowledged (QoS 0 ones do not count): Mosquitto 2.0.11 sends past it once
    # acknowledgements flow, and what it sends is held in our memory. The bulk lane's; the
    # alarm lane reads on (see MqttSession._may_read).
    stop_reading_at_receive_maximum: bool = False
    # Subscribed in place of `filters` when the broker refuses one of them (SUBACK 0x80 or
    # 0x87: an ACL that does not let this user read so wide), and unsubscribed when it grants
    # them all (a session of an older release holds them, and Mosquitto 2 sends a message
    # once per matching subscription). The bulk lane's two channels, in place of
    # `{root}/dev/#`: it reads what it may, and says so (`refused_filters`).
    fallback_filters: tuple[str, ...] = ()


def _acl_topic(topic_filter: str) -> str:
    """The topic an ACL names for a filter: without a shared subscription's prefix."""
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2]
    return topic_filter


@dataclass(frozen=True, slots=True)
class _Token:
    generation: int
    mid: int
    qos: int


def connection_of(token: object) -> int:
    """Which of its session's connections (1, 2, ...) the message with this token came on;
    its acknowledgement reaches the broker only on that one."""
    assert isinstance(token, _Token), "the token of an MqttSession's message"
    return token.generation


def at_most_once(token: object) -> bool:
    """The message with this token came at QoS 0 (its publisher's choice, or its topic's):
    the broker forgets it once sent, and never sends it again."""
    assert isinstance(token, _Token), "the token of an MqttSession's message"
    return token.qos == 0


class MqttSession:
    """A persistent QoS 1 subscription whose messages are acknowledged after commit.

    Back-pressure comes from the broker: it sends at most Receive Maximum (MQTT 5) messages
    that we have not acknowledged, so what this object holds in memory is bounded by it. Not
    every broker keeps to it (Mosquitto 2.0.11 does not, once acknowledgements flow): with
    `stop_reading_at_receive_maximum` the session itself stops reading while it holds that
    many, and reads again as acknowledgements go out; the broker keeps the rest.

    Every connection is a generation. A message is acknowledged only on the connection it came
    in on: after a reconnect the broker sends unacknowledged messages again with their packet
    ids, so the old ones are dropped from the inbox and never acknowledged (a late ack could
    release a newer message that reuses the id). Not a QoS 0 one: it never comes again.
    """

    def __init__(self, settings: SessionSettings) -> None:
        self.settings = settings
        self._cond = threading.Condition()       # the inbox
        self._connection = threading.Lock()      # generation and connected, against ack()
        self._inbox: collections.deque[RawMessage] = collections.deque()
        self._generation = 0
        # Per connection (generation): the first connection of the broker's session it is
        # part of. A connection the broker had our session for (CONNACK's session present)
        # continues the last one's; one it had not (no persistence, a crash before its save,
        # the session expired) begins a new session, and nothing before it comes again.
        self._session_began: dict[int, int] = {}
        self._connected = False
        self._unsubscribed: int | None = None  # the mid of the last UNSUBACK
        self._behind = False
        self._received = 0       # PUBLISH packets paho has handed over (the network thread's)
        # This connection's QoS 1 messages received (the network thread's) and acknowledged
        # (under `_connection`); both 0 at each connection. Two counters, each with one
        # writer, so that the message callback takes no lock for them.
        self._unacked_in = 0
        self._unacked_out = 0
        self._paused_since: float | None = None   # reading paused at the Receive Maximum
        self._paused_s = 0.0     # seconds paused, pauses ended (the network thread's)
        self._pause_lock = threading.Lock()     # the two above, against reading_paused_s
        self._pause_logged = False
        self._settling = False   # close() waits for an answer: read whatever comes
        # per filter asked for, whether the broker refused it at its last SUBACK; and the
        # SUBSCRIBEs not answered yet, by packet id (the network thread's)
        self._refused: dict[str, bool] = {}
        self._asked: dict[int, str] = {}
        self._retry_s: float | None = None      # the wait before the next connection attempt
        self._closing = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._client = self._make_client()
        self._network = threading.Thread(target=self._run_network, daemon=True,
                                         name=f"vagt-mqtt-{settings.client_id}")

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> MqttSession:
        s = self.settings
        props = None
        if s.protocol == 5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = s.session_expiry_s
            props.ReceiveMaximum = s.receive_maximum
            self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s,
                                       clean_start=False, properties=props)
        else:
            self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self._network.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect. Unacknowledged messages stay with the broker for the next start.

        The acknowledgements sent last are made sure of first (`_settle_acks`): paho closes
        the socket right after DISCONNECT, and a socket closed with the broker's messages
        still unread in it is reset; the broker then drops what it had not read yet, the
        PUBACKs too, and sends committed messages again (seen in the SIGTERM test).
        """
        self._settle_acks()
        self._closing.set()
        self._wake_up()
        if self._network.is_alive():
            self._network.join()
        self._wake_r.close()
        self._wake_w.close()
        with self._cond:
            self._connected = False
            self._inbox.clear()
            self._cond.notify_all()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def behind(self) -> bool:
        """The last `take` left messages in the inbox."""
        return self._behind

    @property
    def waiting(self) -> int:
        """Messages received and not taken yet."""
        with self._cond:
            return len(self._inbox)

    @property
    def unacknowledged(self) -> int:
        """QoS 1 messages received on this connection and not acknowledged yet: what the
        broker counts against our Receive Maximum."""
        return self._unacked_in - self._unacked_out

    @property
    def reading_paused(self) -> bool:
        """Not reading from the broker: the session holds `receive_maximum` messages not
        acknowledged (with `stop_reading_at_receive_maximum`)."""
        return self._paused_since is not None

    @property
    def reading_paused_s(self) -> float:
        """Seconds the session has not read from the broker at its Receive Maximum, in all."""
        with self._pause_lock:
            since, ended = self._paused_since, self._paused_s
        return ended + (0.0 if since is None else time.monotonic() - since)

    @property
    def refused_filters(self) -> tuple[str, ...]:
        """The filters the broker refused at their last SUBACK: what it does not send us."""
        return tuple(f for f, refused in list(self._refused.items()) if refused)

    def wait_connected(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._connected, timeout)

    # -- the engine's side -----------------------------------------------------------------

    def take(self, max_n: int, max_wait_s: float, stop: threading.Event) -> list[RawMessage]:
        """Wait for at least one message (or `stop`), then up to `max_wait_s` to fill a batch.

        Returns [] when stopping or when nothing arrived within a second (so the caller can
        check for stop and do housekeeping).
        """
        with self._cond:
            if not self._inbox:
                self._cond.wait(timeout=1.0)
                if not self._inbox or stop.is_set():
                    return []
            if max_wait_s > 0 and len(self._inbox) < max_n:
                deadline = time.monotonic() + max_wait_s
                while len(self._inbox) < max_n and not stop.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._cond.wait(timeout=left):
                        break
            n = min(max_n, len(self._inbox))
            popleft = self._inbox.popleft
            batch = [popleft() for _ in range(n)]
            self._behind = bool(self._inbox)
            return batch

    def ack(self, messages: list[RawMessage]) -> int:
        """Acknowledge, in arrival order, the messages that came on the current connection.

        Returns how many were acknowledged; the rest the broker will send again.
        """
        return self.ack_tokens([m.token for m in messages])

    def ack_tokens(self, tokens: list[object]) -> int:
        """`ack` by the messages' tokens alone (a holder of many need not keep payloads)."""
        acked = 0
        # Not under `_cond`: the network thread takes that for every message it receives, and
        # it waited through the whole loop (with paho's own thread each ack wrote to its
        # wake-up socket, so the GIL changed hands twice per message). `_connection` keeps a
        # reconnect out until the loop is done: what it queued goes with the old connection.
        with self._connection:
            generation = self._generation
            if not self._connected:
                return 0
            ack = self._client.ack
            once = 0
            for token in tokens:
                assert isinstance(token, _Token)
                if token.generation == generation:
                    ack(token.mid, token.qos)
                    acked += 1
                    once += token.qos == 0
            self._unacked_out += acked - once
        if acked and self.settings.stop_reading_at_receive_maximum:
            self._wake_up()     # reading may go on (paho wakes us only to write)
        return acked

    def _settle_acks(self, timeout: float = 2.0) -> None:
        """One round trip after the PUBACKs: the broker handles a connection's packets in
        order, so its answer to an UNSUBSCRIBE (of a filter we never subscribe) comes after
        it has taken every acknowledgement we sent before it."""
        with self._cond:
            if not self._connected:
                return
            self._unsubscribed = None
        # The answer can be behind messages past our Receive Maximum: read them (they are
        # not acknowledged, and come again at the next start).
        self._settling = True
        rc, mid = self._client.unsubscribe(SETTLE_FILTER)
        if rc != paho.MQTT_ERR_SUCCESS:
            return
        with self._cond:
            if not self._cond.wait_for(lambda: self._unsubscribed == mid or not self._connected,
                                       timeout):
                log.warning("event=mqtt_acks_unconfirmed client_id=%s note=broker_may_resend",
                            self.settings.client_id)

    # -- paho callbacks, on the network thread -------------------------------------------

    def _on_unsubscribe(self, _client: paho.Client, _userdata: object, mid: int,
                        _reasons: object, _props: object) -> None:
        with self._cond:
            self._unsubscribed = mid
            self._cond.notify_all()

    def _make_client(self) -> paho.Client:
        s = self.settings
        protocol = paho.MQTTv5 if s.protocol == 5 else paho.MQTTv311
        kwargs: dict[str, Any] = {}
        if protocol == paho.MQTTv311:
            kwargs["clean_session"] = False
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id,
                             protocol=protocol, manual_ack=True, **kwargs)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            client.tls_set(ca_certs=s.ca_file or None, cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._on_connect
        client.on_socket_register_write = lambda _c, _u, _s: self._wake_up()
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_unsubscribe = self._on_unsubscribe
        client.on_subscribe = self._on_subscribe
        return client

    def _on_connect(self, client: paho.Client, _userdata: object, flags: object,
                    reason: ReasonCode, _props: object) -> None:
        if reason.is_failure:
            log.error("event=mqtt_connect_refused client_id=%s reason=%s",
                      self.settings.client_id, reason)
            return
        self._retry_s = None
        resumed = bool(getattr(flags, "session_present", False))
        with self._connection, self._cond:
            last = self._generation
            self._generation += 1
            began = self._session_began.get(last, self._generation) if resumed \
                else self._generation
            self._session_began = {g: b for g, b in self._session_began.items()
                                   if g >= self._generation - 8}
            self._session_began[self._generation] = began
            self._unacked_in = self._unacked_out = 0   # the broker's count is per connection
            # What we hold from earlier connections of this broker session comes again, with
            # new packet ids: dropped; but not what came at QoS 0, which the broker sent once
            # and forgot. What is from before it (a session the broker lost) comes never
            # again: kept and stored; only its acknowledgements are no-ops.
            if began < self._generation:
                kept = [m for m in self._inbox
                        if connection_of(m.token) < began or at_most_once(m.token)]
                self._inbox.clear()
                self._inbox.extend(kept)
            self._connected = True
            self._cond.notify_all()
        self._end_pause()
        # Subscribed at every connection (a resumed session has the filters; a new one, or a
        # changed configuration, needs them). A retained message is sent at subscribe: an old
        # copy, which the decoder makes a dead letter (and on the alarm channel an alert: it
        # may be the only trace of an alarm). MQTT 5 asks for it only when the subscription
        # is new (a first start, a session that expired), not at each reconnect of a session
        # that has it; MQTT 3.1.1 cannot ask, and it comes at each (kept once as a dead
        # letter: the same bytes).
        self._asked = {}
        self._subscribe(client, self.settings.filters)
        log.log(logging.INFO if resumed or self._generation == 1 else logging.WARNING,
                "event=mqtt_connected client_id=%s generation=%d session_present=%s "
                "filters=%s", self.settings.client_id, self._generation, resumed,
                ",".join(self.settings.filters))

    def _subscribe(self, client: paho.Client, filters: tuple[str, ...]) -> None:
        """One SUBSCRIBE per filter, so that each SUBACK says which filter it answers."""
        options = (SubscribeOptions(qos=1,
                                    retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
                   if self.settings.protocol == 5 else None)
        for f in filters:
            if options is None:
                _, mid = client.subscribe(f, qos=1)
            else:
                _, mid = client.subscribe(f, options=options)
            if mid is not None:
                self._asked[mid] = f

    def _on_subscribe(self, client: paho.Client, _userdata: object, mid: int,
                      reasons: list[ReasonCode], _props: object) -> None:
        """A SUBACK. A refused filter is logged with what to change; with
        `fallback_filters`, these are read in place of `filters` while one is refused, and
        unsubscribed once all are granted."""
        f = self._asked.pop(mid, None)
        if f is None or not reasons:
            return
        s = self.settings
        refused = reasons[0].is_failure
        if not refused:   # what is published from now on reaches the session
            log.info("event=mqtt_subscribed client_id=%s filter=%s", s.client_id, f)
        was = self._refused.get(f)
        self._refused[f] = refused
        if f not in s.filters:
            if refused:
                log.error("event=mqtt_subscription_refused client_id=%s filter=%s reason=%s "
                          "fix=%s", s.client_id, f, log_value(str(reasons[0])), log_value(
                              f"let the user read {_acl_topic(f)} in the broker's ACL"))
            return
        if refused:
            if s.fallback_filters:
                log.warning(
                    "event=mqtt_subscription_refused client_id=%s filter=%s reason=%s "
                    "reading=%s fix=%s", s.client_id, f, log_value(str(reasons[0])),
                    ",".join(s.fallback_filters), log_value(
                        f"let the user read {_acl_topic(f)} in the broker's ACL (`vagt "
                        "devices broker-acl` writes it) and reload the broker: until then a "
                        "message on any other topic is dropped at the broker, not kept as "
                        "a dead letter"))
                self._subscribe(client, s.fallback_filters)
                client.unsubscribe(f)   # a grant an earlier connection had is withdrawn
            else:
                log.error("event=mqtt_subscription_refused client_id=%s filter=%s reason=%s "
                          "note=nothing_on_it_is_read fix=%s", s.client_id, f,
                          log_value(str(reasons[0])),
                          log_value(f"let the user read {_acl_topic(f)} in the broker's ACL"))
        elif s.fallback_filters and not any(self._refused.get(g, True) for g in s.filters):
            client.unsubscribe(list(s.fallback_filters))
            for g in s.fallback_filters:
                self._refused.pop(g, None)
            if was:
                log.info("event=mqtt_subscription_granted client_id=%s filter=%s",
                         s.client_id, f)

    def session_began(self, connection: int) -> int:
        """The first connection (a generation, see `connection_of`) of the broker's session
        that `connection` is part of: what connections from that one on left unacknowledged,
        the broker sends again; what came before it, never."""
        with self._connection:
            return self._session_began.get(connection, connection)

    def _on_disconnect(self, _client: paho.Client, _userdata: object, _flags: object,
                       reason: ReasonCode, _props: object) -> None:
        with self._connection, self._cond:
            self._connected = False
            self._cond.notify_all()
        # Paused, the broker's PINGRESP can wait behind the messages it sent past our
        # Receive Maximum, and the keepalive ends the connection: the broker sends what was
        # not acknowledged again on the next one.
        paused = self._paused_since is not None
        self._end_pause()
        level = logging.WARNING if reason.is_failure else logging.INFO
        log.log(level, "event=mqtt_disconnected client_id=%s reason=%s%s",
                self.settings.client_id, reason,
                " reading_paused=true note=unacknowledged_come_again" if paused else "")

    def _on_message(self, _client: paho.Client, _userdata: object,
                    msg: paho.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # brokers should refuse these; if one did not, dead-letter it
            topic = msg._topic.decode("utf-8", "replace")
        self._received += 1
        if msg.qos:
            self._unacked_in += 1
        payload, size = msg.payload, -1
        if len(payload) > self.settings.max_payload_bytes:
            # a dead letter to be: its first bytes and its size suffice
            size, payload = len(payload), payload[:self.settings.max_payload_bytes]
        m = RawMessage(topic, bytes(payload), time.time(),
                       _Token(self._generation, msg.mid, msg.qos), size, msg.retain)
        with self._cond:
            self._inbox.append(m)
            if len(self._inbox) == 1:
                self._cond.notify()

    # -- the network thread ------------------------------------------------------------------

    def _wake_up(self) -> None:
        """Out of `select()`: paho has packets to write (it says so once until they are
        written), or the session is closing."""
        with contextlib.suppress(OSError):  # full: it will wake anyway; closed: it is closed
            self._wake_w.send(b"w")

    def _run_network(self) -> None:
        """Connect, and connect again after a loss (waiting 1, 2, 4 ... 15 s, as paho's own
        loop does); while connected, read, write and keep alive; at close, DISCONNECT."""
        client = self._client
        first = True
        while not self._closing.is_set():
            if client.socket() is not None:
                try:
                    self._serve(client)
                    continue
                except Exception:       # a bug: a new connection, not a dead thread
                    log.exception("event=mqtt_network_failed client_id=%s",
                                  self.settings.client_id)
                    self._on_disconnect(client, None, None, NETWORK_FAILED, None)
            if not first:
                self._retry_s = (RECONNECT_MIN_S if self._retry_s is None
                                 else min(2 * self._retry_s, RECONNECT_MAX_S))
                if self._closing.wait(self._retry_s):
                    break
            first = False
            try:
                client.reconnect()      # closes what is left of the last socket first
            except OSError as e:
                log.warning("event=mqtt_connect_failed client_id=%s error=%s",
                            self.settings.client_id, e)
            except Exception:           # not the network's: logged, and tried again later
                log.exception("event=mqtt_connect_failed client_id=%s",
                              self.settings.client_id)
        self._disconnect(client)

    def _serve(self, client: paho.Client) -> None:
        """One round: wait for the socket (or a wake-up), read all it holds, write, keep alive.
        A lost connection is paho's to report (`on_disconnect`); it closes the socket. Only
        this thread closes it, so a `select` that fails is a bug (see `_run_network`)."""
        sock = client.socket()
        assert sock is not None
        may_read = self._may_read(client, sock)
        pending = sock.pending() if may_read and isinstance(sock, ssl.SSLSocket) else 0
        readable, _, _ = select.select([sock, self._wake_r] if may_read else [self._wake_r],
                                       [sock] if client.want_write() else [], [],
                                       0 if pending else SELECT_S)
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
        if sock in readable or pending:
            limit = (self.settings.receive_maximum
                     if self.settings.stop_reading_at_receive_maximum else 1 << 30)
            for _ in range(READ_BURST):
                if (self._unacked_in - self._unacked_out >= limit
                        and not self._may_read(client, sock)):
                    break   # at the Receive Maximum, and a PUBLISH is next
                before = self._received
                if client.loop_read() or self._received == before:
                    break   # lost, or the socket is empty, or it was not a PUBLISH: select
        if client.socket() is not None and client.want_write():
            client.loop_write()
        if client.socket() is not None:
            client.loop_misc()

    def _may_read(self, client: paho.Client, sock: Any) -> bool:
        """Whether to read from the socket now: not while this connection holds
        `receive_maximum` messages not acknowledged and a PUBLISH is the next packet (with
        `stop_reading_at_receive_maximum`; the broker keeps what it sent past it, in the
        socket or in its queue). Other packets are read: the broker's PINGRESP, or its
        answer at close, when nothing is sent past the limit before them.

        Only the bulk lane's session stops: an alarm lane that held its Receive Maximum would
        have that many alarms to commit before the next, and its session reads on as before.
        """
        s = self.settings
        held = self._unacked_in - self._unacked_out
        if not s.stop_reading_at_receive_maximum or held < s.receive_maximum \
                or self._settling:
            self._end_pause()
            return True
        if self._paused_since is None:
            with self._pause_lock:
                self._paused_since = time.monotonic()
        elif not self._pause_logged and time.monotonic() - self._paused_since > PAUSE_LOGGED_S:
            self._pause_logged = True
            log.warning("event=mqtt_reading_paused client_id=%s unacknowledged=%d "
                        "receive_maximum=%d paused_s=%.0f note=engine_behind_broker_keeps_the_rest",
                        s.client_id, held, s.receive_maximum, PAUSE_LOGGED_S)
        return self._next_is_not_publish(client, sock)

    @staticmethod
    def _next_is_not_publish(client: paho.Client, sock: Any) -> bool:
        """The next packet in the socket is not a PUBLISH, or it may be (nothing came yet:
        wait for it), or the connection ended (paho is to see it). Not known over TLS (no
        peeking under the TLS layer): False, and the keepalive tells a dead connection."""
        if getattr(client, "_in_packet", {}).get("command", 0):
            return True         # a packet begun (not a PUBLISH: those end a pause)
        if isinstance(sock, ssl.SSLSocket):
            return False
        try:
            first = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True         # nothing yet: select() tells when something comes
        except OSError:
            return True         # reset: paho's read reports the loss
        return not first or first[0] >> 4 != PUBLISH_TYPE

    def _end_pause(self) -> None:
        """The network thread's: reading goes on (acknowledgements went out, or a new
        connection began)."""
        since = self._paused_since
        if since is None:
            return
        paused = time.monotonic() - since
        with self._pause_lock:
            self._paused_since = None
            self._paused_s += paused
        if self._pause_logged:
            self._pause_logged = False
            log.info("event=mqtt_reading_resumed client_id=%s paused_s=%.1f",
                     self.settings.client_id, paused)

    def _disconnect(self, client: paho.Client) -> None:
        """DISCONNECT, written here (paho closes the socket after it): the broker keeps the
        session and what it has not had acknowledged."""
        if client.socket() is None:
            return
        client.disconnect()
        deadline = time.monotonic() + 2.0
        while (sock := client.socket()) is not None and client.want_write():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                select.select([], [sock], [], left)
            except (OSError, ValueError):
                break
            client.loop_write()
