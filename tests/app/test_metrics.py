"""The batch histogram exports exactly what prometheus-client's own Histogram would; the
alarm lane's metrics are merged with the engine's; the README's table is what is served."""

from __future__ import annotations

import pickle
import re
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from tests.app.conftest import EngineProcess, alarm, publish, scalar, telemetry, topic, wait_for
from tests.app.test_bad_input import metrics
from tests.support import Broker

from vagt.app.metrics import LATENCY_BUCKETS, BatchHistogram, EngineMetrics


def exposition(values: list[float], batched: bool) -> str:
    r = CollectorRegistry()
    if batched:
        h = BatchHistogram("lat", "latency", "lane", LATENCY_BUCKETS)
        r.register(h)
        h.observe_many("bulk", np.asarray(values, dtype=np.float64))
    else:
        ph = Histogram("lat", "latency", ["lane"], buckets=LATENCY_BUCKETS, registry=r)
        for v in values:
            ph.labels("bulk").observe(v)
    text = generate_latest(r).decode()
    # prometheus-client adds a _created gauge; the rest must be identical
    return "\n".join(line for line in text.splitlines() if "_created" not in line)


@given(st.lists(st.sampled_from([*LATENCY_BUCKETS, 0.0, 0.0001, 0.2499, 0.2501, 99.0]) |
                st.floats(0, 100, allow_nan=False), min_size=1, max_size=50))
def test_the_same_buckets_count_and_sum_as_observing_one_by_one(values: list[float]) -> None:
    assert _numbers(exposition(values, True)) == _numbers(exposition(values, False))


def _numbers(text: str) -> list[tuple[str, float]]:
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out.append((key, round(float(value), 9)))  # the sum, added in another order
    return out


def test_the_alarm_lane_process_metrics_are_served_with_the_engines_as_one() -> None:
    """One endpoint: the same family from both processes once, a series both have summed."""
    import pickle

    from vagt.app.metrics import EngineMetrics

    engine, child = EngineMetrics(), EngineMetrics()
    engine.received.labels("bulk").inc(5000)
    engine.alerts_opened.labels("clinical").inc(2)
    child.received.labels("alarm").inc(3)
    child.alerts_opened.labels("emergency").inc(3)
    child.alerts_opened.labels("clinical").inc(1)
    child.latency.observe_many("alarm", np.asarray([0.05, 0.3]))
    # what crosses the pipe is pickled
    engine.include(lambda: pickle.loads(pickle.dumps(list(child.registry.collect()))))
    text = generate_latest(engine.registry).decode()
    assert text.count("# HELP vagt_messages_received_total ") == 1
    assert 'vagt_messages_received_total{lane="bulk"} 5000.0' in text
    assert 'vagt_messages_received_total{lane="alarm"} 3.0' in text
    assert 'vagt_alerts_opened_total{queue="clinical"} 3.0' in text
    assert 'vagt_alerts_opened_total{queue="emergency"} 3.0' in text
    assert 'vagt_received_to_committed_seconds_bucket{lane="alarm",le="0.1"} 1.0' in text
    assert 'vagt_received_to_committed_seconds_count{lane="alarm"} 2.0' in text
    created = [line for line in text.splitlines()
               if line.startswith('vagt_alerts_opened_created{queue="clinical"}')]
    assert len(created) == 1 and float(created[0].split()[-1]) < 2e9  # a time, not a sum
    # a scrape of one family (`?name[]=...`) is merged the same way
    one = generate_latest(engine.registry.restricted_registry(
        ["vagt_alerts_opened_total"])).decode()
    assert one.count("# HELP vagt_alerts_opened_total ") == 1
    assert 'vagt_alerts_opened_total{queue="clinical"} 3.0' in one
    assert "vagt_messages_received_total" not in one


@dataclass
class Child:
    """The alarm lane's process as the engine sees it."""

    metrics: EngineMetrics
    incarnation: int = 1
    answers: bool = True

    def families(self) -> list[Metric]:
        if not self.answers:    # dead, or not answering in time
            return []
        return list(pickle.loads(pickle.dumps(list(self.metrics.registry.collect()))))


def test_the_alarm_lanes_counters_never_go_down_through_its_restart() -> None:
    """The alarm lane's process counts from 0 when it starts again, and the engine serves
    the sum of its counters and the engine's: a sum that went down would be read by
    Prometheus as a reset, and `increase()` would count the engine's whole total again."""
    engine, child = EngineMetrics(), Child(EngineMetrics())
    engine.dead_letters.labels("malformed").inc(100)
    engine.include(lambda: child.families(), lambda: child.incarnation)

    def served(name: str, **labels: str) -> float | None:
        return engine.registry.get_sample_value(name, labels)

    child.metrics.dead_letters.labels("malformed").inc(3)
    child.metrics.latency.observe_many("alarm", np.asarray([0.05]))
    child.metrics.mqtt_connected.labels("alarm").set(1)
    assert served("vagt_dead_letters_total", reason="malformed") == 103
    child.answers = False                                   # it died
    assert served("vagt_dead_letters_total", reason="malformed") == 103
    assert served("vagt_received_to_committed_seconds_count", lane="alarm") == 1
    assert served("vagt_mqtt_connected", lane="alarm") is None   # a gauge is not carried
    child.metrics, child.incarnation, child.answers = EngineMetrics(), 2, True  # from 0
    child.metrics.dead_letters.labels("malformed").inc(1)
    assert served("vagt_dead_letters_total", reason="malformed") == 104
    assert served("vagt_received_to_committed_seconds_count", lane="alarm") == 1
    child.metrics.latency.observe_many("alarm", np.asarray([0.05]))
    assert served("vagt_received_to_committed_seconds_count", lane="alarm") == 2
    assert served("vagt_received_to_committed_seconds_bucket", lane="alarm", le="0.1") == 2


def test_ops_see_the_broker_gone_while_the_lane_waits_for_the_database(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices) -> None:
    """Both down at once (a network outage): `vagt_mqtt_connected` must say so while a
    commit waits for the database, not when the database is back."""
    engine.start().wait_ready()
    wait_for(lambda: metrics(engine).get('vagt_mqtt_connected{lane="bulk"}') == 1,
             what="the bulk lane's session up on /metrics")
    with psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE readings IN EXCLUSIVE MODE")
        publish(broker.port, [(topic(topic_root, "OXI-0001", "telemetry"),
                               telemetry("OXI-0001", time.time() - 60, spo2=97))])
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM pg_stat_activity "
                                              "WHERE wait_event_type = 'Lock' "
                                              "AND datname = current_database()"),
                 what="the bulk lane waiting to store the reading")
        broker.stop()
        try:
            wait_for(lambda: metrics(engine).get('vagt_mqtt_connected{lane="bulk"}') == 0,
                     what="the bulk lane's session down on /metrics")
        finally:
            broker.start()
    wait_for(lambda: metrics(engine).get('vagt_mqtt_connected{lane="bulk"}') == 1,
             what="the session up again")


def test_a_queue_with_no_alert_waiting_is_0_not_gone(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices) -> None:
    """A dashboard of open alerts per queue shows 0 for a queue emptied, not a gap: every
    queue of the policy, and the service centre's, which the engine's own alerts go to."""
    engine.start().wait_ready()
    counted = metrics(engine)
    for queue in ("emergency", "home_care", "clinical", "logistics", "technical",
                  "escalation", "service_centre"):
        assert counted[f'vagt_open_alerts{{queue="{queue}"}}'] == 0, queue
    publish(broker.port, [(topic(topic_root, "ALM-0001", "alarm"),
                           alarm("ALM-0001", time.time() - 1))])
    wait_for(lambda: metrics(engine).get('vagt_open_alerts{queue="emergency"}') == 1,
             what="the alarm's alert, open")


def test_a_queue_only_a_rule_names_is_0_not_gone(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices,
        tmp_path: Path) -> None:
    """A centre's own rule sends its alerts to a queue of its own, which no route of the
    policy names (a rule's queue is where its alerts go when no route sets one): emptied,
    that queue is 0 on the dashboard too, not a gap."""
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nname = "personal_alarm"\nkind = "event"\ncodes = ["alarm.*"]\n'
        'severity = "critical"\npriority = 1\nqueue = "emergency"\nsummary = "{code}"\n'
        '[[rule]]\nname = "door_left_open"\nkind = "event"\ncodes = ["door.open"]\n'
        'severity = "warning"\npriority = 3\nqueue = "night_watch"\nsummary = "{code}"\n')
    engine.env["VAGT_RULES"] = str(rules)
    engine.start().wait_ready()
    assert metrics(engine).get('vagt_open_alerts{queue="night_watch"}') == 0


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_table() -> dict[str, tuple[str, set[str]]]:
    """The README's table of metrics: name: (type, label names)."""
    section = README.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, tuple[str, set[str]]] = {}
    for line in section.splitlines():
        row = re.match(r"\| `(vagt_\w+)(?:\{([\w,]+)\})?` \| (counter|gauge|histogram)", line)
        if row:
            assert row[1] not in table, f"{row[1]} is in the README's table twice"
            table[row[1]] = (row[3], set(row[2].split(",")) if row[2] else set())
    return table


def served(text: str) -> dict[str, tuple[str, set[str]]]:
    """What /metrics serves: family: (type, the label names of its samples)."""
    types = {name: kind for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)}
    families: dict[str, tuple[str, set[str]]] = {
        name: (kind, set()) for name, kind in types.items()
        # prometheus-client's creation time of a counter or histogram series
        if not (name.endswith("_created") and kind == "gauge"
                and {name.removesuffix("_created") + "_total",
                     name.removesuffix("_created")} & types.keys())}
    for name, labels in re.findall(r"^(vagt_\w+)\{([^}]*)\}", text, re.M):
        family = next((f for f in (name, re.sub(r"_(bucket|count|sum)$", "", name))
                       if f in families), None)
        if family is not None:
            families[family][1].update(k for k in re.findall(r'(\w+)="', labels) if k != "le")
    return families


def test_the_readmes_table_of_metrics_is_what_the_engine_serves(
        engine: EngineProcess, broker: Broker, database_url, topic_root, devices) -> None:
    """Ops build alerts and dashboards from the README's table: every metric in it is
    served, by that name, type and labels, and every metric served is in it."""
    engine.start().wait_ready()
    publish(broker.port, [(topic(topic_root, "OXI-0001", "telemetry"),
                           telemetry("OXI-0001", time.time() - 60, spo2=97)),
                          (topic(topic_root, "OXI-0001", "telemetry"), b"{"),
                          (topic(topic_root, "ALM-0001", "alarm"),
                           alarm("ALM-0001", time.time() - 1))])
    text = wait_for(lambda: (m := metrics(engine)).get(
        'vagt_messages_received_total{lane="bulk"}') == 2 and m.get(
        'vagt_messages_received_total{lane="alarm"}') == 1 and scrape(engine),
        what="the three messages, counted")
    table, serving = readme_table(), served(text)
    assert sorted(set(serving) - set(table)) == [], "served, not in the README's table"
    assert sorted(set(table) - set(serving)) == [], "in the README's table, not served"
    for name, (kind, labels) in serving.items():
        assert table[name][0] == kind, name
        if labels:   # a labelled family with no series yet shows none
            assert table[name][1] == labels, name
    # a series per device or topic would grow with the fleet (and hold what devices send)
    assert not any({"device", "device_id", "topic"} & labels for _, labels in table.values())
    assert "OXI-0001" not in text and "ALM-0001" not in text and topic_root not in text


def scrape(engine: EngineProcess) -> str:
    url = f"http://127.0.0.1:{engine.env['VAGT_METRICS_PORT']}/metrics"
    return str(urllib.request.urlopen(url, timeout=5).read().decode())


def test_every_thread_the_engine_keeps_running_has_its_crash_count_from_0(
        engine: EngineProcess) -> None:
    """`increase(vagt_thread_crashes_total[..]) > 0` sees a crash only on a series that was
    there before it: one that first appears at 1 increases by nothing, so a thread's first
    crash (the pruner's on an error nobody foresaw, say) would page no one."""
    engine.start().wait_ready()
    counted = metrics(engine)
    for thread in ("rules-timer", "fleet-refresh", "prune", "table-upkeep", "alert-timer",
                   "alert-delivery", "api"):
        assert counted.get(f'vagt_thread_crashes_total{{thread="{thread}"}}') == 0, thread


def test_each_lanes_refused_messages_and_database_errors_are_served_from_0(
        engine: EngineProcess) -> None:
    """A message processing failed on is a bug seen: the first one, on a series that first
    appears at 1, is no increase to an alert on `increase()`; as for a database away."""
    engine.start().wait_ready()
    counted = wait_for(lambda: (m := metrics(engine)).get(
        'vagt_messages_refused_total{lane="alarm"}') is not None and m,
        what="the alarm lane's process's counts", timeout=10)
    for lane in ("alarm", "bulk"):
        for name in ("vagt_messages_refused_total", "vagt_database_errors_total"):
            assert counted.get(f'{name}{{lane="{lane}"}}') == 0, (name, lane)
