"""The PostgreSQL server the ledger tests run against: the libpq URL in
``DICOMRELAY_TEST_POSTGRES`` (``make test`` starts one with ``.ci/postgres.sh``
and sets it). Each test gets a fresh schema, dropped after.

Without the variable the PostgreSQL tests are skipped on a developer's machine,
and fail in CI (``CI`` set), where a skip would hide that they never ran."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import pytest
from psycopg import sql

ENV = "DICOMRELAY_TEST_POSTGRES"


def postgres_url() -> str:
    url = os.environ.get(ENV)
    if url:
        return url
    why = (
        f"{ENV} is not set: `make test` starts a server and sets it"
        f" (or: bash .ci/postgres.sh start && export {ENV}=$(bash .ci/postgres.sh url))"
    )
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"in CI the PostgreSQL ledger must be tested: {why}")
    pytest.skip(why)


@asynccontextmanager
async def fresh_schema(url: str) -> AsyncIterator[str]:
    """A schema name nobody uses (the ledger creates it); dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    try:
        yield name
    finally:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
            )
