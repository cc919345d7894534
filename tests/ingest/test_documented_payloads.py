"""The payloads the README and docs/payloads.md show a device maker are read as they say.

A device maker copies these examples; one the decoder refuses would have them build a device
whose every message is a dead letter.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import orjson
import pytest
from tests.ingest.helpers import NOW, RECEIVED, ROOT

from vagt.ingest import RawMessage
from vagt.ingest.decode import decode_batch

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "docs" / "payloads.md"]

# ```json blocks, and `mosquitto_pub ... -t TOPIC -m 'PAYLOAD'` lines (continued with \)
JSON_BLOCK = re.compile(r"```json\n(.*?)```", re.DOTALL)
SHELL_BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)


def _json_examples() -> list[tuple[str, object]]:
    found = []
    for doc in DOCS:
        for i, block in enumerate(JSON_BLOCK.findall(doc.read_text())):
            found.append((f"{doc.name}:json{i + 1}", json.loads(block)))
    return found


def _published_examples() -> list[tuple[str, str, bytes]]:
    found = []
    for doc in DOCS:
        for block in SHELL_BLOCK.findall(doc.read_text()):
            command = ""
            for line in block.replace("\\\n", " ").splitlines(keepends=True):
                command += line
                if not command.startswith("mosquitto_pub"):
                    command = ""
                    continue
                try:
                    words = shlex.split(command)
                except ValueError:   # its payload goes on on the next line
                    continue
                command = ""
                topic = words[words.index("-t") + 1]
                payload = words[words.index("-m") + 1].encode()
                found.append((f"{doc.name}:{topic}", topic, payload))
    return found


JSON_EXAMPLES = _json_examples()
PUBLISHED = _published_examples()


def _device(doc: object) -> str:
    """The device a documented payload is about: its device_id, or its SenML base name's."""
    if isinstance(doc, dict):
        return str(doc["device_id"])
    assert isinstance(doc, list)
    return str(doc[0]["bn"]).rstrip(":/").split(":")[-1]


def _decode(topic: str, payload: bytes):
    return decode_batch([RawMessage(topic, payload, RECEIVED)], topic_root=ROOT,
                        max_payload_bytes=65536, now=NOW)


def test_the_docs_have_examples_to_check():
    assert len(JSON_EXAMPLES) >= 3 and len(PUBLISHED) >= 5


@pytest.mark.parametrize(("name", "doc"), JSON_EXAMPLES, ids=[n for n, _ in JSON_EXAMPLES])
def test_every_documented_payload_is_read_without_a_dead_letter(name, doc):
    device = _device(doc)
    out = _decode(f"{ROOT}/dev/{device}/telemetry", orjson.dumps(doc))
    assert out.dead == [], out.dead[0].detail if out.dead else ""
    assert out.n_readings + out.n_events + len(out.f_firmware) > 0
    assert set(out.r_device + out.e_device + out.f_device) == {device}


@pytest.mark.parametrize(("name", "topic", "payload"), PUBLISHED, ids=[n for n, _, _ in PUBLISHED])
def test_every_documented_mosquitto_pub_is_read_without_a_dead_letter(name, topic, payload):
    out = _decode(topic, payload)
    assert out.dead == [], out.dead[0].detail if out.dead else ""
    assert out.n_readings + out.n_events > 0
    if topic.endswith("/alarm"):
        assert out.e_code == ["alarm.fall"] and out.e_severity == ["critical"]


# The dead-letter table of payloads.md: each reason's example detail, and a message that
# makes it (the table shows the sentence, not the message).
REFUSED = {
    "bad_topic": [(f"{ROOT}/dev/ALM-7/alarms", b'{"events":[{"code":"alarm.fall"}]}'),
                  (f"{ROOT}/dev/OXI\u20101/telemetry", b'{"readings":[{"metric":"spo2","value":97}]}')],
    "payload_too_large": [(f"{ROOT}/dev/OXI-1/telemetry", b"x" * 70000)],
    "malformed": [(f"{ROOT}/dev/OXI-1/telemetry", b'{"readings": [')],
    "schema": [(f"{ROOT}/dev/OXI-1/telemetry",
                b'{"readings":[{"metric":"spo2","value":97,"uint":"%"}]}')],
    "unknown_unit": [(f"{ROOT}/dev/OXI-1/telemetry",
                      b'{"readings":[{"metric":"spo2","value":97},'
                      b'{"metric":"spo2","value":97,"unit":"furlong"}]}')],
    "unknown_metric": [(f"{ROOT}/dev/OXI-1/telemetry", b'{"readings":[{"metric":"mood","value":3}]}')],
    "impossible_value": [(f"{ROOT}/dev/OXI-1/telemetry",
                          b'{"readings":[{"metric":"weight","value":1600,"unit":"lb"}]}')],
    "bad_time": [(f"{ROOT}/dev/OXI-1/telemetry",
                  b'{"time":1795343600,"readings":[{"metric":"spo2","value":97}]}')],
    "device_mismatch": [(f"{ROOT}/dev/OXI-1/telemetry",
                         b'{"device_id":"OXI-2","readings":[{"metric":"spo2","value":97}]}')],
    "retained": [(f"{ROOT}/dev/OXI-1/telemetry", b'{"readings":[{"metric":"spo2","value":97}]}')],
}
TABLE_ROW = re.compile(r"^\| `([a-z_]+)` \|.*\| (`.*`) \|$", re.MULTILINE)


def _documented_details() -> dict[str, list[str]]:
    text = (REPO / "docs" / "payloads.md").read_text().split("## Dead letters", 1)[1]
    return {reason: [d.replace("\\|", "|") for d in re.findall(r"`((?:[^`])+)`", details)]
            for reason, details in TABLE_ROW.findall(text)}


DOCUMENTED = _documented_details()


def test_the_dead_letter_table_has_an_example_of_each_reason_the_decoder_gives():
    assert set(REFUSED) <= set(DOCUMENTED)


@pytest.mark.parametrize("reason", sorted(REFUSED))
def test_each_documented_dead_letter_detail_is_what_the_decoder_says(reason):
    for (topic, payload), documented in zip(REFUSED[reason], DOCUMENTED[reason], strict=True):
        kept = payload[:65536]
        message = RawMessage(topic, kept, RECEIVED, size=len(payload) if kept != payload else -1,
                             retained=reason == "retained")
        out = decode_batch([message], topic_root=ROOT, max_payload_bytes=65536,
                           now=NOW)
        assert [d.reason.value for d in out.dead] == [reason]
        detail, at = out.dead[0].detail, 0
        for part in documented.split("…"):   # the table leaves out what follows a …
            found = detail.find(part.strip(" ()"), at)
            assert found >= 0, f"payloads.md says {documented!r}; the decoder says {detail!r}"
            at = found + len(part.strip(" ()"))
