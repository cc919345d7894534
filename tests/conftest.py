"""Fixtures on real servers: a PostgreSQL database per test, a Mosquitto broker per test run.

PostgreSQL: VAGT_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres) must let
us CREATE DATABASE. The schema is migrated once into a template database for this run; each
test gets its own copy (CREATE DATABASE ... TEMPLATE), dropped afterwards.

Mosquitto: the real broker, started from scripts/mosquitto-test.conf on free ports with its
own persistence directory. Each test also gets its own topic root, so nothing one test
publishes reaches another test's sessions.

With pytest-xdist (scripts/test) each worker is a process of its own, and so has its own
template, databases and broker: the session fixtures are made once per worker.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings
from psycopg import sql
from tests.support import Broker, free_port

from vagt.app import db

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("VAGT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RUN_ID = uuid.uuid4().hex[:8]

# Hypothesis's deadline (200 ms an example) is a timing assert: on a busy machine, or as one
# of several workers, a first example that warms up exceeds it (test_metrics's took 316 ms
# once, 0.6 ms on the retry). The property tests check results, not speed.
settings.register_profile("vagt", deadline=None)
settings.load_profile("vagt")


def _url_for(admin_url: str, dbname: str) -> str:
    """The admin URL with another database name (query parameters such as host= kept)."""
    parts = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{dbname}"))


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The PostgreSQL server the tests use: the machine's, or an embedded one if there is none.

    A machine with nothing but Python has no PostgreSQL server; the tests then run on the
    same embedded server (a pip package) that `vagt demo` uses.
    """
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError:
        if "VAGT_TEST_PG_URL" in os.environ:
            raise
        from vagt.app.embedded import embedded_postgres

        with embedded_postgres(tmp_path_factory.mktemp("pg")) as url:
            yield _url_for(url, "postgres")
        return
    yield PG_ADMIN_URL


def create_database(admin_url: str, name: str, template: str | None = None) -> str:
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(query)
    return _url_for(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> Iterator[str]:
    name = f"vagt_tmpl_{RUN_ID}"
    db.migrate(create_database(pg_admin_url, name))
    yield name
    drop_database(pg_admin_url, name)


class DatabaseStock:
    """Copies of the migrated template, made ahead by a thread of their own while the tests
    run, and dropped after by threads of their own: a copy takes about 0.3 s, most of it the
    server flushing its log, and made by each test for itself it added some 4 minutes to the
    suite.

    The drops are apart from the copies, several at once: each DROP DATABASE waits for a
    checkpoint of the whole server (seconds, when other databases are busy), and made by
    the copying thread they held the next copy back, for up to 18 s; drops waiting at the
    same time share one checkpoint (16 drops: 13 s each one at a time, 0.3 s eight at once)."""

    def __init__(self, admin_url: str, template: str, depth: int = 3, droppers: int = 4) -> None:
        self.admin_url, self.template = admin_url, template
        self._ready: queue.Queue[str | BaseException] = queue.Queue()
        self._used: queue.Queue[str | None] = queue.Queue()
        self._drop_errors: list[BaseException] = []
        self._room = threading.Semaphore(depth)     # a copy may be made when one is taken
        self._stop = threading.Event()
        self._maker = threading.Thread(target=self._make, name="database-stock", daemon=True)
        self._maker.start()
        self._droppers = [threading.Thread(target=self._drop, name=f"database-drop-{i}",
                                           daemon=True) for i in range(droppers)]
        for d in self._droppers:
            d.start()

    def take(self) -> str:
        """A database of the caller's own: its name."""
        got = self._ready.get(timeout=120)
        if isinstance(got, BaseException):
            raise got
        self._room.release()
        return got

    def give_back(self, name: str) -> None:
        """`name` (a copy taken, or any database of this run's) is dropped, later."""
        self._used.put(name)

    def _make(self) -> None:
        while True:
            self._room.acquire()
            if self._stop.is_set():
                return
            try:
                name = f"vagt_t_{RUN_ID}_{uuid.uuid4().hex[:8]}"
                create_database(self.admin_url, name, template=self.template)
                self._ready.put(name)
            except BaseException as e:   # the test waiting for a database sees it
                self._ready.put(e)
                return

    def _drop(self) -> None:
        while (name := self._used.get()) is not None:
            try:
                drop_database(self.admin_url, name)
            except BaseException as e:   # said at the end of the run (close)
                self._drop_errors.append(e)

    def close(self) -> None:
        self._stop.set()
        self._room.release()
        self._maker.join(timeout=60)
        while not self._ready.empty():
            name = self._ready.get()
            if isinstance(name, str):
                self._used.put(name)
        # What is left is dropped twice as many at once: the tests' connections are gone
        for i in range(len(self._droppers)):
            self._droppers.append(threading.Thread(target=self._drop, daemon=True,
                                                   name=f"database-drop-end-{i}"))
            self._droppers[-1].start()
        for _ in self._droppers:     # after every name given back: those are dropped first
            self._used.put(None)
        for d in self._droppers:
            d.join(timeout=300)
        if self._drop_errors:
            raise self._drop_errors[0]


@pytest.fixture(scope="session")
def database_stock(pg_admin_url: str, pg_template: str) -> Iterator[DatabaseStock]:
    stock = DatabaseStock(pg_admin_url, pg_template)
    yield stock
    stock.close()


@pytest.fixture
def database_url(pg_admin_url: str, database_stock: DatabaseStock) -> Iterator[str]:
    """A migrated database of this test's own."""
    name = database_stock.take()
    yield _url_for(pg_admin_url, name)
    database_stock.give_back(name)


@pytest.fixture
def empty_database_url(pg_admin_url: str, database_stock: DatabaseStock) -> Iterator[str]:
    """A database of this test's own with no schema at all."""
    name = f"vagt_e_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    yield create_database(pg_admin_url, name)
    database_stock.give_back(name)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed; scripts/test installs it (apt-get install mosquitto)")
    b = Broker(free_port(), free_port(), tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def topic_root() -> str:
    """A topic root of this test's own on the shared test broker."""
    return f"t{uuid.uuid4().hex[:10]}/v1"
