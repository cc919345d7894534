"""Implausible readings: stored as they came, marked bad per model, counted, not alerted on."""

from __future__ import annotations

import time

import psycopg
from tests.app.conftest import DEVICES, query, register, telemetry

from vagt.app import store
from vagt.app.pipeline import Pipeline
from vagt.ingest.model import RawMessage
from vagt.rules import load_rules

ROOT = "vagt/v1"
T0 = time.time() - 3600


def test_an_implausible_pulse_is_kept_marked_bad_counted_per_model_and_not_alerted(
        database_url):
    register(database_url, DEVICES)
    with psycopg.connect(database_url) as conn:
        store.prepare_connection(conn)
        p = Pipeline.load(conn, topic_root=ROOT, rules=load_rules(None), clock=time.time)
        counted = []
        # a pulse of 5 /min for 20 minutes (the Nonin 3230 reads 18 to 321); the broker then
        # sends the second message again (a redelivery is judged again, not counted again)
        for k in (0, 1, 2, 1):
            t = T0 + 600 * k
            out = p.process(conn, [RawMessage(f"{ROOT}/dev/OXI-0001/telemetry",
                                              telemetry("OXI-0001", t, spo2=97, pulse=5),
                                              time.time())])
            conn.commit()
            p.after_commit(out)
            counted.append(dict(out.bad_readings))
    assert counted == [{("Nonin", "3230", "pulse"): 1}] * 3 + [{}]
    assert query(database_url, "SELECT count(*) FROM readings WHERE metric = 'pulse'") == [(3,)]
    assert query(database_url, "SELECT vendor, model, metric, count(*) FROM bad_readings "
                               "GROUP BY 1, 2, 3") == [("Nonin", "3230", "pulse", 3)]
    assert query(database_url, "SELECT rule FROM alerts") == []
