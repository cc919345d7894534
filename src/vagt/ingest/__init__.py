"""Ingest: MQTT sessions, topics, decoding (canonical JSON, SenML), units, dead letters.

Knows nothing of databases, rules or queues: it turns raw messages into columns.
"""

from vagt.ingest.decode import decode_batch
from vagt.ingest.model import (
    Channel,
    DeadLetter,
    DeadLetterReason,
    DecodedBatch,
    RawMessage,
)
from vagt.ingest.topics import TopicError, build_topic, parse_topic, subscription_filters

__all__ = [
    "Channel", "DeadLetter", "DeadLetterReason", "DecodedBatch", "RawMessage", "TopicError",
    "build_topic", "decode_batch", "parse_topic", "subscription_filters",
]
