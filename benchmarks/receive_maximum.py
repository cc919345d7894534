"""Does the broker keep to a client's Receive Maximum once acknowledgements flow?

The engine's memory is bounded by the bulk lane's Receive Maximum only if the broker sends no
more unacknowledged messages than that (docs/architecture.md, "Back-pressure"). This queues a
backlog for a persistent session, then drains it with paho alone (manual acknowledgement,
a few at a time, as slowly as a busy engine) and prints the most messages it held
unacknowledged at once. Against the test broker (scripts/mosquitto-test.conf):

    .venv/bin/python -m benchmarks.receive_maximum [--receive-maximum 100] [--messages 3000]
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

import paho.mqtt.client as paho
from benchmarks.drain import own_broker, publish_backlog, v5_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def most_unacknowledged(port: int, receive_maximum: int, n: int, acks_at_once: int) -> int:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = receive_maximum
    client_id = f"bench-rm-{uuid.uuid4().hex[:6]}"
    topic = f"bench/rm/{client_id}"
    first = v5_client(client_id)
    first.connect("127.0.0.1", port, clean_start=False, properties=props)
    first.loop_start()
    first.subscribe(topic, 1)
    time.sleep(0.3)
    first.disconnect()
    first.loop_stop()
    publish_backlog(port, [(topic, b"x")] * n)

    received: list[int] = []
    lock = threading.Lock()

    def on_message(_c: object, _u: object, m: paho.MQTTMessage) -> None:
        with lock:
            received.append(m.mid)

    client = v5_client(client_id, manual_ack=True)
    client.on_message = on_message
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    acked = most = 0
    deadline = time.monotonic() + 60
    try:
        while acked < n and time.monotonic() < deadline:
            time.sleep(0.01)
            with lock:
                held = received[acked:acked + acks_at_once]
                most = max(most, len(received) - acked)
            for mid in held:
                client.ack(mid, 1)
            acked += len(held)
    finally:
        client.disconnect()
        client.loop_stop()
    return most


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--receive-maximum", type=int, default=100)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--acks-at-once", type=int, default=20)
    args = ap.parse_args()
    with own_broker() as (broker, _):
        most = most_unacknowledged(broker.port, args.receive_maximum, args.messages,
                                   args.acks_at_once)
    verdict = "kept to" if most <= args.receive_maximum else "sent past"
    print(f"Receive Maximum {args.receive_maximum}, {args.messages} queued: at most {most} "
          f"unacknowledged at once; the broker {verdict} it")


if __name__ == "__main__":
    main()
