"""A connection to this test's own migrated database."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from tests.app.conftest import devices, engine  # noqa: F401 - the engine's fixtures, shared


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """Autocommit, as a command-line handler's connection: each action commits on its own."""
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c
