"""The whole performance picture in one run, printed as a table (issue 6).

Every figure is measured here, in this run, against its own baseline on the same machine:

1. backlog drain: a backlog queued at the broker for the engine's persistent session, drained
   by the engine (decode, devices, store, rules, alerts, commit, acknowledge) and by a bare
   paho consumer that only counts; messages per second and the ratio;
2. alarm latency: alarms published while the engine drains that backlog, from publish to the
   committed alert (seen by polling the database every 2 ms); p50 and p99;
3. scale-out: two engine processes sharing the subscription against one, and whether the
   alerts they open are the same; two bare consumers sharing it against one (the most a
   second engine could add from this broker here); on this machine's cores as they come, and
   again with a core per engine (one engine confined to one core, two engines to one core each: the cores
   doubled with the engines, which is what adding an engine on a machine of its own does);
4. against one INSERT and commit per message;
5. memory: the engine's peak resident memory with every device registered, under load;
6. where the time goes: a py-spy profile of the engine split into decode, rules, database,
   MQTT and the rest (with `--profile`; needs `pip install py-spy`).

The engine runs as `vagt run` in its own process, as in production, so the publisher and the
pollers here do not share its interpreter. Usage:

    .venv/bin/python -m benchmarks.suite [--messages 200000] [--devices 100000] [--profile]
        [--split] [--rounds 3] [--drain-only | --per-core-only]
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psycopg
from benchmarks import broker_share
from benchmarks.drain import (
    BULK_CHANNELS,
    PG_ADMIN,
    RECEIVE_MAXIMUM,
    drain_bare,
    drain_insert_per_message,
    drop_database,
    fresh_database,
    make_backlog,
    own_broker,
    publish_backlog,
    session,
    v5_client,
)
from benchmarks.split import drain_split
from tests.support import Broker, free_port

from vagt.sim import SimDevice, make_fleet

Message = tuple[str, bytes]
Traffic = Callable[[str, int, list[str]], list[Message]]


# -- traffic ------------------------------------------------------------------------------------

def register_fleet(url: str, fleet: list[SimDevice]) -> None:
    """The simulated fleet, deployed, COPYed straight into the registry's table (the
    registry's import checks and audits every row: ~6 s per 100,000, not what is measured)."""
    with psycopg.connect(url) as conn:
        with conn.cursor().copy("COPY devices (device_id, vendor, model, type, municipality, "
                                "status, attributes) FROM STDIN") as cp:
            for d in fleet:
                cp.write_row((d.device_id, d.vendor, d.model, d.type, d.municipality,
                              "deployed", orjson.dumps({"gateway_id": d.gateway}).decode()
                              if d.gateway else "{}"))


def pipeline_alone(url: str, messages: list[Message], batch: int = 0) -> float:
    """Messages per second through `Pipeline.process` and commit, in one thread, with the
    engine's defaults (its batch size unless `batch`): what is left of the engine without
    MQTT."""
    from vagt.app import heap, store
    from vagt.app.config import IngestConfig
    from vagt.app.pipeline import Pipeline
    from vagt.ingest.model import RawMessage
    from vagt.rules import load_rules

    root = messages[0][0].split("/dev/")[0]
    batch = batch or IngestConfig().bulk_batch_max
    thresholds = gc.get_threshold()
    with psycopg.connect(url) as conn:
        store.prepare_connection(conn)
        pipeline = Pipeline.load(conn, topic_root=root, rules=load_rules(None), clock=time.time)
        pipeline.restore(conn)
        conn.commit()
        raw = [RawMessage(t, p, time.time()) for t, p in messages]
        heap.settle()   # as the engine's process does after start-up
        try:
            start = time.perf_counter()
            for k in range(0, len(raw), batch):
                out = pipeline.process(conn, raw[k:k + batch])
                conn.commit()
                pipeline.after_commit(out)
            return len(raw) / (time.perf_counter() - start)
        finally:   # this process goes on to measure other things
            gc.unfreeze()
            gc.set_threshold(*thresholds)


# -- engines in their own processes --------------------------------------------------------------

@dataclass
class EngineProc:
    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path
    ready_at: float = 0.0

    def _sample(self, name: str, labels: str) -> float:
        """The value of the sample `name{labels}` (labels as exposed, in their order); 0 if
        the engine does not answer or has none."""
        return self._samples(name, [labels])[0]

    def _samples(self, name: str, labels: list[str]) -> list[float]:
        """The values of samples of `name`, one per `labels`, from one scrape (values of two
        scrapes would not add up: more alarms came between them)."""
        try:
            # only that sample's family: a whole scrape 4 times a second cost the engine 5 %
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics"
                                        f"?name[]={name}", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return [0.0] * len(labels)
        found = (re.search(rf"^{name}{{{re.escape(one)}}} (\S+)$", text, re.M)
                 for one in labels)
        return [float(m.group(1)) if m else 0.0 for m in found]

    def scrape(self, name: str, lane: str) -> float:
        return self._sample(name, f'lane="{lane}"')

    def ticks_done(self) -> float:
        return self._sample("vagt_rule_ticks_total", 'outcome="done"')

    def share_within(self, name: str, lane: str, le: str) -> tuple[float, float]:
        """Of a histogram's observations for `lane`: how many in all, and the share of them
        at most `le` (a bucket bound as exposed, e.g. "0.25")."""
        total, within = self._samples(f"{name}_bucket", [f'lane="{lane}",le="+Inf"',
                                                         f'lane="{lane}",le="{le}"'])
        return total, within / total if total else 0.0

    def children(self) -> list[int]:
        pid = self.process.pid
        try:
            return [int(c) for c in
                    Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    @staticmethod
    def child_name(pid: int) -> str:
        """The child's part, from its command line (`vagt.app.receiver`, ...)."""
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return ""
        for key, name in (("receiver", "receiver"), ("alarm", "alarm lane")):
            if key in cmd:
                return name
        return ""

    def peak_rss_mb(self) -> list[float]:
        """Peak resident memory of the engine and of each of its child processes (the alarm
        lane, the bulk lane's receiver)."""
        return self.memory_mb("VmHWM")

    def memory_mb(self, field: str = "VmRSS") -> list[float]:
        """A memory figure of /proc/PID/status (`VmRSS`: resident now, `VmHWM`: its peak) of
        the engine and of each of its child processes, MB (NaN for one that is gone)."""
        found = []
        for p in [self.process.pid, *self.children()]:
            try:
                m = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text(),
                              re.M)
            except OSError:
                m = None
            found.append(int(m.group(1)) / 1024 if m else float("nan"))
        return found


@contextmanager
def engines(count: int, *, broker: Broker, root: str, url: str, client_ids: list[str],
            share_group: str, workdir: Path,
            cores: list[set[int]] | None = None, wrap: tuple[str, ...] = (),
            env: dict[str, str] | None = None) -> Iterator[list[EngineProc]]:
    """`count` engines as `vagt run`; with `cores`, engine i and the child processes it starts
    run only on cores[i]. Each one's database connections are named after its client id
    (PGAPPNAME), so that `Pinning` finds their backends. `wrap`: the interpreter's arguments
    before the engine's module (`-m benchmarks.memtrace DIR 0`: run it under a probe); `env`:
    variables added to the engines' environment."""
    procs: list[EngineProc] = []
    try:
        for i, cid in enumerate(client_ids[:count]):
            port = free_port()
            log = workdir / f"{cid}.log"
            environment = {**os.environ, **(env or {}), "VAGT_DATABASE_URL": url,
                           "VAGT_MQTT_URL": broker.url, "VAGT_MQTT_CLIENT_ID": cid,
                           "VAGT_MQTT_TOPIC_ROOT": root, "VAGT_MQTT_SHARE_GROUP": share_group,
                           "VAGT_METRICS_PORT": str(port), "PGAPPNAME": cid}
            p = subprocess.Popen([sys.executable, *wrap, "-m", "vagt.app.cli", "run"],
                                 env=environment, stdout=subprocess.DEVNULL,
                                 stderr=log.open("wb"))
            if cores:   # before it starts its children: they inherit it
                os.sched_setaffinity(p.pid, cores[i])
            procs.append(EngineProc(p, port, log))
        deadline = time.monotonic() + 120
        for e in procs:
            while "event=engine_ready" not in e.log.read_text(errors="replace"):
                if e.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"engine did not start; see {e.log}")
                time.sleep(0.01)
            e.ready_at = time.perf_counter()
        yield procs
    finally:
        for e in procs:
            if e.process.poll() is None:
                e.process.send_signal(signal.SIGTERM)
        for e in procs:
            try:
                e.process.wait(60)
            except subprocess.TimeoutExpired:
                e.process.kill()


def prepare_sessions(broker: Broker, root: str, client_ids: list[str], share_group: str) -> None:
    """The engines' persistent sessions exist before the backlog is published, as in
    production after an outage: the broker queues for them."""
    prefix = f"$share/{share_group}/" if share_group else ""
    for cid in client_ids:
        session(broker.port, f"{cid}-bulk", [f"{prefix}{root}/dev/+/{ch}"
                                             for ch in BULK_CHANNELS])
        session(broker.port, f"{cid}-alarm", [f"{prefix}{root}/dev/+/alarm"])


def cpu_times() -> tuple[float, float]:
    """The machine's (total, idle) CPU time so far, from /proc/stat (all cores)."""
    v = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(v), v[3] + v[4]   # idle + iowait


def busy_since(start: tuple[float, float]) -> float:
    """The share of the machine's CPU time used since `start` (everything on it)."""
    total, idle = cpu_times()
    return 1.0 - (idle - start[1]) / max(total - start[0], 1e-9)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _postgres_pids() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().startswith("postgres"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _postgres_part(pid: int) -> str:
    """A PostgreSQL process's part: serving a connection, or autovacuum and the server's
    own writers (checkpointer, background writer, WAL writer)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return "PostgreSQL"
    if "autovacuum" in title:
        return "PostgreSQL autovacuum"
    if any(w in title for w in ("checkpointer", "background writer", "walwriter")):
        return "PostgreSQL writers"
    return "PostgreSQL"


@dataclass
class CpuSplit:
    """CPU seconds per process (the engines, each child of theirs, PostgreSQL's processes,
    the broker) over a window: where the machine's CPU went while the engines drained. A
    process that starts within the window (a child starting late, a new PostgreSQL backend)
    is counted whole."""

    procs: list[EngineProc]
    broker: Broker
    start: dict[int, float] = field(default_factory=dict)

    @classmethod
    def begin(cls, procs: list[EngineProc], broker: Broker) -> CpuSplit:
        split = cls(procs, broker)
        split.start = {pid: _cpu_seconds(pid) for pid in split._labels()}
        return split

    def _labels(self) -> dict[int, str]:
        labels = {}
        for e in self.procs:
            labels[e.process.pid] = "engine"
            for child in e.children():
                labels[child] = e.child_name(child) or "other child"
        for pid in _postgres_pids():
            labels[pid] = _postgres_part(pid)
        if self.broker.process:
            labels[self.broker.process.pid] = "broker"
        return labels

    def seconds(self) -> dict[str, float]:
        used: dict[str, float] = collections.defaultdict(float)
        for pid, label in self._labels().items():
            used[label] += max(0.0, _cpu_seconds(pid) - self.start.get(pid, 0.0))
        return dict(used)


class Pinning:
    """While it runs: each engine, its children and the PostgreSQL backends serving it (found
    by application name) on the cores given for it; the broker and PostgreSQL's other
    processes (its writers, autovacuum) on `shared`. Pinned again every 0.2 s, since a child
    or a pooled connection may start late. At the end, PostgreSQL and the broker may run on
    every core again."""

    def __init__(self, engines: list[tuple[EngineProc, str, set[int]]], broker: Broker,
                 shared: set[int]) -> None:
        self.engines, self.broker, self.shared = engines, broker, shared
        self.everywhere = os.sched_getaffinity(0)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.conn = psycopg.connect(PG_ADMIN, autocommit=True)

    def __enter__(self) -> Pinning:
        self._pin()   # at once, before the drain gets going; then again and again
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join()
        self.conn.close()
        for pid in [*_postgres_pids(), *self._broker()]:
            _pin(pid, self.everywhere)

    def _broker(self) -> list[int]:
        return [self.broker.process.pid] if self.broker.process else []

    def _run(self) -> None:
        while not self.done.wait(0.2):
            self._pin()

    def _pin(self) -> None:
        backends = self.conn.execute(
            "SELECT pid, application_name FROM pg_stat_activity "
            "WHERE application_name = ANY(%s)", [[cid for _, cid, _ in self.engines]]).fetchall()
        cores_of = {cid: cores for _, cid, cores in self.engines}
        theirs = {int(pid): cores_of[name] for pid, name in backends}
        for e, _, cores in self.engines:
            for pid in [e.process.pid, *e.children()]:
                theirs[pid] = cores
        for pid in [*_postgres_pids(), *self._broker()]:
            theirs.setdefault(pid, self.shared)
        for pid, cores in theirs.items():
            _pin(pid, cores)


def _pin(pid: int, cores: set[int]) -> None:
    with suppress(OSError):   # it has exited
        os.sched_setaffinity(pid, cores)


def cpu_split_figure(used: dict[str, float], messages: int) -> str:
    """CPU per 1,000 messages, by process."""
    total = sum(used.values())
    parts = ", ".join(f"{k} {1000 * v / messages * 1000:.0f}"
                      for k, v in sorted(used.items(), key=lambda kv: -kv[1]))
    return f"{1000 * total / messages * 1000:.0f} ms per 1,000 messages: {parts}"


def wait_acked(procs: list[EngineProc], n: int, timeout: float = 1800) -> float:
    """Seconds from the first engine being ready until `n` bulk messages are acknowledged."""
    start = min(e.ready_at for e in procs)
    deadline = time.monotonic() + timeout
    while True:
        acked = sum(e.scrape("vagt_messages_acked_total", "bulk") for e in procs)
        if acked >= n:
            return time.perf_counter() - start
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {acked:.0f} of {n} acknowledged in {timeout} s")
        if any(e.process.poll() is not None for e in procs):
            raise RuntimeError("an engine exited during the drain; see its log")
        time.sleep(0.25)  # a scrape costs the engine a little: not too often


def wait_ticked(procs: list[EngineProc], timeout: float = 120) -> None:
    """Until each engine has ticked twice more, so once from start to end after the drain:
    deadlines and the absence sweep open alerts too, and alerts compared between runs must
    not depend on whether a tick happened to come before the engine stopped."""
    since = [e.ticks_done() for e in procs]
    deadline = time.monotonic() + timeout
    while any(e.ticks_done() < n + 2 for e, n in zip(procs, since)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the engines' rule timers did not tick in {timeout} s")
        time.sleep(0.25)


# -- alarm latency ----------------------------------------------------------------------------

@dataclass
class AlarmProbe:
    """Publishes an alarm every `interval` s from its own device and times each one from
    publish to the committed alert.

    Beside it, a one-row INSERT and COMMIT every 20 ms in a table of its own (nothing of
    vagt's): how long the database's commit alone takes meanwhile, the floor under an
    alarm's latency (a commit waits for the write-ahead log to reach the disk); without
    `commit_probe`, not (another probe beside it has one)."""

    broker: Broker
    root: str
    url: str
    devices: list[str]          # personal alarms of the fleet, one alarm each at most
    interval: float = 0.1
    commit_probe: bool = True
    sent: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    commits: list[float] = field(default_factory=list)   # ms
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> threading.Thread:
        t = threading.Thread(target=self._publish, daemon=True)
        w = threading.Thread(target=self._watch, daemon=True)
        t.start()
        w.start()
        if self.commit_probe:
            threading.Thread(target=self._commit, daemon=True).start()
        return t

    def stop(self) -> None:
        deadline = time.monotonic() + 30
        while len(self.seen.keys() & self.sent.keys()) < len(self.sent) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()

    def _publish(self) -> None:
        c = v5_client(f"bench-alarm-{uuid.uuid4().hex[:6]}")
        c.connect("127.0.0.1", self.broker.port)
        c.loop_start()
        deadline = time.monotonic() + 10   # a publish before the CONNACK could be lost
        while not c.is_connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        for d in self.devices:
            if self._stop.is_set():
                break
            doc = orjson.dumps({"device_id": d, "time": time.time(),
                                "events": [{"code": "alarm.fall"}]})
            self.sent[d] = time.perf_counter()
            last = c.publish(f"{self.root}/dev/{d}/alarm", doc, qos=1)
            self._stop.wait(self.interval)
        if self.sent:   # the last one, before the disconnect could drop it
            last.wait_for_publish(10)
        c.disconnect()
        c.loop_stop()

    def _watch(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            last = 0
            while not self._stop.is_set():
                rows = conn.execute("SELECT id, device_id FROM alerts WHERE id > %s "
                                    "AND rule = 'personal_alarm'", (last,)).fetchall()
                now = time.perf_counter()
                for i, d in rows:
                    self.seen.setdefault(d, now)
                    last = max(last, i)
                time.sleep(0.002)

    def _commit(self) -> None:
        with psycopg.connect(self.url) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (t float8)")
            conn.commit()
            while not self._stop.is_set():
                conn.execute("INSERT INTO bench_commit_probe VALUES (%s)", (time.time(),))
                start = time.perf_counter()
                conn.commit()
                self.commits.append((time.perf_counter() - start) * 1000)
                self._stop.wait(0.02)

    def latencies_ms(self) -> list[float]:
        return sorted((self.seen[d] - self.sent[d]) * 1000 for d in self.seen if d in self.sent)


# -- databases --------------------------------------------------------------------------------

def rule_state_writes(url: str) -> int:
    """Rows of `rule_state` updated in the database so far (the statistics of the backends
    that have ended: call it after the engines stopped)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT n_tup_upd FROM pg_stat_user_tables "
                           "WHERE relname = 'rule_state'").fetchone()
    return int(row[0]) if row else 0


# Per (rule, device): how often its alerts fired and were reopened (a clear and a firing
# again: judged on the wrong clock, a tick cleared a flapping gateway's alert that the next
# loss reopened, and the repeats alone were the same)
Outcome = list[tuple[str, str, int, int]]


def alert_outcome(url: str) -> Outcome:
    with psycopg.connect(url) as conn:
        return [(str(r), str(d), int(n), int(k)) for r, d, n, k in conn.execute(
            "SELECT rule, device_id, sum(repeat_count), sum(reopen_count) FROM alerts "
            "WHERE rule <> 'personal_alarm' GROUP BY 1, 2 ORDER BY 1, 2").fetchall()]


def differing_alerts(one: Outcome, two: Outcome) -> list[str]:
    """Each (rule, device) whose alerts fired or were reopened a different number of times
    with one engine and with two, as `rule device: one N/K, two M/L` (fired/reopened)."""
    a = {(r, d): (n, k) for r, d, n, k in one}
    b = {(r, d): (n, k) for r, d, n, k in two}
    none = (0, 0)
    return [f"{r} {d}: one {'/'.join(map(str, a.get((r, d), none)))}, "
            f"two {'/'.join(map(str, b.get((r, d), none)))} (fired/reopened)"
            for r, d in sorted(set(a) | set(b)) if a.get((r, d), none) != b.get((r, d), none)]


def compare_alerts(one: Outcome, two: Outcome) -> tuple[str, str]:
    """Which (rule, device) alerted with one engine and not two, or the other way round, and
    for the rest whether they fired and were reopened as often."""
    a = {(r, d): (n, k) for r, d, n, k in one}
    b = {(r, d): (n, k) for r, d, n, k in two}
    only = collections.Counter(r for r, _ in set(a) ^ set(b))
    counts = collections.Counter(r for r, d in set(a) & set(b) if a[(r, d)] != b[(r, d)])

    def by_rule(c: collections.Counter[str]) -> str:
        return ", ".join(f"{r} {k}" for r, k in sorted(c.items()))
    figure = ("the same alerts" if not only else
              f"{sum(only.values())} (rule, device) alerted with one only or two only: "
              f"{by_rule(only)}")
    figure += ("; every one as often" if not counts else
               f"; {sum(counts.values())} fired or reopened a different number of times: "
               f"{by_rule(counts)}")
    return figure, f"(of {len(a)} (rule, device) with one process)"


# -- profile ----------------------------------------------------------------------------------

CATEGORIES = (("decode", re.compile(r"vagt/ingest/(decode|canonical|senml|units|topics)")),
              ("rules", re.compile(r"vagt/rules/")),
              ("alerts", re.compile(r"vagt/alerts/")),
              ("database", re.compile(r"psycopg|vagt/app/store|vagt/app/rule_state|vagt/devices/")),
              ("mqtt", re.compile(r"paho|vagt/ingest/consumer")))


def profile(pid: int, seconds: float, out: Path) -> dict[str, float]:
    """Share of the engine's samples (all threads of it and its child processes, idle
    excluded) per stage, by the innermost vagt/library frame that names one."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    subprocess.run([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                    "--format", "raw", "--output", str(out), "--nonblocking",
                    "--subprocesses"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counts: collections.Counter[str] = collections.Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        category = "other"
        for f in reversed(frames):
            hit = next((name for name, rx in CATEGORIES if rx.search(f)), None)
            if hit:
                category = hit
                break
        counts[category] += int(n)
    total = sum(counts.values()) or 1
    return {k: v / total for k, v in counts.most_common()}


# -- the run ----------------------------------------------------------------------------------

@dataclass
class Round:
    """One drain by the engine, beside the bare consumer's just before it."""

    url: str
    bare: float
    rate: float
    busy: float
    used: dict[str, float]
    rss: list[float]
    latencies: list[float]
    commits: list[float]     # the probe's one-row commits, ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--insert-messages", type=int, default=10_000)
    ap.add_argument("--profile", action="store_true", help="profile the engine with py-spy")
    ap.add_argument("--split", action="store_true",
                    help="also drain through the engine's receiving process alone, and run "
                         "the pipeline alone (the ceilings of each half of the engine)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="drain with the bare consumer and one engine this many times, in "
                         "turn: medians, every ratio, and the alarms of all rounds")
    ap.add_argument("--drain-only", action="store_true",
                    help="only the bare consumer and one engine (rate, alarm latency, memory)")
    ap.add_argument("--per-core-only", action="store_true",
                    help="only the scale-out with a core per engine (`--rounds` pairs, in turn)")
    ap.add_argument("--keep-differing", action="store_true",
                    help="leave the databases of a pair whose alerts differ (their names are "
                         "printed), to find out why; drop them with DROP DATABASE after")
    args = ap.parse_args()
    n = args.messages
    rows: list[tuple[str, str, str]] = []

    def report(what: str, figure: str, target: str = "") -> None:
        rows.append((what, figure, target))
        print(f"  {what}: {figure}  {target}", flush=True)

    print(f"vagt benchmark suite, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}", flush=True)
    with own_broker() as (broker, work):
        urls: list[str] = []
        try:
            # 1 + 2 + 5: one engine drains the backlog while alarms arrive
            fleet = make_fleet(args.devices, 1)
            base = "bench/v1"
            traffic = make_backlog(base, n, args.devices)
            alarms = [d.device_id for d in fleet if d.type == "personal_alarm"]

            def rooted(root: str, messages: list[Message]) -> list[Message]:
                return [(root + t[len(base):], p) for t, p in messages]

            def database() -> str:
                url = fresh_database()
                urls.append(url)
                register_fleet(url, fleet)
                return url

            print(f"backlog: {n:,} messages (telemetry and status) of a simulated fleet of "
                  f"{len(fleet):,} devices", flush=True)

            def bare_drain() -> float:
                root = f"bench{uuid.uuid4().hex[:6]}/v1"
                cid = f"bench-bare-{uuid.uuid4().hex[:6]}"
                session(broker.port, cid, [f"{root}/dev/+/{ch}" for ch in BULK_CHANNELS])
                publish_backlog(broker.port, rooted(root, traffic))
                return drain_bare(broker.port, cid, n)

            def engine_drain(bare: float) -> Round:
                url = database()
                root = f"bench{uuid.uuid4().hex[:6]}/v1"
                one = [f"bench-one-{uuid.uuid4().hex[:6]}"]
                prepare_sessions(broker, root, one, "")
                publish_backlog(broker.port, rooted(root, traffic))
                probe = AlarmProbe(broker, root, url, alarms)
                with engines(1, broker=broker, root=root, url=url, client_ids=one,
                             share_group="", workdir=work) as procs:
                    probe.run()
                    cpu = cpu_times()
                    split_one = CpuSplit.begin(procs, broker)
                    rate = n / wait_acked(procs, n)
                    busy = busy_since(cpu)
                    used = split_one.seconds()
                    batches = procs[0].scrape("vagt_batch_size_messages_count", "bulk")
                    probe.stop()
                    alarms_in, in_time = procs[0].share_within(
                        "vagt_received_to_committed_seconds", "alarm", "0.25")
                    rss = procs[0].peak_rss_mb()
                    wait_ticked(procs)
                print(f"  round: bare {bare:,.0f} msg/s, engine {rate:,.0f} msg/s, ratio "
                      f"{rate / bare:.2f}; {batches:,.0f} bulk batches, "
                      f"{n / max(batches, 1):,.0f} messages each on average, "
                      f"{rule_state_writes(url):,} rule-state rows written; of "
                      f"{alarms_in:,.0f} alarms, {in_time:.0%} committed within 250 ms of "
                      "reaching the alarm lane; the slowest one-row commit meanwhile "
                      f"{max(probe.commits, default=0):.0f} ms", flush=True)
                return Round(url, bare, rate, busy, used, rss, probe.latencies_ms(),
                             sorted(probe.commits))

            def per_core_drain(count: int) -> tuple[float, Outcome, str]:
                """`count` engines sharing the subscription, each with a core of its own (its
                children and its database backends too); the broker and PostgreSQL's other
                processes on those cores: one core in all for one engine, two for two."""
                url = database()
                root = f"bench{uuid.uuid4().hex[:6]}/v1"
                group = f"g{uuid.uuid4().hex[:6]}" if count > 1 else ""
                ids = [f"bench-core-{uuid.uuid4().hex[:6]}-{i}" for i in range(count)]
                prepare_sessions(broker, root, ids, group)
                publish_backlog(broker.port, rooted(root, traffic))
                cores = [{c} for c in sorted(os.sched_getaffinity(0))[:count]]
                with engines(count, broker=broker, root=root, url=url, client_ids=ids,
                             share_group=group, workdir=work, cores=cores) as procs, \
                        Pinning(list(zip(procs, ids, cores)), broker, set().union(*cores)):
                    rate = n / wait_acked(procs, n)
                    wait_ticked(procs)
                return rate, alert_outcome(url), url

            def per_core_scale(rounds: int) -> None:
                if len(os.sched_getaffinity(0)) < 2:
                    report("scale-out with a core per engine", "not measured: one core")
                    return
                pairs = []
                for k in range(rounds):   # in turn, one then two, two then one, ...
                    order = (1, 2) if k % 2 == 0 else (2, 1)
                    got = dict(zip(order, (per_core_drain(c) for c in order)))
                    pairs.append(got)
                    print(f"  round: one engine on one core {got[1][0]:,.0f} msg/s, two on two "
                          f"{got[2][0]:,.0f} msg/s, {got[2][0] / got[1][0]:.2f}x", flush=True)
                    differ = differing_alerts(got[1][1], got[2][1])
                    print("    alerts: " + (compare_alerts(got[1][1], got[2][1])[0]
                                            if differ else "the same"), flush=True)
                    for line in differ[:10]:
                        print(f"      {line}", flush=True)
                    if differ and args.keep_differing:
                        for c in (1, 2):
                            urls.remove(got[c][2])
                        print(f"    kept: one {got[1][2]}, two {got[2][2]}", flush=True)
                ratios = sorted(p[2][0] / p[1][0] for p in pairs)
                several = rounds > 1
                report("scale-out, a core per engine",
                       f"one engine on one core {statistics.median(p[1][0] for p in pairs):,.0f}"
                       f" msg/s, two on two {statistics.median(p[2][0] for p in pairs):,.0f} "
                       "msg/s" + (" (medians)" if several else ""),
                       f"{statistics.median(ratios):.2f}x"
                       + (f" (median of {rounds}: " + ", ".join(f"{x:.2f}" for x in ratios)
                          + ")" if several else "")
                       + " (the target's 1.6x, with the cores doubled as the engines are; the "
                         "broker and PostgreSQL's writers share them)")
                same = [not differing_alerts(p[1][1], p[2][1]) for p in pairs]
                figure, of = compare_alerts(pairs[0][1][1], pairs[0][2][1])
                if several:   # each pair's differences are printed above
                    figure = f"the same in {sum(same)} of {rounds} pairs" + (
                        "" if same[0] else f"; the first pair: {figure}")
                report("alerts, one engine on one core vs two on two", figure, of)

            if args.per_core_only:
                per_core_scale(args.rounds)
                return _table(rows)

            rounds: list[Round] = []
            for k in range(args.rounds):
                bare = bare_drain()
                if k == 0 and args.split:
                    root = f"bench{uuid.uuid4().hex[:6]}/v1"
                    cid = f"bench-split-{uuid.uuid4().hex[:6]}"
                    filters = [f"{root}/dev/+/{ch}" for ch in BULK_CHANNELS]
                    session(broker.port, cid, filters)
                    publish_backlog(broker.port, rooted(root, traffic))
                    split = drain_split(broker.port, cid, filters, n, RECEIVE_MAXIMUM)
                    report("the engine's receiving process alone (benchmarks/split.py)",
                           f"{split:,.0f} msg/s", f"ratio to bare {split / bare:.2f}: the most "
                           "the engine could drain, whatever its pipeline")
                    alone = pipeline_alone(database(), rooted(root, traffic))
                    report("the pipeline alone, the engine's batches in one thread, no MQTT",
                           f"{alone:,.0f} msg/s", f"ratio to bare {alone / bare:.2f}: what "
                           "the committing process of such an engine could keep up with")
                rounds.append(engine_drain(bare))
            bare = statistics.median(r.bare for r in rounds)
            single = statistics.median(r.rate for r in rounds)
            ratios = sorted(r.rate / r.bare for r in rounds)
            several = len(rounds) > 1
            report("bare paho consumer (ceiling)", f"{bare:,.0f} msg/s"
                   + (" (median)" if several else ""))
            report("engine, one process", f"{single:,.0f} msg/s" + (" (median)" if several else ""),
                   f"ratio to bare {statistics.median(ratios):.2f}"
                   + (f" (median of {len(ratios)} rounds: "
                      + ", ".join(f"{x:.2f}" for x in ratios) + ")" if several else "")
                   + " (target >= 0.8)")
            lat = sorted(x for r in rounds for x in r.latencies)
            if lat:
                p50 = statistics.median(lat)
                p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
                report("alarm latency during the drain",
                       f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {lat[-1]:.0f} ms "
                       f"({len(lat)} alarms" + (", all rounds)" if several else ")"),
                       "(target p99 < 250 ms)")
            commits = sorted(x for r in rounds for x in r.commits)
            if commits:
                report("a one-row COMMIT meanwhile (floor)",
                       f"p50 {statistics.median(commits):.1f} ms, p99 "
                       f"{commits[min(len(commits) - 1, int(0.99 * len(commits)))]:.0f} ms, "
                       f"max {commits[-1]:.0f} ms ({len(commits):,} commits)",
                       "(the database's flush: every commit waits for it, an alarm's too)")
            used_one: dict[str, float] = collections.defaultdict(float)
            for r in rounds:
                for part, seconds in r.used.items():
                    used_one[part] += seconds / len(rounds)
            busy_one = statistics.mean(r.busy for r in rounds)
            report("CPU by process during the drain", cpu_split_figure(used_one, n),
                   f"(the machine was {busy_one:.0%} busy)")
            rss = max((r.rss for r in rounds), key=sum)
            parts = " + ".join(f"{r:.0f}" for r in rss)
            report("peak resident memory", f"{sum(rss):.0f} MB with {len(fleet):,} devices"
                   + (" (the highest round)" if several else ""),
                   f"(target < 400 MB; the engine, then its child processes: {parts})"
                   if len(rss) > 1 else "(target < 400 MB)")
            url = rounds[0].url
            with psycopg.connect(url) as conn:
                stored = conn.execute("SELECT count(*) FROM readings").fetchone()
            rows_written = int(stored[0]) if stored else 0
            report("rows written", f"{rows_written:,} readings, "
                   f"{rows_written * single / n:,.0f} rows/s at the one-process rate")
            single_alerts = alert_outcome(url)
            if args.drain_only:
                return _table(rows)

            # 3: two engines sharing the subscription
            url2 = database()
            root2 = f"bench{uuid.uuid4().hex[:6]}/v1"
            group = f"g{uuid.uuid4().hex[:6]}"
            two = [f"bench-two-{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
            prepare_sessions(broker, root2, two, group)
            publish_backlog(broker.port, rooted(root2, traffic))
            with engines(2, broker=broker, root=root2, url=url2, client_ids=two,
                         share_group=group, workdir=work) as procs:
                cpu = cpu_times()
                split_two = CpuSplit.begin(procs, broker)
                double = n / wait_acked(procs, n)
                busy_two = busy_since(cpu)
                used_two = split_two.seconds()
                replayed = sum(e.scrape("vagt_rule_replays_total", "bulk") for e in procs)
                skipped = sum(e.scrape("vagt_rule_late_rows_skipped_total", "bulk")
                              for e in procs)
                wait_ticked(procs)
            report("engine, two processes ($share)", f"{double:,.0f} msg/s",
                   f"{double / single:.2f}x one process (target >= 1.6); the machine's "
                   f"CPU was {busy_one:.0%} busy with one, {busy_two:.0%} with two")
            report("CPU by process, two engines", cpu_split_figure(used_two, n),
                   f"(one engine: {1000 * sum(used_one.values()) / n * 1000:.0f} ms; the "
                   "messages cost as much CPU shared out as in one: what a second engine adds "
                   "is bounded by the cores left free)")
            report("devices with late rows, two processes",
                   f"{replayed:,.0f} evaluated again in order, {skipped:,.0f} skipped")
            double_alerts = alert_outcome(url2)
            report("alerts, one process vs two", *compare_alerts(single_alerts, double_alerts))
            (bare_one, bare_two), = broker_share.measure(broker, traffic, base, 1)
            report("bare consumers, two sharing ($share) vs one, a process each",
                   f"one {bare_one:,.0f} msg/s, two {bare_two:,.0f} msg/s",
                   f"{bare_two / bare_one:.2f}x: the most two engines could gain over one from "
                   "this broker on this machine (benchmarks/broker_share.py)")
            per_core_scale(1)

            # 4: one INSERT per message
            url3 = database()
            root3 = f"bench{uuid.uuid4().hex[:6]}/v1"
            cid3 = f"bench-ins-{uuid.uuid4().hex[:6]}"
            session(broker.port, cid3, [f"{root3}/dev/+/{ch}" for ch in BULK_CHANNELS])
            # canonical JSON, which it reads itself (as drain.py's): the vendors' formats
            # (SenML, RFC 3339 times) would take a decoder, which is what the engine is
            publish_backlog(broker.port, make_backlog(root3, args.insert_messages, args.devices,
                                                      canonical_only=True))
            insert = drain_insert_per_message(broker.port, cid3, args.insert_messages, url3)
            report("INSERT + commit per message", f"{insert:,.0f} msg/s",
                   f"engine is {single / insert:.1f}x (target >= 5)")

            # 6: where the time goes
            if args.profile:
                url4 = database()
                root4 = f"bench{uuid.uuid4().hex[:6]}/v1"
                prof = [f"bench-prof-{uuid.uuid4().hex[:6]}"]
                prepare_sessions(broker, root4, prof, "")
                publish_backlog(broker.port, rooted(root4, traffic))
                with engines(1, broker=broker, root=root4, url=url4, client_ids=prof,
                             share_group="", workdir=work) as procs:
                    shares = profile(procs[0].process.pid, max(5.0, 0.8 * n / single),
                                     work / "profile.txt")
                    wait_acked(procs, n)
                report("profile (share of samples)",
                       ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
        finally:
            for u in urls:
                drop_database(u)
    _table(rows)


def _table(rows: list[tuple[str, str, str]]) -> None:
    print()
    width = max(len(r[0]) for r in rows)
    for what, figure, target in rows:
        print(f"{what:<{width}}  {figure}  {target}")


if __name__ == "__main__":
    main()
