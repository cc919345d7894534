"""A connection to this test's own migrated database."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """Autocommit, as a command-line handler's connection: each action commits on its own."""
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c
