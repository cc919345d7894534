"""A connection to this test's own migrated database, and a second database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import psycopg
import pytest

if TYPE_CHECKING:
    from tests.conftest import DatabaseStock


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """Autocommit, as a command-line handler's connection: each action commits on its own."""
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


@pytest.fixture
def other_database_url(pg_admin_url: str, pg_template: str,
                       database_stock: DatabaseStock) -> Iterator[str]:
    """A second migrated database: another centre's registry, to import an export into."""
    from tests.conftest import RUN_ID, create_database

    name = f"vagt_o_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    yield create_database(pg_admin_url, name, template=pg_template)
    database_stock.give_back(name)
