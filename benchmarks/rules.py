"""Rule evaluation cost per message with 100,000 devices and 30 rules, beside the cost of
ingestion (decoding the same messages) measured in the same run.

    .venv/bin/python -m benchmarks.rules --devices 100000 --messages 200000 --batch 5000

No broker and no database: decode_batch and RuleEngine.evaluate/apply over the same batches.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np
import orjson

from vagt.devices.catalogue import load_catalogue
from vagt.ingest.decode import decode_batch
from vagt.ingest.model import DecodedBatch, RawMessage
from vagt.rules import Batch, Rule, RuleEngine, load_rules
from vagt.rules.state import ListFleet

ROOT = "vagt/v1"
MUNICIPALITIES = ["Aarhus", "Randers", "Viborg", "Silkeborg", "Horsens", "Herning", "Samsø"]
KINDS = [  # (type, vendor, model, metrics as (name, unit, mean, sd), event codes)
    ("pulse_oximeter", "Nonin", "3230", [("spo2", "%", 95, 2), ("pulse", "/min", 70, 8)], []),
    ("bp_monitor", "A&D", "UA-651BLE", [("bp_systolic", "mm[Hg]", 135, 15),
                                        ("bp_diastolic", "mm[Hg]", 85, 8)], []),
    ("scale", "Withings", "Body+", [("weight", "kg", 80, 0.4)], []),
    ("glucose_meter", "Roche", "Accu-Chek Guide", [("glucose", "mmol/L", 6, 1.5)], []),
    ("medicine_dispenser", "Evondos", "E300", [("battery", "%", 60, 25)],
     ["dose.due", "dose.taken"]),
    ("personal_alarm", "Doro", "Secure 580", [("battery", "%", 60, 25)], ["alarm.fall"]),
    ("gateway", "Telit", "HomeHub 4G", [("signal", "dB[mW]", -75, 8)],
     ["connection.lost", "connection.restored", "power.mains_lost", "power.mains_restored"]),
]


# per device type, a metric a broken sensor reports and the value it reads: out of the model's
# range (implausible: the validity rule's), not of what any sensor can report (impossible:
# a dead letter)
BROKEN = {"pulse_oximeter": ("pulse", 5.0), "bp_monitor": ("bp_systolic", 30.0),
          "scale": ("weight", 300.0), "glucose_meter": ("glucose", 0.1)}


def thirty_rules() -> list[Rule]:
    """The default rules plus per-municipality variants, 30 in all."""
    rules = load_rules(None)
    extra = []
    for k, muni in enumerate(MUNICIPALITIES * 3):
        if len(rules) + len(extra) == 30:
            break
        metric, level = [("spo2", 92), ("pulse", 50), ("glucose", 4)][k % 3]
        base = Rule(name=f"{metric}_{muni.lower()}_{k}", kind="threshold", severity="warning",
                    priority=3, queue="clinical", summary="{metric} {value}", metric=metric,
                    below=float(level), clear_at=float(level) + 2, for_s=300.0,
                    municipalities=(muni,))
        extra.append(base)
    return rules + extra


def make_messages(n_devices: int, n_messages: int, seed: int, t0: float | None = None,
                  faulty: float = 0.0) -> tuple[ListFleet, list[RawMessage]]:
    """The fleet and its messages, one every 0.4 s of device time from `t0` (a day ago).
    `faulty`: the share of devices with a broken sensor (of the types in `BROKEN`), whose
    metric reads a value out of its model's range four times in five."""
    rng = random.Random(seed)
    broken = int(faulty * 1000)
    fleet = ListFleet()
    kinds = []
    for i in range(n_devices):
        kind = KINDS[i % len(KINDS)]
        kinds.append(kind)
        fleet.ids.append(f"DEV-{i:06d}")
        fleet.vendor.append(kind[1])
        fleet.model.append(kind[2])
        fleet.type.append(kind[0])
        fleet.municipality.append(MUNICIPALITIES[i % len(MUNICIPALITIES)])
        fleet.status.append("deployed")
    t0 = time.time() - 86400 if t0 is None else t0
    msgs = []
    for j in range(n_messages):
        i = rng.randrange(n_devices)
        kind = kinds[i]
        t = t0 + j * 0.4
        doc: dict[str, object] = {"time": t, "readings": [
            {"metric": m, "value": round(rng.gauss(mu, sd), 1), "unit": u}
            for m, u, mu, sd in kind[3]]}
        if (i * 7919) % 1000 < broken and kind[0] in BROKEN and rng.random() < 0.8:
            metric, value = BROKEN[kind[0]]
            for reading in doc["readings"]:   # type: ignore[attr-defined]
                if reading["metric"] == metric:
                    reading["value"] = value
        if kind[4] and rng.random() < 0.2:
            doc["events"] = [{"code": rng.choice(kind[4])}]
        msgs.append(RawMessage(f"{ROOT}/dev/{fleet.ids[i]}/telemetry", orjson.dumps(doc), t))
    return fleet, msgs


def decoded(msgs: list[RawMessage], now: float | None = None) -> DecodedBatch:
    return decode_batch(msgs, topic_root=ROOT, max_payload_bytes=65536,
                        now=time.time() if now is None else now, max_future_skew_s=300)


def batch_of(dec: DecodedBatch, index: dict[str, int]) -> Batch:
    """The rules' batch of decoded messages, by the fleet's device indexes `index`."""
    r_dev = np.array([index[d] for d in dec.r_device], dtype=np.int64)
    e_dev = np.array([index[d] for d in dec.e_device], dtype=np.int64)
    r_time = np.asarray(dec.r_time, dtype=np.float64)
    e_time = np.asarray(dec.e_time, dtype=np.float64)
    return Batch(r_dev, np.asarray(dec.r_metric, dtype=object),
                 np.asarray(dec.r_value, dtype=np.float64), r_time, e_dev,
                 np.asarray(dec.e_code, dtype=object), e_time,
                 np.concatenate([r_dev, e_dev]), np.concatenate([r_time, e_time]))


def measure(fleet: ListFleet, msgs: list[RawMessage], batch_size: int
            ) -> tuple[float, float, float, int]:
    """One pass: (decode us/message, rules us/message, first batch rules seconds, rows)."""
    rules = thirty_rules()
    engine = RuleEngine(rules, fleet, load_catalogue())
    index = {d: k for k, d in enumerate(fleet.ids)}
    decode_s, rules_s, rows = [], [], 0
    for start in range(0, len(msgs), batch_size):
        batch = msgs[start:start + batch_size]
        t = time.perf_counter()
        dec = decoded(batch)
        decode_s.append(time.perf_counter() - t)
        b = batch_of(dec, index)
        rows += len(b.r_device) + len(b.e_device)
        t = time.perf_counter()
        engine.apply(engine.evaluate(b))
        rules_s.append(time.perf_counter() - t)
    # the first batch sizes the state arrays for the whole fleet: reported, not averaged in
    n = len(msgs) - batch_size
    return (sum(decode_s[1:]) / n * 1e6, sum(rules_s[1:]) / n * 1e6, rules_s[0], rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    fleet, msgs = make_messages(args.devices, args.messages, args.seed)
    runs = [measure(fleet, msgs, args.batch) for _ in range(args.repeat)]
    print(f"devices={args.devices} rules={len(thirty_rules())} messages={len(msgs)} "
          f"batch={args.batch} rows={runs[0][3]} rounds={args.repeat}")
    for k, (dec, rul, first, _) in enumerate(runs, 1):
        print(f"round {k}: decode {dec:6.2f} us/msg  rules {rul:6.2f} us/msg  "
              f"rules/decode {rul / dec:.2f}  first batch {first * 1e3:.0f} ms")
    dec = statistics.median(r[0] for r in runs)
    rul = statistics.median(r[1] for r in runs)
    ratio = statistics.median(r[1] / r[0] for r in runs)
    print(f"median: decode (ingestion) {dec:.2f} us/message; 30 rules (evaluate+apply) "
          f"{rul:.2f} us/message ({rul / 30:.3f} per rule); rules/decode {ratio:.2f}")


if __name__ == "__main__":
    main()
