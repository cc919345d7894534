"""Ingest: MQTT sessions, topics, decoding (canonical JSON, SenML), units, dead letters.

Knows nothing of databases, rules or queues: it turns raw messages into columns. The metric
catalogue is `vagt.ingest.units.METRICS`; the decoder is `vagt.ingest.decode.decode_batch`.

Only the light modules are imported here: the bulk lane's receiving process
(`vagt.app.receiver`) imports `vagt.ingest.consumer`, and with it this package, and needs
neither numpy nor the decoder (40 MB of a process's memory).
"""

from vagt.ingest.model import (
    Channel,
    DeadLetter,
    DeadLetterReason,
    DecodedBatch,
    RawMessage,
)
from vagt.ingest.topics import (
    TopicError,
    build_topic,
    check_topic_root,
    every_device_topic,
    parse_topic,
    subscription_filters,
)

__all__ = [
    "Channel", "DeadLetter", "DeadLetterReason", "DecodedBatch", "RawMessage", "TopicError",
    "build_topic", "check_topic_root", "every_device_topic", "parse_topic",
    "subscription_filters",
]
