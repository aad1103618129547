"""The shared ledger: PostgreSQL, for several workers or machines sharing one
organisation's work (see ``claim_outgoing``).

Its semantics are the SQLite ledger's (the same statements, ``statements.py``):
every call is one transaction (run whole again if PostgreSQL aborts it for a
deadlock), and, as there, a call once started completes even if its caller is
cancelled. Its tables live in a schema of their own (``dicomrelay`` unless
told), created on open if missing, so one database can hold several
organisations' ledgers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

import anyio
import psycopg
from psycopg import AsyncConnection, AsyncCursor, errors, sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from dicomrelay.errors import LedgerUnavailable
from dicomrelay.ledger.dialect import POSTGRES, Dialect
from dicomrelay.ledger.ledger import SqlLedger
from dicomrelay.ledger.migrations import migrate
from dicomrelay.ledger.work import Query, Result, Work, drive_async

T = TypeVar("T")
Cursor = AsyncCursor[TupleRow]
Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]

_ATTEMPTS = 5  # a transaction PostgreSQL aborts for a deadlock is run again, this often
# How long a call waits for a pooled connection (while the pool reconnects to a
# server that went away) before the ledger counts as unavailable.
CONNECTION_WAIT_SECONDS = 10.0


async def _execute(cur: Cursor, query: Query) -> Result:
    if query.many:
        await cur.executemany(query.sql, query.params)
    else:
        await cur.execute(query.sql, query.params)
    rows = await cur.fetchall() if cur.description is not None else []
    return Result(rows, cur.rowcount)


async def _transaction(conn: AsyncConnection[TupleRow], work: Work[T]) -> T:
    async with conn.transaction(), conn.cursor() as cur:
        return await drive_async(work, lambda query: _execute(cur, query))


class PostgresDriver:
    """Runs each transaction on a pooled connection (autocommit outside them)
    whose search_path is the ledger's schema."""

    def __init__(self, pool: Pool, schema: str) -> None:
        self._pool = pool
        self.schema = schema

    @property
    def dialect(self) -> Dialect:
        return POSTGRES

    @classmethod
    async def open(cls, url: str, *, schema: str, max_connections: int) -> PostgresDriver:
        """Connect, create the schema if missing and bring its tables up to
        date, and keep a pool of up to ``max_connections`` connections. Raises
        LedgerUnavailable if the server cannot be reached (or refuses)."""
        try:
            return await cls._open(url, schema, max_connections)
        except (psycopg.OperationalError, PoolTimeout) as e:
            raise LedgerUnavailable(f"PostgreSQL ledger: {_why(e)}") from e

    @classmethod
    async def _open(cls, url: str, schema: str, max_connections: int) -> PostgresDriver:
        search_path = sql.SQL("SET search_path TO {}").format(sql.Identifier(schema))
        # One connection first: its errors (refused, no such database) are plainer
        # than a pool's time-out. The lock serialises workers opening at once
        # (creating a schema or table is not safe against a concurrent creator).
        async with (
            await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            await cur.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"dicomrelay ledger {schema}",)
            )
            await cur.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            )
            await cur.execute(search_path)
            await drive_async(migrate(POSTGRES), lambda query: _execute(cur, query))

        async def configure(conn: AsyncConnection[TupleRow]) -> None:
            await conn.execute(search_path)

        pool: Pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True},
            configure=configure,
            timeout=CONNECTION_WAIT_SECONDS,
            open=False,
            name=f"dicomrelay-ledger-{schema}",
        )
        await pool.open(wait=True, timeout=30)
        return cls(pool, schema)

    async def run(self, work: Callable[[], Work[T]]) -> T:
        """Run ``work`` as one transaction on a pooled connection. Shielded, as
        the SQLite ledger's calls are: a cancelled caller sees its cancellation
        after. A lost or unobtainable connection raises LedgerUnavailable: the
        transaction may or may not have committed, so it is not run again here
        (the caller's work resumes from what the ledger holds)."""
        with anyio.CancelScope(shield=True):
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    async with self._pool.connection() as conn:
                        return await _transaction(conn, work())
                except (errors.DeadlockDetected, errors.SerializationFailure):
                    if attempt == _ATTEMPTS:
                        raise
                    await anyio.sleep(random.uniform(0, 0.01 * attempt))
                except (psycopg.OperationalError, PoolTimeout) as e:
                    raise LedgerUnavailable(f"PostgreSQL ledger: {_why(e)}") from e
        raise AssertionError("unreachable")

    async def read(self, work: Callable[[], Work[T]]) -> T:
        """Reads run as any transaction does: each has a pooled connection
        of its own, so none waits behind another's writes."""
        return await self.run(work)

    async def close(self) -> None:
        await self._pool.close()


class PostgresLedger(SqlLedger):
    """Open with ``await PostgresLedger.open(url, schema=...)``; ``url`` is a
    libpq connection string (``postgresql://user@host:port/dbname``)."""

    def __init__(self, driver: PostgresDriver) -> None:
        super().__init__(driver)
        self.schema = driver.schema

    @classmethod
    async def open(
        cls, url: str, *, schema: str = "dicomrelay", max_connections: int = 8
    ) -> PostgresLedger:
        return cls(await PostgresDriver.open(url, schema=schema, max_connections=max_connections))


def _why(e: Exception) -> str:
    """The first line of a psycopg error (the server's message follows on others)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
