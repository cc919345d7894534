"""Prometheus metrics of the engine, served at http://HOST:PORT/metrics.

Counters are incremented once per batch (`inc(n)`), labelled children are cached, and the
open-alert gauge is read from the database at scrape time, so it is true across processes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, RestrictedRegistry
from prometheus_client.samples import Sample

log = logging.getLogger("vagt.metrics")

# The alarm goal is 250 ms from publish to committed alert: resolve well around it. Up to
# minutes: a batch in hand while the database is away, a bulk commit near its
# transaction_timeout_s (120 s by default), would otherwise all be +Inf.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 120.0, 300.0)
# From seconds (an alarm claimed at once) to a day (a low-priority alert).
QUEUE_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600,
                 3 * 24 * 3600)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000)
# Every thread the engine keeps running (`vagt.threads.start_kept_running`): its crash count
# is served from 0, as `increase()` sees no crash on a series that first appears at 1. A
# thread started so needs its name here.
KEPT_RUNNING = ("rules-timer", "fleet-refresh", "prune", "table-upkeep", "alert-timer",
                "alert-delivery", "api")


class MetricsPortError(RuntimeError):
    """The metrics endpoint cannot listen where it is configured to; the message says where
    and which setting moves it."""


class MergingRegistry(CollectorRegistry):
    """A registry whose families of one name, from several collectors, come out as one: the
    alarm lane's process reports the same metrics as the engine (see `EngineMetrics.include`).
    A `name[]=...` query is merged too."""

    def __init__(self) -> None:
        # the other process's families have no names beforehand: asked at every scrape
        super().__init__(support_collectors_without_names=True)

    def collect(self) -> Iterable[Metric]:
        return merge_families(super().collect())

    def restricted_registry(self, names: Iterable[str]) -> RestrictedRegistry:
        return _MergingRestricted(names, self)


class _MergingRestricted(RestrictedRegistry):
    def collect(self) -> Iterable[Metric]:
        return merge_families(super().collect())


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else MergingRegistry()
        r = self.registry
        self.received = Counter(
            "vagt_messages_received", "MQTT messages the lane took from the broker and "
            "committed (a message the broker delivers again is taken again)", ["lane"],
            registry=r)
        self.skipped = Counter(
            "vagt_messages_skipped", "Copies of messages another lane reads (the bulk lane's "
            "of the alarm channel: it subscribes to every device topic), acknowledged with "
            "their batch and not counted as received", ["lane"], registry=r)
        self.decoded = Counter("vagt_messages_decoded",
                               "Messages decoded, attributed to a device and committed",
                               ["lane"], registry=r)
        self.dead_letters = Counter(
            "vagt_dead_letters", "Dead letters kept: messages that could not be used, stored "
            "with their bytes and reason (the same topic and bytes are kept once)", ["reason"],
            registry=r)
        self.dead_letters_again = Counter(
            "vagt_dead_letters_kept_before", "Messages that could not be used whose topic "
            "and bytes were kept as a dead letter before, so not again: the broker's "
            "redelivery (the engine stopped between commit and acknowledgement), a retained "
            "copy sent again at each subscribe (MQTT 3.1.1), the same bytes sent again",
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
        self.latency = BatchHistogram("vagt_received_to_committed_seconds",
                                      "From a message's arrival at vagt to its commit",
                                      "lane", LATENCY_BUCKETS)
        r.register(self.latency)
        self.alerts_opened = Counter("vagt_alerts_opened", "Alerts opened", ["queue"],
                                     registry=r)
        self.alerts_cleared = Counter("vagt_alerts_auto_resolved",
                                      "Alerts resolved because their condition cleared",
                                      registry=r)
        self.bad_readings = Counter("vagt_bad_readings",
                                    "Readings a validity rule judged implausible for the model",
                                    ["vendor", "model", "metric"], registry=r)
        self.rule_replays = Counter(
            "vagt_rule_replays", "Devices whose rows came after newer ones (another engine "
            "committed those first, or the device flushed its buffer late) and were evaluated "
            "again in order from an earlier state", ["lane"], registry=r)
        self.rule_too_late = Counter(
            "vagt_rule_late_rows_skipped", "Devices whose rows came after newer ones and too "
            "late to evaluate again in order (older than the state kept): the rules skipped "
            "them", ["lane"], registry=r)
        self.rule_before_deployment = Counter(
            "vagt_rule_rows_before_deployment", "Devices whose rows in a batch were from more "
            "than an hour before their deployment (the last citizen's, kept on the device): "
            "stored, the rules skipped them", ["lane"], registry=r)
        self.messages_refused = Counter(
            "vagt_messages_refused", "Messages whose processing failed (a bug, or data the "
            "database refused): kept as dead letters (reason processing_failed), with an alert",
            ["lane"], registry=r)
        self.db_errors = Counter(
            "vagt_database_errors", "The lane's transactions that failed on the database (away, "
            "or cut for not answering) and were tried again: one per try", ["lane"],
            registry=r)
        self.thread_crashes = Counter(
            "vagt_thread_crashes", "Unexpected errors (bugs) that ended a background thread of "
            f"the engine ({', '.join(KEPT_RUNNING)}); it was started again",
            ["thread"], registry=r)
        for thread in KEPT_RUNNING:
            self.thread_crashes.labels(thread)   # 0 from the start: alert on any increase
        self.rule_ticks = Counter(
            "vagt_rule_ticks", "Rule timer ticks (deadlines, and the absence sweep in the "
            "process holding its lock): done (committed) or failed (the database did not "
            "answer; the next tick tries again)", ["outcome"], registry=r)
        for outcome in ("done", "failed"):
            self.rule_ticks.labels(outcome)
        self.rule_tick_done_at = Gauge(
            "vagt_rule_tick_last_done_timestamp_seconds", "When the rule timer last committed "
            "a tick (Unix time; before the first, when it started): missed doses and silent "
            "devices are found only while it moves. Ticks wait while a lane drains a backlog, "
            "at most 10 minutes", registry=r)
        self.rule_ticks_deferred = Counter(
            "vagt_rule_ticks_deferred", "Rule timer ticks held back while a lane drained a "
            "backlog (deadlines wait until the queued messages are in)", registry=r)
        self.backlog_messages = Counter(
            "vagt_backlog_messages", "Messages committed in batches that were part of a "
            "backlog (mostly older than two minutes by their devices' clocks, or more waiting "
            "behind them): while it grows, the lane is catching up, with fuller batches",
            ["lane"], registry=r)
        self.child_up = Gauge(
            "vagt_child_process_up", "1 while the engine's child process runs: the alarm "
            "lane (alarm_lane), the bulk lane's MQTT session (bulk_receiver)", ["process"],
            registry=r)
        self.child_restarts = Counter(
            "vagt_child_process_restarts",
            "Times the engine's child process ended unasked and was started again",
            ["process"], registry=r)
        self.batch_in_hand = Gauge(
            "vagt_lane_batch_in_hand_seconds", "Age of the oldest batch the lane took from "
            "the broker and has not yet committed and acknowledged (0 with none): it grows "
            "while the database does not answer; alert when it passes a minute", ["lane"],
            registry=r)
        self.mqtt_connected = Gauge("vagt_mqtt_connected", "1 while the lane's session is up",
                                    ["lane"], registry=r)
        self.subscriptions_refused = Gauge(
            "vagt_mqtt_subscriptions_refused", "Topic filters the broker refused the lane's "
            "session at its last subscribe (its ACL does not let the engine's user read "
            "them; the log says what to change). Above 0 on the bulk lane: it reads its two "
            "channels only, and a message on any other device topic is dropped at the broker",
            ["lane"], registry=r)
        self.reading_paused = Gauge(
            "vagt_mqtt_reading_paused", "1 while the lane's session reads nothing from the "
            "broker: it holds mqtt.receive_maximum messages the engine has not committed and "
            "acknowledged (the broker keeps the rest); a lane that stays at 1 is behind or "
            "stalled", ["lane"], registry=r)
        self._paused_seconds = _PausedSeconds()
        r.register(self._paused_seconds)
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
        self.unacknowledged_breaches = Counter(
            "vagt_alert_acknowledge_breaches",
            "Claimed alerts not acknowledged within their time to acknowledge (escalated)",
            ["queue"], registry=r)
        self.deliveries = Counter("vagt_alert_deliveries",
                                  "Outbox delivery tries by target and outcome "
                                  "(delivered, failed: retried later, dead: gave up)",
                                  ["target", "outcome"], registry=r)

    def api_registry(self) -> CollectorRegistry:
        """What `vagt api` run alone serves on its /metrics: the histograms of its operators'
        claims and resolutions, and nothing of the engine's (a rule timer that never ticked
        there would look stopped, and its counters would say 0 for what it never does)."""
        r = CollectorRegistry()
        r.register(self.time_to_claim)
        r.register(self.time_to_resolve)
        return r

    # -- vagt.alerts.observe.AlertObserver ---------------------------------------------------

    def claimed(self, queue: str, seconds: float) -> None:
        self.time_to_claim.labels(queue).observe(max(seconds, 0.0))

    def resolved(self, queue: str, seconds: float) -> None:
        self.time_to_resolve.labels(queue).observe(max(seconds, 0.0))

    def breached(self, queue: str) -> None:
        self.breaches.labels(queue).inc()

    def unacknowledged(self, queue: str) -> None:
        self.unacknowledged_breaches.labels(queue).inc()

    def delivery(self, target: str, outcome: str) -> None:
        self.deliveries.labels(target, outcome).inc()

    def watch_queue(self, query: Callable[[], Iterable[tuple[str, int, str, int]]]) -> None:
        """Export `vagt_queue_alerts{queue,priority,status}` from `query()` at every scrape."""
        self.registry.register(_Scraped("queue_alerts", query, _queue_alerts))

    def watch_open_alerts(self, query: Callable[[], Iterable[tuple[str, int]]]) -> None:
        """Export `vagt_open_alerts{queue}` from `query()` at every scrape."""
        self.registry.register(_Scraped("open_alerts", query, _open_alerts))

    def watch_deliveries(self, query: Callable[[], Iterable[tuple[str, bool, int, float | None]]]
                         ) -> None:
        """Export `vagt_alert_deliveries_waiting{target,configured}` and
        `vagt_alert_delivery_oldest_waiting_seconds{target,configured}` from `query()`
        (target, configured, waiting, age of the oldest by the database's clock) at every
        scrape: a receiver that is down is tried until it is back, and this is how ops see
        it; what waits for a target no longer configured (`configured="false"`) nothing
        sends."""
        def stamped() -> list[tuple[Any, ...]]:
            read_at = time.monotonic()
            return [(*row, read_at) for row in query()]
        self.registry.register(_Scraped("deliveries_waiting", stamped, _waiting_deliveries))

    def watch_fleet(self, counts: Callable[[], tuple[dict[str, int],
                                                      dict[tuple[str, str], int]]]) -> None:
        """Export `vagt_devices{status}` and `vagt_devices_online{type,municipality}`."""
        self.registry.register(_Fleet(counts))

    def watch_reading(self, lane: str, paused: Callable[[], bool],
                      paused_s: Callable[[], float]) -> None:
        """Export `vagt_mqtt_reading_paused{lane}` and
        `vagt_mqtt_reading_paused_seconds_total{lane}` from the lane's session at every
        scrape (the bulk lane's stops reading at its Receive Maximum)."""
        self.reading_paused.labels(lane).set_function(lambda: 1.0 if paused() else 0.0)
        self._paused_seconds.lanes[lane] = paused_s

    def thread_crashed(self, thread: str) -> None:
        """`vagt.threads.keep_running`'s on_crash: one more for `thread`."""
        self.thread_crashes.labels(thread).inc()

    def include(self, families: Callable[[], Iterable[Metric]],
                incarnation: Callable[[], int] | None = None) -> None:
        """Serve another process's metrics with ours, each scrape (same names are merged).
        `incarnation`: which start of that process answers (`ChildProcess.incarnation`):
        its counters go on from where the last one left them (`_CarriedOver`)."""
        self.registry.register(_Foreign(families if incarnation is None
                                        else _CarriedOver(families, incarnation)))

    def serve(self, host: str, port: int) -> Any:
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise MetricsPortError(
                f"cannot serve metrics on {host}:{port}: {e.strerror or e}; set metrics_port "
                "(VAGT_METRICS_PORT) to a free port, or to 0 for no metrics endpoint") from e
        log.info("event=metrics_listening host=%s port=%d", host, port)
        return server


class _PausedSeconds(Collector):
    """`vagt_mqtt_reading_paused_seconds_total{lane}`, read from each lane's session."""

    def __init__(self) -> None:
        self.lanes: dict[str, Callable[[], float]] = {}

    def collect(self) -> Iterable[CounterMetricFamily]:
        if not self.lanes:
            return
        c = CounterMetricFamily(
            "vagt_mqtt_reading_paused_seconds", "Time the lane's session read nothing from "
            "the broker because it held mqtt.receive_maximum messages not yet acknowledged: "
            "its rate is the share of the time the engine, not the broker, set the pace",
            labels=["lane"])
        for lane, seconds in sorted(self.lanes.items()):
            c.add_metric([lane], seconds())
        yield c

    def describe(self) -> Iterable[CounterMetricFamily]:
        return []


class _Foreign(Collector):
    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families()


Key = tuple[str, tuple[tuple[str, str], ...]]


class _CarriedOver:
    """A child process's counters and histograms as one series across its restarts.

    Its series are summed with the engine's (`merge_families`): a child started again from
    0 would take the sum down, and Prometheus reads a counter that goes down as a reset
    from 0, so `increase()` would count the engine's whole total once more (a burst of dead
    letters or alerts that never came). What the child had counted at the last scrape
    before its restart is added to the next one's, and served while no child answers; what
    it counted after that scrape is lost (a counter may undercount by a scrape interval,
    never overcount). Its gauges are served only while it answers."""

    def __init__(self, families: Callable[[], Iterable[Metric]],
                 incarnation: Callable[[], int]) -> None:
        self._families, self._incarnation = families, incarnation
        self._seen = -1                         # the incarnation `_last` is of
        self._last: dict[Key, Sample] = {}      # its counters' samples at the last scrape
        self._carried: dict[Key, Sample] = {}   # what the ones before it had counted
        self._kinds: dict[str, Metric] = {}     # each counter and histogram family, empty
        self._lock = threading.Lock()

    def __call__(self) -> list[Metric]:
        with self._lock:
            before = self._incarnation()
            families = list(self._families())
            if self._incarnation() != before:   # restarted while asked: as if no answer
                families = []
            if families and before != self._seen:
                self._carried = self._served()
                self._last, self._seen = {}, before
            kept = [f for f in families if f.type not in ("counter", "histogram")]
            for f in families:
                if f.type in ("counter", "histogram"):
                    self._kinds.setdefault(f.name, Metric(f.name, f.documentation, f.type,
                                                          f.unit))
                    self._last.update(((s.name, tuple(sorted(s.labels.items()))), s)
                                      for s in f.samples if not s.name.endswith("_created"))
            return kept + self._counters()

    def _served(self) -> dict[Key, Sample]:
        """What the child counted since the engine started: the last answer's and those
        carried from before."""
        out = dict(self._carried)
        for key, s in self._last.items():
            old = out.get(key)
            out[key] = s if old is None else s._replace(value=old.value + s.value)
        return out

    def _counters(self) -> list[Metric]:
        by_name = {name: Metric(m.name, m.documentation, m.type, m.unit)
                   for name, m in self._kinds.items()}
        for (name, _), s in self._served().items():   # in the child's order
            family = by_name.get(_family_of(name))
            if family is not None:
                family.samples.append(s)
        return list(by_name.values())


def _family_of(sample: str) -> str:
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if sample.endswith(suffix):
            return sample.removesuffix(suffix)
    return sample


class _Scraped(Collector):
    """Gauges made from a database query at every scrape, and `vagt_scrape_query_ok{what}`.
    A scrape whose query fails (the database is away, the pool busy) serves the last values
    read, with `vagt_scrape_query_ok` 0, and logs `event=<what>_query_failed`: an alert on a
    gauge (events waiting long for the call centre) goes on firing, not silent."""

    def __init__(self, what: str, query: Callable[[], Iterable[tuple[Any, ...]]],
                 gauges: Callable[[list[tuple[Any, ...]]], list[GaugeMetricFamily]]) -> None:
        self._what, self._query, self._gauges = what, query, gauges
        self._last: list[tuple[Any, ...]] = []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        ok = GaugeMetricFamily("vagt_scrape_query_ok", "1 if the query behind a gauge read "
                               "the database at this scrape, 0 if it served the last values",
                               labels=["what"])
        try:
            self._last = list(self._query())
            ok.add_metric([self._what], 1.0)
        except Exception as e:  # a scrape must not fail because the database is away
            log.warning("event=%s_query_failed error=%s", self._what, type(e).__name__)
            ok.add_metric([self._what], 0.0)
        return [*self._gauges(self._last), ok]

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


def _open_alerts(rows: list[tuple[Any, ...]]) -> list[GaugeMetricFamily]:
    g = GaugeMetricFamily("vagt_open_alerts",
                          "Alerts not yet resolved (open, claimed or acknowledged)",
                          labels=["queue"])
    for queue, n in rows:
        g.add_metric([queue], float(n))
    return [g]


def _queue_alerts(rows: list[tuple[Any, ...]]) -> list[GaugeMetricFamily]:
    g = GaugeMetricFamily("vagt_queue_alerts",
                          "Alerts not resolved, by queue, priority and status "
                          "(open, claimed, acknowledged, suppressed)",
                          labels=["queue", "priority", "status"])
    for queue, priority, status, n in rows:
        g.add_metric([queue, str(priority), status], float(n))
    return [g]


def _waiting_deliveries(rows: list[tuple[Any, ...]]) -> list[GaugeMetricFamily]:
    waiting = GaugeMetricFamily("vagt_alert_deliveries_waiting",
                                "Alert events waiting to be delivered to a target (neither "
                                "delivered nor dead); configured=\"false\": the target is no "
                                "longer in the policy and nothing sends them",
                                labels=["target", "configured"])
    oldest = GaugeMetricFamily("vagt_alert_delivery_oldest_waiting_seconds",
                               "Age of the oldest event waiting for a target (0: none waits)",
                               labels=["target", "configured"])
    now = time.monotonic()   # the age at this scrape: it grows while the database is away
    for target, configured, n, age, read_at in rows:
        labels = [target, "true" if configured else "false"]
        waiting.add_metric(labels, float(n))
        oldest.add_metric(labels, 0.0 if age is None else age + now - read_at)
    return [waiting, oldest]


class _Fleet(Collector):
    def __init__(self, counts: Callable[[], tuple[dict[str, int],
                                                  dict[tuple[str, str], int]]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        by_status, online = self._counts()
        g = GaugeMetricFamily("vagt_devices", "Registered devices by lifecycle status",
                              labels=["status"])
        for status, n in sorted(by_status.items()):
            g.add_metric([status], float(n))
        yield g
        o = GaugeMetricFamily("vagt_devices_online",
                              "Devices heard from within two heartbeat intervals of their model",
                              labels=["type", "municipality"])
        for (type_, place), n in sorted(online.items()):
            o.add_metric([type_, place], float(n))
        yield o

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class BatchHistogram(Collector):
    """A histogram that takes a whole batch of observations in one numpy call.

    prometheus-client's Histogram.observe() costs a lock and a bucket search per value;
    per message, on the hot path, that was measurable. Same exposition, one label.
    """

    def __init__(self, name: str, documentation: str, label: str,
                 buckets: Sequence[float]) -> None:
        self._name, self._doc, self._label = name, documentation, label
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._series: dict[str, tuple[npt.NDArray[np.int64], list[float]]] = {}
        self._lock = threading.Lock()

    def observe_many(self, label_value: str, values: npt.NDArray[np.float64]) -> None:
        if len(values) == 0:
            return
        # bucket i counts values <= bound i; the last slot is +Inf
        slots = np.bincount(np.searchsorted(self._bounds, values, side="left"),
                            minlength=len(self._bounds) + 1)
        with self._lock:
            counts, total = self._series.setdefault(
                label_value, (np.zeros(len(self._bounds) + 1, dtype=np.int64), [0.0]))
            counts += slots
            total[0] += float(values.sum())

    def collect(self) -> Iterable[HistogramMetricFamily]:
        h = HistogramMetricFamily(self._name, self._doc, labels=[self._label])
        with self._lock:
            series = [(k, c.copy(), t[0]) for k, (c, t) in self._series.items()]
        for value, counts, total in series:
            cumulative = np.cumsum(counts).tolist()
            buckets = [(_le(b), float(n)) for b, n in zip(self._bounds.tolist(), cumulative)]
            buckets.append(("+Inf", float(cumulative[-1])))
            h.add_metric([value], buckets, total)
        yield h

    def describe(self) -> Iterable[HistogramMetricFamily]:
        return [HistogramMetricFamily(self._name, self._doc, labels=[self._label])]


def _le(bound: float) -> str:
    return repr(float(bound))


def merge_families(families: Iterable[Metric]) -> list[Metric]:
    """Families of one name (the engine's and its alarm lane process's) as one: a series
    both have is summed (a counter of each; `_created` takes the earlier). A family that
    comes once is passed on as it is."""
    by_name: dict[str, list[Metric]] = {}
    for fam in families:
        by_name.setdefault(fam.name, []).append(fam)
    return [fams[0] if len(fams) == 1 else _merged(fams) for fams in by_name.values()]


def _merged(families: list[Metric]) -> Metric:
    merged: dict[str, Metric] = {}
    where: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], int]] = {}
    for fam in families:
        into = merged.get(fam.name)
        if into is None:
            into = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            where[fam.name] = {}
        at = where[fam.name]
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            j = at.get(key)
            if j is None:
                at[key] = len(into.samples)
                into.samples.append(s)
            else:
                old = into.samples[j]
                value = min(old.value, s.value) if s.name.endswith("_created") \
                    else old.value + s.value
                into.samples[j] = old._replace(value=value)
    [only] = merged.values()
    return only
