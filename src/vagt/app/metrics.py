"""Prometheus metrics of the engine, served at http://HOST:PORT/metrics.

Counters are incremented once per batch (`inc(n)`), labelled children are cached, and the
open-alert gauge is read from the database at scrape time, so it is true across processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("vagt.metrics")

# The alarm goal is 250 ms from publish to committed alert: resolve well around it.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# From seconds (an alarm claimed at once) to a day (a low-priority alert).
QUEUE_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600,
                 3 * 24 * 3600)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000)


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.received = Counter("vagt_messages_received", "MQTT messages taken for processing",
                                ["lane"], registry=r)
        self.decoded = Counter("vagt_messages_decoded",
                               "Messages decoded, attributed to a device and committed",
                               ["lane"], registry=r)
        self.dead_letters = Counter("vagt_dead_letters", "Messages kept as dead letters",
                                    ["reason"], registry=r)
        self.readings = Counter("vagt_readings_stored", "New readings committed", registry=r)
        self.events = Counter("vagt_events_stored", "New events committed", registry=r)
        self.acked = Counter("vagt_messages_acked", "Messages acknowledged to the broker",
                             ["lane"], registry=r)
        self.batch_size = Histogram("vagt_batch_size_messages", "Messages per committed batch",
                                    ["lane"], buckets=BATCH_BUCKETS, registry=r)
        self.commit_seconds = Histogram("vagt_batch_commit_seconds",
                                        "Time to process and commit one batch",
                                        ["lane"], buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("vagt_received_to_committed_seconds",
                                 "From a message's arrival at vagt to its commit",
                                 ["lane"], buckets=LATENCY_BUCKETS, registry=r)
        self.alerts_opened = Counter("vagt_alerts_opened", "Alerts opened", ["queue"],
                                     registry=r)
        self.alerts_cleared = Counter("vagt_alerts_auto_resolved",
                                      "Alerts resolved because their condition cleared",
                                      registry=r)
        self.db_errors = Counter("vagt_database_errors",
                                 "Batches whose commit failed and was retried", ["lane"],
                                 registry=r)
        self.mqtt_connected = Gauge("vagt_mqtt_connected", "1 while the lane's session is up",
                                    ["lane"], registry=r)
        self.time_to_claim = Histogram("vagt_alert_time_to_claim_seconds",
                                       "From an alert becoming claimable to its claim",
                                       ["queue"], buckets=QUEUE_BUCKETS, registry=r)
        self.time_to_resolve = Histogram("vagt_alert_time_to_resolve_seconds",
                                         "From an alert's creation to its resolution by an "
                                         "operator", ["queue"], buckets=QUEUE_BUCKETS,
                                         registry=r)
        self.breaches = Counter("vagt_alert_claim_breaches",
                                "Alerts not claimed within their time to claim (escalated)",
                                ["queue"], registry=r)
        self.deliveries = Counter("vagt_alert_deliveries",
                                  "Outbox delivery tries by target and outcome "
                                  "(delivered, failed: retried later, dead: gave up)",
                                  ["target", "outcome"], registry=r)

    # -- vagt.alerts.observe.AlertObserver ---------------------------------------------------

    def claimed(self, queue: str, seconds: float) -> None:
        self.time_to_claim.labels(queue).observe(max(seconds, 0.0))

    def resolved(self, queue: str, seconds: float) -> None:
        self.time_to_resolve.labels(queue).observe(max(seconds, 0.0))

    def breached(self, queue: str) -> None:
        self.breaches.labels(queue).inc()

    def delivery(self, target: str, outcome: str) -> None:
        self.deliveries.labels(target, outcome).inc()

    def watch_queue(self, query: Callable[[], Iterable[tuple[str, int, str, int]]]) -> None:
        """Export `vagt_queue_alerts{queue,priority,status}` from `query()` at every scrape."""
        self.registry.register(_QueueAlerts(query))

    def watch_open_alerts(self, query: Callable[[], Iterable[tuple[str, int]]]) -> None:
        """Export `vagt_open_alerts{queue}` from `query()` at every scrape."""
        self.registry.register(_OpenAlerts(query))

    def serve(self, host: str, port: int) -> Any:
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("event=metrics_listening host=%s port=%d", host, port)
        return server


class _OpenAlerts(Collector):
    def __init__(self, query: Callable[[], Iterable[tuple[str, int]]]) -> None:
        self._query = query

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = GaugeMetricFamily("vagt_open_alerts",
                              "Alerts not yet resolved (open, claimed or acknowledged)",
                              labels=["queue"])
        try:
            rows = list(self._query())
        except Exception as e:  # a scrape must not fail because the database is away
            log.warning("event=open_alerts_query_failed error=%s", type(e).__name__)
            rows = []
        for queue, n in rows:
            g.add_metric([queue], float(n))
        yield g

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class _QueueAlerts(Collector):
    def __init__(self, query: Callable[[], Iterable[tuple[str, int, str, int]]]) -> None:
        self._query = query

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = GaugeMetricFamily("vagt_queue_alerts",
                              "Alerts not resolved, by queue, priority and status "
                              "(open, claimed, acknowledged, suppressed)",
                              labels=["queue", "priority", "status"])
        try:
            rows = list(self._query())
        except Exception as e:  # a scrape must not fail because the database is away
            log.warning("event=queue_alerts_query_failed error=%s", type(e).__name__)
            rows = []
        for queue, priority, status, n in rows:
            g.add_metric([queue, str(priority), status], float(n))
        yield g

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []
