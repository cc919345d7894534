"""The alert queue's background work in an engine process: the timer (escalation, silences
by the clock), the outbox delivery, and the operator API. Each is a thread this context
manager owns: leaving the block stops and joins them all, even on error.
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
from vagt.alerts.outbox import register_targets
from vagt.alerts.policy import AlertPolicy

log = logging.getLogger("vagt.alerts")


@dataclass(frozen=True)
class ApiSettings:
    host: str
    port: int
    pool_max: int = 4


@contextlib.contextmanager
def alert_services(pool: ConnectionPool, policy: AlertPolicy, *, clock: Callable[[], float],
                   observer: AlertObserver, mqtt_defaults: Mapping[str, object],
                   client_id: str, api: ApiSettings | None = None) -> Iterator[None]:
    """Run the timer, the delivery worker and (when `api` is given) the API until the block ends."""
    with pool.connection() as conn:
        targets = register_targets(conn, policy.delivery)
    stop = threading.Event()
    failures: list[BaseException] = []
    threads: list[threading.Thread] = []

    def supervised(name: str, target: Callable[[threading.Event], None]) -> None:
        def body() -> None:
            try:
                target(stop)
            except BaseException as e:  # a bug: say so loudly; the engine stops
                log.exception("event=alert_service_crashed service=%s", name)
                failures.append(e)
        t = threading.Thread(target=body, name=f"vagt-{name}", daemon=True)
        t.start()
        threads.append(t)

    supervised("alert-timer", Timer(pool, policy, clock, observer).run)
    senders = senders_for(policy.delivery, mqtt_defaults=mqtt_defaults, client_id=client_id)
    if senders:
        supervised("alert-delivery",
                   DeliveryWorker(pool, policy.delivery, senders, clock, observer).run)
    server = api_pool = None
    if api is not None:
        # its own connections: a burst of operators never takes the lanes' connections
        api_pool = ConnectionPool(pool.conninfo, min_size=1, max_size=api.pool_max,
                                  open=True, name="vagt-api")
        server = _api_server(api_pool, policy, observer, clock, api)
        supervised("api", lambda _stop: server.run())
    log.info("event=alert_services_started targets=%s api=%s", ",".join(targets) or "-",
             f"{api.host}:{api.port}" if api else "-")
    try:
        yield
    finally:
        stop.set()
        if server is not None:
            server.should_exit = True
        for t in threads:
            t.join(timeout=15)
        if api_pool is not None:
            api_pool.close()
    if failures:
        raise RuntimeError("an alert service failed; see the log") from failures[0]


def _api_server(pool: ConnectionPool, policy: AlertPolicy, observer: AlertObserver,
                clock: Callable[[], float], api: ApiSettings) -> uvicorn.Server:
    from vagt.alerts.api.app import create_app  # FastAPI is loaded only when the API is served

    app = create_app(pool, policy, observer=observer, clock=clock)
    return uvicorn.Server(uvicorn.Config(app, host=api.host, port=api.port, log_config=None,
                                         lifespan="off", access_log=False))
