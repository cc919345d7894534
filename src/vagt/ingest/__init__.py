"""Ingest: MQTT sessions, topics, decoding (canonical JSON, SenML), units, dead letters.

Knows nothing of databases, rules or queues: it turns raw messages into columns. The metric
catalogue is `vagt.ingest.units.METRICS`.
"""

from vagt.ingest.decode import decode_batch
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
    parse_topic,
    subscription_filters,
)

__all__ = [
    "Channel", "DeadLetter", "DeadLetterReason", "DecodedBatch", "RawMessage", "TopicError",
    "build_topic", "check_topic_root", "decode_batch", "parse_topic", "subscription_filters",
]
