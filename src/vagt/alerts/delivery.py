"""The delivery worker: sends the outbox to the call centre, as signed webhooks and over MQTT.

Each target is worked in outbox order. A failed try is retried with exponential backoff
(`backoff_initial` doubling up to `backoff_max`); while it waits, the target's later events
wait behind it, so a receiver never sees "resolved" before "opened". A receiver that is
down, unreachable, overloaded or misconfigured is tried until it is mended: nothing is given
up in an outage of the call centre's system. A delivery the receiver refuses as wrong in
itself (`DeliveryFailed.refused`), or that fails in a way vagt did not foresee, is a dead
letter after `max_attempts` such tries (kept, with the last error), and the next one goes.
Several engines share the outbox: one at a time works a target (a transaction-level advisory
lock per target), so they never send the same row at once, nor a target's events out of order.

Webhook signature (the receiver recomputes it): header `X-Vagt-Timestamp: <unix seconds>`
and `X-Vagt-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`. A receiver
should refuse a timestamp far from its own clock (replays). Delivery is at least once: the
body's `event_id` (the outbox entry's id: the same on every try, and after a move to another
target; signed with the rest, so a replayed request cannot pass for another event) tells a
duplicate, over MQTT too. `X-Vagt-Delivery` (`<event_id>-<target>`) is not signed.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import IO, Protocol

import orjson
import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from psycopg_pool import ConnectionPool

from vagt.alerts.observe import AlertObserver, NullObserver
from vagt.alerts.outbox import TRY_LOCK_TARGET
from vagt.alerts.policy import DeliveryPolicy, MqttTarget, WebhookTarget
from vagt.alerts.urls import without_secrets
from vagt.app.watchdog import guarded_connection

log = logging.getLogger("vagt.alerts.delivery")

SIGNATURE_HEADER = "X-Vagt-Signature"
TIMESTAMP_HEADER = "X-Vagt-Timestamp"


class DeliveryFailed(Exception):
    """The receiver did not take the event; the message says what happened (no secrets).

    `refused`: the receiver answered that this event is wrong in itself (HTTP 400, 409, 413,
    422), which trying again may not change: counted toward `max_attempts`. Otherwise the
    fault is the receiver's or the link's, the same for every event (no connection, a
    timeout, HTTP 5xx, 401 or 403 after a secret changed, 404 while it is redeployed, 429,
    no PUBACK, a redirect to another URL), and the event waits until it is mended."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


# HTTP answers that say "not this event" rather than "not now" or "not you": Bad Request,
# Conflict, Content Too Large, Unprocessable Content.
_NOT_THIS = frozenset({400, 409, 413, 422})


class Sender(Protocol):
    name: str
    timeout_s: float    # the longest a send waits for its receiver

    def send(self, delivery_id: str, event: str, body: bytes, now: float) -> None:
        """Deliver or raise DeliveryFailed."""

    def close(self) -> None:
        """Release connections."""


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuses every redirect: the answer is an HTTPError with its 3xx status. Followed, a
    POST answered 301, 302 or 303 becomes a GET without the body, and a 2xx to that GET (a
    login page, an HTTPS front page) would record as delivered an event nobody received."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int,
                         msg: str, headers: http.client.HTTPMessage,
                         newurl: str) -> urllib.request.Request | None:
        return None


class WebhookSender:
    def __init__(self, target: WebhookTarget) -> None:
        self.name = target.name
        self.target = target
        self.timeout_s = target.timeout_s
        self._opener = urllib.request.build_opener(_NoRedirects)

    def send(self, delivery_id: str, event: str, body: bytes, now: float) -> None:
        timestamp = str(int(now))
        request = urllib.request.Request(self.target.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "vagt",
            TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(self.target.secret, timestamp,
                                                                body),
            "X-Vagt-Event": event, "X-Vagt-Delivery": delivery_id})
        try:
            with self._opener.open(request, timeout=self.target.timeout_s) as response:
                status = response.status
        except urllib.error.HTTPError as e:
            if 300 <= e.code < 400:  # the URL is not where the receiver takes events
                raise DeliveryFailed(_redirected(self.target.url, e.code,
                                                 e.headers.get("Location"))) from None
            raise DeliveryFailed(f"HTTP {e.code} from {without_secrets(self.target.url)}",
                                 refused=e.code in _NOT_THIS) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DeliveryFailed(f"{without_secrets(self.target.url)}: {reason}") from None
        except http.client.HTTPException as e:  # not HTTP: a status line of garbage, say
            raise DeliveryFailed(f"{without_secrets(self.target.url)}: not an HTTP response "
                                 f"({type(e).__name__})") from None
        if not 200 <= status < 300:
            raise DeliveryFailed(f"HTTP {status} from {without_secrets(self.target.url)}")

    def close(self) -> None:
        pass


def _redirected(url: str, code: int, location: str | None) -> str:
    """What ops need to mend the webhook's url: the redirect and where it pointed."""
    try:
        to = (f"redirected to {without_secrets(urllib.parse.urljoin(url, location))}"
              if location else "redirected without a Location")
    except ValueError:  # the receiver's Location is not a URL (an unbalanced [, say)
        to = "redirected to an address that is not a valid URL"
    return (f"HTTP {code} from {without_secrets(url)}: the receiver {to}; vagt does not follow "
            "redirects (a POST would lose its body): set the webhook's url to the "
            "address that takes the events")


class MqttSender:
    """Publishes at QoS 1 and counts an event delivered only when the broker's PUBACK came."""

    def __init__(self, target: MqttTarget, *, host: str, port: int, username: str | None,
                 password: str | None, tls: bool, client_id: str,
                 timeout_s: float = 10.0) -> None:
        self.name = target.name
        self.target = target
        self.timeout_s = timeout_s
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=paho.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        if tls:
            self.client.tls_set()
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    def send(self, delivery_id: str, event: str, body: bytes, now: float) -> None:
        alert = orjson.loads(body).get("alert", {})
        topic = self.target.topic.format_map(_TopicFields(
            queue=alert.get("queue", ""), event=event, priority=alert.get("priority", ""),
            municipality=(alert.get("labels") or {}).get("municipality", "")))
        if not self.client.is_connected():
            raise DeliveryFailed(f"not connected to the MQTT broker for topic {topic}")
        info = self.client.publish(topic, body, qos=1)
        try:
            info.wait_for_publish(self.timeout_s)
        except (RuntimeError, ValueError) as e:
            raise DeliveryFailed(f"publish to {topic} failed: {e}") from None
        if not info.is_published():
            raise DeliveryFailed(f"no PUBACK for {topic} within {self.timeout_s:g}s")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def event_body(outbox_id: int, payload: str) -> bytes:
    """What a receiver gets: the outbox entry's payload (a JSON object, as PostgreSQL gives
    it) with its id first, as `event_id`."""
    rest = payload[1:].lstrip()
    assert payload[:1] == "{", "an outbox payload is a JSON object"
    return f'{{"event_id": {outbox_id}{"" if rest == "}" else ", "}{rest}'.encode()


class _TopicFields(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


_DUE = """
SELECT d.outbox_id, o.event, o.payload::text, d.attempts, d.refusals, d.next_attempt_at
FROM alert_deliveries d JOIN alert_outbox o ON o.id = d.outbox_id
WHERE d.target = %s AND d.delivered_at IS NULL AND d.dead_at IS NULL
ORDER BY d.outbox_id
LIMIT 1
FOR UPDATE OF d
"""


# The longest a target whose passes fail waits for the next: an alarm waits at most that
# once the database is back, and a receiver whose event's try could not be recorded is sent
# it again at most that often, not at every pass.
PASS_RETRY_MAX_S = 5.0


class DeliveryWorker:
    """Delivers what is due for each target; `run` loops until stopped."""

    def __init__(self, pool: ConnectionPool, policy: DeliveryPolicy, senders: list[Sender],
                 clock: Callable[[], float], observer: AlertObserver | None = None,
                 batch: int = 50, transaction_limit_s: float = 10.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """`transaction_limit_s`: how long a delivery's statements may take (its send's
        timeout comes on top) before its connection is cut (`guarded_connection`): a
        database that stops answering would hold every delivery for ever. `monotonic`
        times a failed pass's wait (`deliver_due`); `clock` the tries, as stored."""
        self.pool = pool
        self.transaction_limit_s = transaction_limit_s
        self.policy = policy
        self.senders = senders
        self.clock = clock
        self.observer = observer or NullObserver()
        self.batch = batch
        self.monotonic = monotonic
        # target: (passes failed in a row, when it is worked again, by `monotonic`)
        self._failing: dict[str, tuple[int, float]] = {}

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                if not self.deliver_due():
                    stop.wait(self.policy.poll_interval_s)
        finally:
            for s in self.senders:
                s.close()

    def deliver_due(self) -> int:
        """One pass over every target; returns how many tries were made. A target whose
        pass fails (the database is away, or a try could not be recorded: nothing is lost,
        the row still waits) does not hold the others, and is worked again after
        `poll_interval`, doubling with each pass failed in a row up to `PASS_RETRY_MAX_S`."""
        tries = 0
        for sender in self.senders:
            failed, resume = self._failing.get(sender.name, (0, 0.0))
            if failed and self.monotonic() < resume:
                continue
            try:
                tries += self._deliver_target(sender)
            except Exception:
                failed += 1
                delay = _doubling(self.policy.poll_interval_s, failed, PASS_RETRY_MAX_S)
                self._failing[sender.name] = (failed, self.monotonic() + delay)
                log.exception("event=delivery_pass_failed target=%s failed=%d retry_in=%.1fs",
                              sender.name, failed, delay)
            else:
                self._failing.pop(sender.name, None)
        return tries

    def _deliver_target(self, sender: Sender) -> int:
        """Up to `batch` events in outbox order, each sent and recorded in its own transaction."""
        tries = 0
        while tries < self.batch:
            limit = self.transaction_limit_s + sender.timeout_s
            with guarded_connection(self.pool, limit, "thread=alert-delivery") as conn, \
                    conn.transaction():
                [mine] = conn.execute(TRY_LOCK_TARGET, (sender.name,)).fetchone() or (False,)
                if not mine:
                    break  # another engine is sending to this target
                row = conn.execute(_DUE, (sender.name,)).fetchone()
                if row is None:
                    break
                outbox_id, event, payload, attempts, refusals, next_at = row
                now = self.clock()
                # A retry's time was set by this clock (see _record); an event never tried
                # is due at once, whatever the database's clock said when it was queued (a
                # database host's clock ahead of the engine's would hold every alarm back).
                if attempts and next_at > datetime.fromtimestamp(now, UTC):
                    break  # the earliest waits for its retry: the later ones wait behind it
                tries += 1
                outcome, error, refused = self._try(sender, int(outbox_id), str(event),
                                                    event_body(int(outbox_id), str(payload)),
                                                    now)
                outcome = self._record(conn, sender.name, int(outbox_id), int(attempts) + 1,
                                       int(refusals) + refused, outcome, error, refused, now)
            self.observer.delivery(sender.name, outcome)
            if outcome == "failed":
                break
        return tries

    def _try(self, sender: Sender, outbox_id: int, event: str, body: bytes,
             now: float) -> tuple[str, str | None, bool]:
        """(outcome, error, whether the try counts toward `max_attempts`)."""
        try:
            sender.send(f"{outbox_id}-{sender.name}", event, body, now)
        except DeliveryFailed as e:
            return "failed", str(e), e.refused
        except Exception as e:  # a bug, or an error the sender did not foresee: a failed try
            # that counts (retried, then a dead letter: it may be this event's own) so that
            # this target's later events and the other targets go on. Its type and where it
            # came from, not its text: that may hold a URL with a token in it.
            where = traceback.extract_tb(e.__traceback__)[-1]
            error = (f"unexpected {type(e).__name__} at "
                     f"{where.filename.rsplit('/', 1)[-1]}:{where.lineno}")
            log.error("event=alert_delivery_error target=%s outbox_id=%d error=%r", sender.name,
                      outbox_id, error)
            return "failed", error, True
        return "delivered", None, False

    def _record(self, conn: psycopg.Connection, target: str, outbox_id: int, attempts: int,
                refusals: int, outcome: str, error: str | None, refused: bool,
                now: float) -> str:
        """The try's outcome in the delivery's row (locked by `_DUE`); `attempts` and
        `refusals` count this try. Returns the outcome as the metrics count it: delivered,
        failed (tried again later) or dead."""
        at = datetime.fromtimestamp(now, UTC)
        if outcome == "delivered":
            conn.execute("UPDATE alert_deliveries SET attempts = %s, delivered_at = %s, "
                         "last_error = NULL WHERE outbox_id = %s AND target = %s",
                         (attempts, at, outbox_id, target))
            log.info("event=alert_delivered target=%s outbox_id=%d attempts=%d", target,
                     outbox_id, attempts)
            return outcome
        # what the receiver answered may hold a NUL (a redirect's Location), which a text
        # column refuses: the try would not be recorded, and tried again at once for ever
        error = None if error is None else error.replace("\0", "\\x00")
        dead = refusals >= self.policy.max_attempts
        # A refusal backs off by the refusals: after an outage (thousands of tries: 2 **
        # attempts would overflow a float) the receiver is back, and the events behind one
        # it refuses must not wait backoff_max for each of its max_attempts refusals.
        delay = _doubling(self.policy.backoff_initial_s, refusals if refused else attempts,
                          self.policy.backoff_max_s)
        conn.execute("UPDATE alert_deliveries SET attempts = %s, refusals = %s, last_error = %s, "
                     "dead_at = %s, next_attempt_at = %s WHERE outbox_id = %s AND target = %s",
                     (attempts, refusals, error, at if dead else None,
                      at + timedelta(seconds=delay), outbox_id, target))
        if dead:
            log.error("event=alert_delivery_dead target=%s outbox_id=%d attempts=%d "
                      "refusals=%d error=%r", target, outbox_id, attempts, refusals, error)
            return "dead"
        log.warning("event=alert_delivery_failed target=%s outbox_id=%d attempts=%d "
                    "refusals=%d retry_in=%.1fs error=%r", target, outbox_id, attempts,
                    refusals, delay, error)
        return outcome


def _doubling(first: float, tries: int, most: float) -> float:
    """The wait after `tries` failures in a row: `first`, doubling, at most `most` (the
    exponent bounded: thousands of tries in an outage would overflow a float)."""
    return min(first * 2.0 ** min(tries - 1, 60), most)


def senders_for(policy: DeliveryPolicy, *, mqtt_defaults: Mapping[str, object],
                client_id: str) -> list[Sender]:
    """A sender per configured target; MQTT targets without a URL use the engine's broker."""
    result: list[Sender] = [WebhookSender(w) for w in policy.webhooks]
    for m in policy.mqtt:
        settings = dict(mqtt_defaults)
        if m.url:
            p = urllib.parse.urlsplit(m.url)
            tls = p.scheme == "mqtts"
            settings = {"host": p.hostname or "127.0.0.1", "port": p.port or (8883 if tls else 1883),
                        "username": urllib.parse.unquote(p.username) if p.username else None,
                        "password": m.password if m.password is not None else
                        urllib.parse.unquote(p.password) if p.password else None,
                        "tls": tls}
        result.append(MqttSender(m, host=str(settings["host"]), port=int(str(settings["port"])),
                                 username=settings.get("username"),  # type: ignore[arg-type]
                                 password=settings.get("password"),  # type: ignore[arg-type]
                                 tls=bool(settings.get("tls")),
                                 client_id=f"{client_id}-out-{m.name}"))
    return result
