"""The shared ledger: PostgreSQL, for several workers or machines sharing one
organisation's work (see ``claim_outgoing``).

Its semantics are the SQLite ledger's, statement for statement: every call is
one transaction (run whole again if PostgreSQL aborts it for a deadlock), and,
as there, a call once started completes even if its caller is cancelled. Its
tables live in a schema of their own (``dicomrelay`` unless told), created on
open if missing, so one database can hold several organisations' ledgers.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg import AsyncConnection, AsyncCursor, errors, sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from dicomrelay.errors import LedgerUnavailable
from dicomrelay.ledger.base import (
    CLAIMABLE,
    INSERT_OUTGOING_COLUMNS,
    INSERT_OUTGOING_INSTANCE_COLUMNS,
    OUTGOING_COLUMNS,
    OUTGOING_INSTANCE_COLUMNS,
    PRIORITY_ORDER,
    IncomingInstance,
    IncomingTransfer,
    OutgoingInstance,
    OutgoingTransfer,
    TransferState,
    incoming_from_row,
    outgoing_from_row,
    outgoing_insert_row,
    outgoing_instance_from_row,
    outgoing_instance_insert_row,
)
from dicomrelay.ledger.schema import POSTGRES_SCHEMA

T = TypeVar("T")
Cursor = AsyncCursor[TupleRow]

_ATTEMPTS = 5  # a transaction PostgreSQL aborts for a deadlock is run again, this often
# How long a call waits for a pooled connection (while the pool reconnects to a
# server that went away) before the ledger counts as unavailable.
CONNECTION_WAIT_SECONDS = 10.0


class PostgresLedger:
    """Open with ``await PostgresLedger.open(url, schema=...)``; ``url`` is a
    libpq connection string (``postgresql://user@host:port/dbname``)."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[TupleRow]], schema: str) -> None:
        self._pool = pool
        self.schema = schema

    @classmethod
    async def open(
        cls, url: str, *, schema: str = "dicomrelay", max_connections: int = 8
    ) -> PostgresLedger:
        """Connect, create the schema and its tables if missing, and keep a pool
        of up to ``max_connections`` connections. Raises LedgerUnavailable if
        the server cannot be reached (or refuses the connection)."""
        try:
            return await cls._open(url, schema, max_connections)
        except (psycopg.OperationalError, PoolTimeout) as e:
            raise LedgerUnavailable(f"PostgreSQL ledger: {_why(e)}") from e

    @classmethod
    async def _open(cls, url: str, schema: str, max_connections: int) -> PostgresLedger:
        search_path = sql.SQL("SET search_path TO {}").format(sql.Identifier(schema))
        # One connection first: its errors (refused, no such database) are plainer
        # than a pool's time-out, and the DDL of workers opening at once is serialised.
        async with (
            await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
            conn.transaction(),
        ):
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"dicomrelay ledger {schema}",)
            )
            await conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            )
            await conn.execute(search_path)
            for statement in POSTGRES_SCHEMA:
                await conn.execute(statement)

        async def configure(conn: AsyncConnection[TupleRow]) -> None:
            await conn.execute(search_path)

        pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
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

    async def _run(self, fn: Callable[[Cursor], Awaitable[T]]) -> T:
        """Run ``fn`` as one transaction on a pooled connection. Shielded, as the
        SQLite ledger's calls are: a cancelled caller sees its cancellation after.
        A lost or unobtainable connection raises LedgerUnavailable: the
        transaction may or may not have committed, so it is not run again here
        (the caller's work resumes from what the ledger holds)."""
        with anyio.CancelScope(shield=True):
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    async with (
                        self._pool.connection() as conn,
                        conn.transaction(),
                        conn.cursor() as cur,
                    ):
                        return await fn(cur)
                except (errors.DeadlockDetected, errors.SerializationFailure):
                    if attempt == _ATTEMPTS:
                        raise
                    await anyio.sleep(random.uniform(0, 0.01 * attempt))
                except (psycopg.OperationalError, PoolTimeout) as e:
                    raise LedgerUnavailable(f"PostgreSQL ledger: {_why(e)}") from e
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self._pool.close()

    # Sending side.
    async def add_outgoing(
        self, transfer: OutgoingTransfer, instances: Sequence[OutgoingInstance]
    ) -> None:
        now = time.time()

        async def add(cur: Cursor) -> None:
            await cur.execute(
                f"INSERT INTO outgoing ({INSERT_OUTGOING_COLUMNS})"
                f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                outgoing_insert_row(transfer, now),
            )
            await cur.executemany(
                f"INSERT INTO outgoing_instances ({INSERT_OUTGOING_INSTANCE_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [outgoing_instance_insert_row(transfer.id, i) for i in instances],
            )

        await self._run(add)

    async def outgoing(self, transfer_id: str) -> OutgoingTransfer | None:
        async def get(cur: Cursor) -> OutgoingTransfer | None:
            await cur.execute(
                f"SELECT {OUTGOING_COLUMNS} FROM outgoing o WHERE id = %s", (transfer_id,)
            )
            row = await cur.fetchone()
            return None if row is None else outgoing_from_row(row)

        return await self._run(get)

    async def unfinished_outgoing(self) -> list[OutgoingTransfer]:
        async def get(cur: Cursor) -> list[OutgoingTransfer]:
            await cur.execute(
                f"SELECT {OUTGOING_COLUMNS} FROM outgoing o WHERE state IN (%s, %s)"
                " ORDER BY created",
                (TransferState.QUEUED.value, TransferState.ACTIVE.value),
            )
            return [outgoing_from_row(r) for r in await cur.fetchall()]

        return await self._run(get)

    async def all_outgoing(
        self, limit: int = 1000, *, state: TransferState | None = None
    ) -> list[OutgoingTransfer]:
        async def get(cur: Cursor) -> list[OutgoingTransfer]:
            await cur.execute(
                f"SELECT {OUTGOING_COLUMNS} FROM outgoing o"
                " WHERE %(state)s::text IS NULL OR state = %(state)s"
                " ORDER BY created DESC LIMIT %(limit)s",
                {"state": None if state is None else state.value, "limit": limit},
            )
            return [outgoing_from_row(r) for r in await cur.fetchall()]

        return await self._run(get)

    async def pending_instances(self, transfer_id: str) -> list[OutgoingInstance]:
        async def get(cur: Cursor) -> list[OutgoingInstance]:
            await cur.execute(
                f"SELECT {OUTGOING_INSTANCE_COLUMNS} FROM outgoing_instances"
                " WHERE transfer_id = %s AND acked IS NULL ORDER BY idx",
                (transfer_id,),
            )
            return [outgoing_instance_from_row(r) for r in await cur.fetchall()]

        return await self._run(get)

    async def mark_acked(self, transfer_id: str, indexes: Sequence[int], at: float) -> None:
        async def mark(cur: Cursor) -> None:
            await cur.execute(
                "UPDATE outgoing_instances SET acked = %s WHERE transfer_id = %s"
                " AND idx = ANY(%s::integer[])",
                (at, transfer_id, list(indexes)),
            )

        await self._run(mark)

    async def set_outgoing_state(
        self,
        transfer_id: str,
        state: TransferState,
        *,
        attempts: int | None = None,
        attempts_without_progress: int | None = None,
        next_attempt: float | None = None,
        error: str | None = None,
        receipt: bytes | None = None,
    ) -> None:
        async def update(cur: Cursor) -> None:
            await cur.execute(
                "UPDATE outgoing SET state = %s, updated = %s, attempts = coalesce(%s, attempts),"
                " attempts_without_progress = coalesce(%s::integer, attempts_without_progress),"
                " next_attempt = coalesce(%s, next_attempt),"
                " last_error = coalesce(%s, last_error), receipt = coalesce(%s, receipt)"
                " WHERE id = %s",
                (
                    state.value,
                    time.time(),
                    attempts,
                    attempts_without_progress,
                    next_attempt,
                    error,
                    receipt,
                    transfer_id,
                ),
            )

        await self._run(update)

    async def requeue_dead(self, transfer_id: str, *, now: float) -> bool:
        async def requeue(cur: Cursor) -> bool:
            await cur.execute(
                "UPDATE outgoing SET state = %s, attempts_without_progress = 0,"
                " next_attempt = %s, updated = %s, claimed_by = NULL, lease_until = NULL"
                " WHERE id = %s AND state = %s",
                (
                    TransferState.QUEUED.value,
                    now,
                    time.time(),
                    transfer_id,
                    TransferState.DEAD.value,
                ),
            )
            return cur.rowcount == 1

        return await self._run(requeue)

    # Several workers sharing the sending work: row locks, and SKIP LOCKED so
    # that claimers pass over each other's candidates instead of queueing on them.
    async def claim_outgoing(
        self,
        worker: str,
        *,
        now: float,
        lease_seconds: float,
        limit: int,
        only: Sequence[str] | None = None,
    ) -> list[OutgoingTransfer]:
        claimable = CLAIMABLE.format(queued="%(queued)s", active="%(active)s", now="%(now)s")
        among = "" if only is None else " AND id = ANY(%(only)s::text[])"

        async def claim(cur: Cursor) -> list[OutgoingTransfer]:
            await cur.execute(
                f"SELECT id FROM outgoing WHERE {claimable}{among}"
                f" ORDER BY {PRIORITY_ORDER} LIMIT %(limit)s FOR UPDATE SKIP LOCKED",
                {
                    "queued": TransferState.QUEUED.value,
                    "active": TransferState.ACTIVE.value,
                    "now": now,
                    "limit": limit,
                    "only": list(only or ()),
                },
            )
            ids = [r[0] for r in await cur.fetchall()]
            if not ids:
                return []
            await cur.execute(
                "UPDATE outgoing SET claimed_by = %s, lease_until = %s, updated = %s"
                " WHERE id = ANY(%s::text[])",
                (worker, now + lease_seconds, time.time(), ids),
            )
            await cur.execute(
                f"SELECT {OUTGOING_COLUMNS} FROM outgoing o WHERE id = ANY(%s::text[])", (ids,)
            )
            order = {i: n for n, i in enumerate(ids)}
            rows = await cur.fetchall()
            return sorted((outgoing_from_row(r) for r in rows), key=lambda t: order[t.id])

        return await self._run(claim)

    async def release_claims(self, worker: str) -> int:
        async def release(cur: Cursor) -> int:
            await cur.execute(
                "UPDATE outgoing SET claimed_by = NULL, lease_until = NULL, updated = %s,"
                " state = CASE WHEN state = %s THEN %s ELSE state END WHERE claimed_by = %s",
                (time.time(), TransferState.ACTIVE.value, TransferState.QUEUED.value, worker),
            )
            return cur.rowcount

        return await self._run(release)

    async def renew_lease(
        self, worker: str, transfer_ids: Sequence[str], *, now: float, lease_seconds: float
    ) -> set[str]:
        async def renew(cur: Cursor) -> set[str]:
            await cur.execute(
                "UPDATE outgoing SET lease_until = %s WHERE id = ANY(%s::text[])"
                " AND claimed_by = %s RETURNING id",
                (now + lease_seconds, list(transfer_ids), worker),
            )
            return {r[0] for r in await cur.fetchall()}

        return await self._run(renew)

    async def finished_outgoing(self, transfer_ids: Sequence[str]) -> list[OutgoingTransfer]:
        async def get(cur: Cursor) -> list[OutgoingTransfer]:
            await cur.execute(
                f"SELECT {OUTGOING_COLUMNS} FROM outgoing o"
                " WHERE state IN (%s, %s) AND id = ANY(%s)",
                (TransferState.DONE.value, TransferState.DEAD.value, list(transfer_ids)),
            )
            return [outgoing_from_row(r) for r in await cur.fetchall()]

        return await self._run(get)

    async def release_claim(self, worker: str, transfer_id: str) -> bool:
        async def release(cur: Cursor) -> bool:
            await cur.execute(
                "UPDATE outgoing SET claimed_by = NULL, lease_until = NULL, updated = %s,"
                " state = CASE WHEN state = %s THEN %s ELSE state END"
                " WHERE id = %s AND claimed_by = %s",
                (
                    time.time(),
                    TransferState.ACTIVE.value,
                    TransferState.QUEUED.value,
                    transfer_id,
                    worker,
                ),
            )
            return cur.rowcount == 1

        return await self._run(release)

    # Receiving side.
    async def note_incoming(
        self, sender: str, transfer_id: str, study_instance_uid: str, total: int, digest: str
    ) -> bytes | None:
        async def note(cur: Cursor) -> bytes | None:
            await cur.execute(
                "INSERT INTO incoming (sender, transfer_id, study_uid, total, digest, first_seen)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (sender, transfer_id, study_instance_uid, total, digest, time.time()),
            )
            await cur.execute(
                "SELECT receipt FROM incoming WHERE sender = %s AND transfer_id = %s",
                (sender, transfer_id),
            )
            row = await cur.fetchone()
            assert row is not None
            return None if row[0] is None else bytes(row[0])

        return await self._run(note)

    async def incoming(self, sender: str, transfer_id: str) -> IncomingTransfer | None:
        async def get(cur: Cursor) -> IncomingTransfer | None:
            await cur.execute(
                "SELECT study_uid, total, digest, receipt FROM incoming"
                " WHERE sender = %s AND transfer_id = %s",
                (sender, transfer_id),
            )
            row = await cur.fetchone()
            return None if row is None else incoming_from_row(sender, transfer_id, row)

        return await self._run(get)

    async def record_received(
        self, sender: str, transfer_id: str, instances: Sequence[IncomingInstance]
    ) -> None:
        async def record(cur: Cursor) -> None:
            await cur.executemany(
                "INSERT INTO incoming_instances (sender, transfer_id, idx, sop_uid, size, digest,"
                " stored) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [
                    (sender, transfer_id, i.index, i.sop_instance_uid, i.size, i.digest, i.stored)
                    for i in instances
                ],
            )

        await self._run(record)

    async def received(self, sender: str, transfer_id: str) -> dict[int, IncomingInstance]:
        async def get(cur: Cursor) -> dict[int, IncomingInstance]:
            await cur.execute(
                "SELECT idx, sop_uid, size, digest, stored FROM incoming_instances"
                " WHERE sender = %s AND transfer_id = %s",
                (sender, transfer_id),
            )
            return {
                idx: IncomingInstance(
                    index=idx, sop_instance_uid=uid, size=size, digest=digest, stored=stored
                )
                for idx, uid, size, digest, stored in await cur.fetchall()
            }

        return await self._run(get)

    async def digests_from(self, sender: str, digests: Sequence[str]) -> set[str]:
        async def get(cur: Cursor) -> set[str]:
            await cur.execute(
                "SELECT DISTINCT digest FROM incoming_instances"
                " WHERE sender = %s AND digest = ANY(%s::text[])",
                (sender, list(digests)),
            )
            return {r[0] for r in await cur.fetchall()}

        return await self._run(get)

    async def record_partial(self, sender: str, transfer_id: str, index: int, offset: int) -> None:
        async def record(cur: Cursor) -> None:
            await cur.execute(
                "INSERT INTO incoming_partials (sender, transfer_id, idx, durable)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (sender, transfer_id, idx)"
                " DO UPDATE SET durable = excluded.durable",
                (sender, transfer_id, index, offset),
            )

        await self._run(record)

    async def partial(self, sender: str, transfer_id: str, index: int) -> int:
        async def get(cur: Cursor) -> int:
            await cur.execute(
                "SELECT durable FROM incoming_partials WHERE sender = %s AND transfer_id = %s"
                " AND idx = %s",
                (sender, transfer_id, index),
            )
            row = await cur.fetchone()
            return 0 if row is None else int(row[0])

        return await self._run(get)

    async def commit_incoming(
        self,
        sender: str,
        transfer_id: str,
        study_instance_uid: str,
        receipt: bytes,
        committed: float,
    ) -> bytes:
        async def commit(cur: Cursor) -> bytes:
            # The row lock makes a concurrent commit of the same transfer (another
            # worker, another connection) wait, then return this one's receipt.
            await cur.execute(
                "SELECT receipt FROM incoming WHERE sender = %s AND transfer_id = %s FOR UPDATE",
                (sender, transfer_id),
            )
            row = await cur.fetchone()
            if row is not None and row[0] is not None:
                return bytes(row[0])
            # A version committed later replaces the one held (a corrected
            # instance re-sent under its UID): the store is what the receipt names.
            # Within one transfer the last index of a UID wins, as in SQLite, and
            # rows are taken in key order so that concurrent commits cannot deadlock.
            await cur.execute(
                "INSERT INTO store (study_uid, sop_uid, digest, size, sender, transfer_id,"
                " committed) SELECT %s, sop_uid, digest, size, sender, transfer_id, %s"
                " FROM (SELECT DISTINCT ON (sop_uid) sop_uid, digest, size, sender, transfer_id"
                " FROM incoming_instances WHERE sender = %s AND transfer_id = %s"
                " ORDER BY sop_uid, idx DESC) AS latest ORDER BY sop_uid"
                " ON CONFLICT (study_uid, sop_uid) DO UPDATE SET digest = excluded.digest,"
                " size = excluded.size, sender = excluded.sender,"
                " transfer_id = excluded.transfer_id, committed = excluded.committed",
                (study_instance_uid, committed, sender, transfer_id),
            )
            await cur.execute(
                "UPDATE incoming SET committed = %s, receipt = %s"
                " WHERE sender = %s AND transfer_id = %s",
                (committed, receipt, sender, transfer_id),
            )
            return receipt

        return await self._run(commit)

    async def study(self, study_instance_uid: str) -> list[tuple[str, str, int]]:
        async def get(cur: Cursor) -> list[tuple[str, str, int]]:
            await cur.execute(
                "SELECT sop_uid, digest, size FROM store WHERE study_uid = %s ORDER BY sop_uid",
                (study_instance_uid,),
            )
            return [(uid, digest, size) for uid, digest, size in await cur.fetchall()]

        return await self._run(get)

    # Delivery into the local PACS.
    async def add_delivery(self, study_instance_uid: str) -> float:
        async def add(cur: Cursor) -> float:
            # Stamps only increase, so a finished delivery can tell a later request.
            await cur.execute(
                "INSERT INTO deliveries (study_uid, state, queued) VALUES (%s, 'pending', %s)"
                " ON CONFLICT (study_uid) DO UPDATE SET state = 'pending', finished = NULL,"
                " queued = greatest(excluded.queued, deliveries.queued + 1e-6::float8)"
                " RETURNING queued",
                (study_instance_uid, time.time()),
            )
            row = await cur.fetchone()
            assert row is not None
            return float(row[0])

        return await self._run(add)

    async def pending_deliveries(self) -> list[tuple[str, float]]:
        async def get(cur: Cursor) -> list[tuple[str, float]]:
            await cur.execute(
                "SELECT study_uid, queued FROM deliveries WHERE state = 'pending' ORDER BY queued"
            )
            return [(r[0], float(r[1])) for r in await cur.fetchall()]

        return await self._run(get)

    async def finish_delivery(
        self, study_instance_uid: str, *, requested: float, delivered: bool, error: str
    ) -> None:
        async def finish(cur: Cursor) -> None:
            await cur.execute(
                "UPDATE deliveries SET state = %s, finished = %s, last_error = %s"
                " WHERE study_uid = %s AND queued = %s",
                (
                    "done" if delivered else "dead",
                    time.time(),
                    error or None,
                    study_instance_uid,
                    requested,
                ),
            )

        await self._run(finish)

    # Both sides.
    async def audit(self, org: str, action: str, transfer_id: str | None, detail: str) -> None:
        async def add(cur: Cursor) -> None:
            await cur.execute(
                "INSERT INTO audit (at, org, action, transfer_id, detail)"
                " VALUES (%s, %s, %s, %s, %s)",
                (time.time(), org, action, transfer_id, detail),
            )

        await self._run(add)

    async def counts(self) -> dict[str, int]:
        async def get(cur: Cursor) -> dict[str, int]:
            out = {s.value: 0 for s in TransferState}
            await cur.execute("SELECT state, count(*) FROM outgoing GROUP BY state")
            for state, n in await cur.fetchall():
                out[state] = n
            await cur.execute("SELECT count(*) FROM incoming WHERE committed IS NOT NULL")
            out["received_committed"] = _scalar(await cur.fetchone())
            await cur.execute("SELECT count(*) FROM store")
            out["stored_instances"] = _scalar(await cur.fetchone())
            await cur.execute("SELECT state, count(*) FROM deliveries GROUP BY state")
            for state, n in await cur.fetchall():
                out[f"deliveries_{state}"] = n
            return out

        return await self._run(get)


def _why(e: Exception) -> str:
    """The first line of a psycopg error (the server's message follows on others)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _scalar(row: tuple[Any, ...] | None) -> int:
    assert row is not None
    return int(row[0])
