"""The PostgreSQL server the ledger tests run against: the libpq URL in
``DICOMRELAY_TEST_POSTGRES`` (``make test`` starts one with ``.ci/postgres.sh``
and sets it). Each test gets a fresh schema, dropped after.

Without the variable the PostgreSQL tests are skipped on a developer's machine,
and fail in CI (``CI`` set), where a skip would hide that they never ran."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dicomrelay.ledger import Ledger, SqliteLedger

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


SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "postgres.sh"


class PrivateCluster:
    """A PostgreSQL cluster of one test's own, to stop and start at will (the
    shared server must stay up for the others), made by ``.ci/postgres.sh``
    with the binaries the shared server uses."""

    def __init__(self, port: int) -> None:
        self.port = port
        # Under /tmp: as root, the server runs as the postgres user, who must reach it.
        self.directory = Path(tempfile.gettempdir()) / f"dicomrelay-pg-{uuid.uuid4().hex[:12]}"
        self._env = {
            **os.environ,
            "DICOMRELAY_PG_DIR": str(self.directory),
            "DICOMRELAY_PG_PORT": str(port),
        }
        self.url = self._script("url").strip()

    def _script(self, command: str) -> str:
        result = subprocess.run(
            ["bash", str(SCRIPT), command], env=self._env, capture_output=True, text=True
        )
        assert result.returncode == 0, f"postgres.sh {command}: {result.stderr}"
        return result.stdout

    def start(self) -> None:
        self._script("start")

    def stop(self) -> None:
        """A fast shutdown: sessions are ended at once, as in a failover."""
        self._script("stop")


@asynccontextmanager
async def either_ledger(backend: str, tmp_path: Path) -> AsyncIterator[Ledger]:
    """A fresh ledger on ``backend``: ``sqlite`` (a file in ``tmp_path``) or
    ``postgres`` (a schema of its own), closed after."""
    if backend == "sqlite":
        opened: Ledger = SqliteLedger(tmp_path / "ledger.sqlite")
        try:
            yield opened
        finally:
            await opened.close()
        return
    url = postgres_url()
    from dicomrelay.ledger.postgres import PostgresLedger

    async with fresh_schema(url) as schema:
        opened = await PostgresLedger.open(url, schema=schema)
        try:
            yield opened
        finally:
            await opened.close()


@contextmanager
def private_cluster(port: int) -> Iterator[PrivateCluster]:
    postgres_url()  # skipped or failed, as every PostgreSQL test is, without a server
    cluster = PrivateCluster(port)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.directory, ignore_errors=True)
