"""The alert queue's background work in an engine process: the timer (escalation, silences
by the clock), the outbox delivery, and the operator API. Each is a thread this context
manager owns: leaving the block stops and joins them all, even on error. One that fails (a
bug; the API's port taken) is logged, counted and started again (`vagt.threads`): the
engine goes on taking alarms meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import uvicorn
from psycopg_pool import ConnectionPool

from vagt.alerts.delivery import DeliveryWorker, senders_for
from vagt.alerts.escalation import Timer
from vagt.alerts.observe import AlertObserver
from vagt.alerts.outbox import register_targets, warn_of_stranded
from vagt.alerts.policy import AlertPolicy
from vagt.threads import start_kept_running

log = logging.getLogger("vagt.alerts")


@dataclass(frozen=True)
class ApiSettings:
    host: str
    port: int
    pool_max: int = 4


@contextlib.contextmanager
def alert_services(pool: ConnectionPool, policy: AlertPolicy, *, clock: Callable[[], float],
                   observer: AlertObserver, mqtt_defaults: Mapping[str, object],
                   client_id: str, api: ApiSettings | None = None,
                   on_crash: Callable[[str], None] = lambda name: None,
                   transaction_limit_s: float = 10.0,
                   timer_limit_s: float = 120.0) -> Iterator[None]:
    """Run the timer, the delivery worker and (when `api` is given) the API until the block
    ends; `on_crash(name)` is called each time one of them fails and is started again.
    How long their work may wait on the database before its connection is cut (see
    `guarded_connection`): a delivery's statements `transaction_limit_s` (the alarm lane's;
    the send's own timeout comes on top); a pass of the timer `timer_limit_s`, the bulk
    lane's: it reconciles every open alert and may wait for rows a bulk batch holds, and a
    pass cut short escalates nothing, so a short limit would stop escalations when load is
    highest."""
    with pool.connection() as conn:
        targets = register_targets(conn, policy.delivery)
        warn_of_stranded(conn)
    stop = threading.Event()
    threads = [start_kept_running("alert-timer", Timer(pool, policy, clock, observer,
                                                           timer_limit_s).run,
                                  stop, on_crash)]
    senders = senders_for(policy.delivery, mqtt_defaults=mqtt_defaults, client_id=client_id)
    if senders:
        threads.append(start_kept_running(
            "alert-delivery", DeliveryWorker(pool, policy.delivery, senders, clock, observer,
                                             transaction_limit_s=transaction_limit_s).run,
            stop, on_crash))
    servers: list[uvicorn.Server] = []   # the one serving now, or the last that failed
    api_pool = None
    if api is not None:
        # its own connections: a burst of operators never takes the lanes' connections
        api_pool = ConnectionPool(pool.conninfo, min_size=1, max_size=api.pool_max,
                                  open=True, name="vagt-api")

        def serve(_stop: threading.Event, api: ApiSettings = api,
                  api_pool: ConnectionPool = api_pool) -> None:
            # a new server each time: one that failed (its port taken) is not used again
            servers[:] = [_api_server(api_pool, policy, observer, clock, api)]
            if not stop.is_set():
                servers[-1].run()

        threads.append(start_kept_running("api", serve, stop, on_crash))
    log.info("event=alert_services_started targets=%s api=%s", ",".join(targets) or "-",
             f"{api.host}:{api.port}" if api else "-")
    try:
        yield
    finally:
        stop.set()
        for server in servers:
            server.should_exit = True
        for t in threads:
            t.join(timeout=15)
        if api_pool is not None:
            api_pool.close()


def _api_server(pool: ConnectionPool, policy: AlertPolicy, observer: AlertObserver,
                clock: Callable[[], float], api: ApiSettings) -> uvicorn.Server:
    from vagt.alerts.api.app import create_app  # FastAPI is loaded only when the API is served

    app = create_app(pool, policy, observer=observer, clock=clock)
    return uvicorn.Server(uvicorn.Config(app, host=api.host, port=api.port, log_config=None,
                                         lifespan="off", access_log=False))
