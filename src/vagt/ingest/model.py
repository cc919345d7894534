"""The plain data that ingest hands to the later stages: raw messages in, columns out.

A batch of raw MQTT messages is decoded into one `DecodedBatch`: readings, events and
status as parallel lists (columns), plus one `DeadLetter` per message that could not be
used. Nothing here knows about databases, rules or queues.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Channel(enum.StrEnum):
    TELEMETRY = "telemetry"
    ALARM = "alarm"
    STATUS = "status"


class DeadLetterReason(enum.StrEnum):
    """Why a message could not be used. The value is stored and used as a metric label."""

    BAD_TOPIC = "bad_topic"                  # not vagt/v1/dev/{device_id}/{channel}
    PAYLOAD_TOO_LARGE = "payload_too_large"  # over ingest.max_payload_bytes
    MALFORMED = "malformed"                  # not UTF-8 JSON
    SCHEMA = "schema"                        # JSON, but not a canonical or SenML document
    UNKNOWN_UNIT = "unknown_unit"            # a unit we cannot convert to the metric's unit
    UNKNOWN_METRIC = "unknown_metric"        # a metric name vagt does not know
    IMPOSSIBLE_VALUE = "impossible_value"    # NaN, infinite, or outside what a sensor can report
    BAD_TIME = "bad_time"                    # missing, unparsable or far-future timestamp
    DEVICE_MISMATCH = "device_mismatch"      # the payload names another device than the topic
    RETAINED = "retained"                    # the broker's kept copy, not a live message
    UNKNOWN_DEVICE = "unknown_device"        # the device is not in the registry
    CONFLICT = "conflict"                    # a reading or event other than the one stored
                                             # for its device, metric and time; the rest of
                                             # the message was used
    PROCESSING_FAILED = "processing_failed"  # vagt failed on it (a bug, or data the database
                                             # refused); the rest of its batch went on


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One MQTT message as it arrived. `token` is what the consumer needs to acknowledge it."""

    topic: str
    payload: bytes
    received_at: float  # unix seconds, taken when the client handed it to us
    token: object = None
    # The payload's size as it arrived, when `payload` holds only its first bytes: a message
    # over the size limit is kept as a dead letter, but not carried and stored whole (a
    # device sending megabytes must not fill the engine's memory). -1: `payload` is whole.
    size: int = -1
    # It came with the retain flag: the broker's kept copy of an old message, sent because we
    # subscribed (a message published while we are subscribed comes without the flag).
    retained: bool = False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    payload: bytes
    received_at: float
    reason: DeadLetterReason
    detail: str  # a sentence a person can act on: what was wrong, where, what is allowed
    device_id: str | None = None


@dataclass(slots=True)
class DecodedBatch:
    """Columns of what a batch of messages said. Row i of each column family belongs together.

    `*_msg` columns give the index of the message (in the batch) a row came from, so that a
    later stage can turn every row of one message into a dead letter (unknown device) at once.
    Times are unix seconds (float64): they go to numpy and to SQL `to_timestamp()` unchanged.
    """

    # readings: one measured value each, already in the metric's canonical (UCUM) unit
    r_device: list[str] = field(default_factory=list)
    r_metric: list[str] = field(default_factory=list)
    r_value: list[float] = field(default_factory=list)
    r_unit: list[str] = field(default_factory=list)
    r_time: list[float] = field(default_factory=list)
    r_msg: list[int] = field(default_factory=list)

    # events: alarm.fall, fault.dispenser_jam, dose.taken, power.mains_lost, ...
    e_device: list[str] = field(default_factory=list)
    e_code: list[str] = field(default_factory=list)
    e_severity: list[str] = field(default_factory=list)
    e_time: list[float] = field(default_factory=list)
    e_details: list[str] = field(default_factory=list)  # JSON text, "{}" when none
    e_msg: list[int] = field(default_factory=list)

    # firmware as reported in status messages (battery and signal arrive as readings)
    f_device: list[str] = field(default_factory=list)
    f_firmware: list[str] = field(default_factory=list)
    f_time: list[float] = field(default_factory=list)
    f_msg: list[int] = field(default_factory=list)

    # per message: the device the topic names ("" for a bad topic), and its channel
    msg_device: list[str] = field(default_factory=list)
    msg_channel: list[str] = field(default_factory=list)
    # per message: the device's own message counter, -1 when it sends none (gap counting)
    msg_seq: list[int] = field(default_factory=list)

    dead: list[DeadLetter] = field(default_factory=list)
    # indexes of the messages that became dead letters
    dead_msg: list[int] = field(default_factory=list)
    # alarms used in part: their events are in the columns, and the message is kept whole as
    # a dead letter too, for the field beside them that was refused (`decode._alarm`)
    apart: list[DeadLetter] = field(default_factory=list)
    apart_msg: list[int] = field(default_factory=list)
    # messages on a channel another lane reads (the bulk lane's copies of alarms: it
    # subscribes to every device topic), left to it: in no column, no dead letter
    skipped_msg: list[int] = field(default_factory=list)

    @property
    def n_readings(self) -> int:
        return len(self.r_device)

    @property
    def n_events(self) -> int:
        return len(self.e_device)
