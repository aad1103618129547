"""The embedded ledger: SQLite in WAL mode, synchronous=FULL, one connection
driven from worker threads one call at a time."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

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
from dicomrelay.ledger.schema import SQLITE_ADDED_COLUMNS, SQLITE_SCHEMA

T = TypeVar("T")
SQL_BATCH = 500  # values bound to one IN (...), well under SQLite's limit


# SQLite's codes for a database it cannot read or write (a full or failing
# disk): the ledger is unavailable until the disk is back, as a PostgreSQL
# ledger is while its server is away.
_UNAVAILABLE = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN")


def _raise_unavailable(e: sqlite3.Error) -> None:
    """LedgerUnavailable in place of ``e`` if it says the disk refused."""
    if (getattr(e, "sqlite_errorname", None) or "").startswith(_UNAVAILABLE):
        raise LedgerUnavailable(f"SQLite ledger: {e}") from e


class SqliteLedger:
    def __init__(self, path: Path) -> None:
        """Open (or create) the ledger. Raises LedgerUnavailable if its disk
        refuses (full, failing)."""
        self.path = path
        try:
            self._open(path)
        except sqlite3.OperationalError as e:
            _raise_unavailable(e)
            raise
        self._limiter = anyio.CapacityLimiter(1)

    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(SQLITE_SCHEMA)
        for table, column, kind in SQLITE_ADDED_COLUMNS:
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` as one transaction on the ledger's connection, off the
        event loop. A disk that refuses the write (full, failing) raises
        LedgerUnavailable, the transaction rolled back."""

        def transaction() -> T:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
                db.execute("COMMIT")  # a full disk can refuse the commit itself
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return result

        try:
            return await anyio.to_thread.run_sync(transaction, limiter=self._limiter)
        except sqlite3.OperationalError as e:
            _raise_unavailable(e)
            raise

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._db.close, limiter=self._limiter)

    # Sending side.
    async def add_outgoing(
        self, transfer: OutgoingTransfer, instances: Sequence[OutgoingInstance]
    ) -> None:
        now = time.time()

        def add(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO outgoing ({INSERT_OUTGOING_COLUMNS})"
                f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                outgoing_insert_row(transfer, now),
            )
            db.executemany(
                f"INSERT INTO outgoing_instances ({INSERT_OUTGOING_INSTANCE_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [outgoing_instance_insert_row(transfer.id, i) for i in instances],
            )

        await self._run(add)

    async def outgoing(self, transfer_id: str) -> OutgoingTransfer | None:
        def get(db: sqlite3.Connection) -> OutgoingTransfer | None:
            row = db.execute(
                f"SELECT {OUTGOING_COLUMNS} FROM outgoing o WHERE id = ?", (transfer_id,)
            ).fetchone()
            return None if row is None else outgoing_from_row(row)

        return await self._run(get)

    async def unfinished_outgoing(self) -> list[OutgoingTransfer]:
        def get(db: sqlite3.Connection) -> list[OutgoingTransfer]:
            rows = db.execute(
                f"SELECT {OUTGOING_COLUMNS} FROM outgoing o WHERE state IN (?, ?) ORDER BY created",
                (TransferState.QUEUED.value, TransferState.ACTIVE.value),
            ).fetchall()
            return [outgoing_from_row(r) for r in rows]

        return await self._run(get)

    async def all_outgoing(
        self, limit: int = 1000, *, state: TransferState | None = None
    ) -> list[OutgoingTransfer]:
        def get(db: sqlite3.Connection) -> list[OutgoingTransfer]:
            rows = db.execute(
                f"SELECT {OUTGOING_COLUMNS} FROM outgoing o WHERE ?1 IS NULL OR state = ?1"
                " ORDER BY created DESC LIMIT ?2",
                (None if state is None else state.value, limit),
            ).fetchall()
            return [outgoing_from_row(r) for r in rows]

        return await self._run(get)

    async def pending_instances(self, transfer_id: str) -> list[OutgoingInstance]:
        def get(db: sqlite3.Connection) -> list[OutgoingInstance]:
            rows = db.execute(
                f"SELECT {OUTGOING_INSTANCE_COLUMNS} FROM outgoing_instances"
                " WHERE transfer_id = ? AND acked IS NULL ORDER BY idx",
                (transfer_id,),
            ).fetchall()
            return [outgoing_instance_from_row(r) for r in rows]

        return await self._run(get)

    async def mark_acked(self, transfer_id: str, indexes: Sequence[int], at: float) -> None:
        def mark(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE outgoing_instances SET acked = ? WHERE transfer_id = ? AND idx = ?",
                [(at, transfer_id, i) for i in indexes],
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
        def update(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE outgoing SET state = ?, updated = ?, attempts = coalesce(?, attempts),"
                " attempts_without_progress = coalesce(?, attempts_without_progress),"
                " next_attempt = coalesce(?, next_attempt),"
                " last_error = coalesce(?, last_error), receipt = coalesce(?, receipt)"
                " WHERE id = ?",
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
        def requeue(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE outgoing SET state = ?, attempts_without_progress = 0, next_attempt = ?,"
                " updated = ?, claimed_by = NULL, lease_until = NULL WHERE id = ? AND state = ?",
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

    # Several workers sharing the sending work (one writer at a time: BEGIN IMMEDIATE).
    async def claim_outgoing(
        self,
        worker: str,
        *,
        now: float,
        lease_seconds: float,
        limit: int,
        only: Sequence[str] | None = None,
    ) -> list[OutgoingTransfer]:
        claimable = CLAIMABLE.format(queued=":queued", active=":active", now=":now")
        among = "" if only is None else " AND id IN (SELECT value FROM json_each(:only))"

        def claim(db: sqlite3.Connection) -> list[OutgoingTransfer]:
            ids = [
                r[0]
                for r in db.execute(
                    f"SELECT id FROM outgoing WHERE {claimable}{among}"
                    f" ORDER BY {PRIORITY_ORDER} LIMIT :limit",
                    {
                        "queued": TransferState.QUEUED.value,
                        "active": TransferState.ACTIVE.value,
                        "now": now,
                        "limit": limit,
                        "only": json.dumps(list(only or ())),
                    },
                )
            ]
            db.executemany(
                "UPDATE outgoing SET claimed_by = ?, lease_until = ?, updated = ? WHERE id = ?",
                [(worker, now + lease_seconds, time.time(), i) for i in ids],
            )
            order = {i: n for n, i in enumerate(ids)}
            rows = db.execute(
                f"SELECT {OUTGOING_COLUMNS} FROM outgoing o"
                f" WHERE id IN ({','.join('?' * len(ids))})",
                ids,
            ).fetchall()
            return sorted((outgoing_from_row(r) for r in rows), key=lambda t: order[t.id])

        return await self._run(claim)

    async def release_claims(self, worker: str) -> int:
        def release(db: sqlite3.Connection) -> int:
            return db.execute(
                "UPDATE outgoing SET claimed_by = NULL, lease_until = NULL, updated = ?,"
                " state = CASE WHEN state = ? THEN ? ELSE state END WHERE claimed_by = ?",
                (time.time(), TransferState.ACTIVE.value, TransferState.QUEUED.value, worker),
            ).rowcount

        return await self._run(release)

    async def renew_lease(
        self, worker: str, transfer_ids: Sequence[str], *, now: float, lease_seconds: float
    ) -> set[str]:
        def renew(db: sqlite3.Connection) -> set[str]:
            held: set[str] = set()
            for i in transfer_ids:
                row = db.execute(
                    "UPDATE outgoing SET lease_until = ? WHERE id = ? AND claimed_by = ?"
                    " RETURNING id",
                    (now + lease_seconds, i, worker),
                ).fetchone()
                if row is not None:
                    held.add(row[0])
            return held

        return await self._run(renew)

    async def finished_outgoing(self, transfer_ids: Sequence[str]) -> list[OutgoingTransfer]:
        ids = list(transfer_ids)

        def get(db: sqlite3.Connection) -> list[OutgoingTransfer]:
            found: list[OutgoingTransfer] = []
            for start in range(0, len(ids), SQL_BATCH):
                batch = ids[start : start + SQL_BATCH]
                rows = db.execute(
                    f"SELECT {OUTGOING_COLUMNS} FROM outgoing o WHERE state IN (?, ?)"
                    f" AND id IN ({','.join('?' * len(batch))})",
                    (TransferState.DONE.value, TransferState.DEAD.value, *batch),
                ).fetchall()
                found.extend(outgoing_from_row(r) for r in rows)
            return found

        return await self._run(get)

    async def release_claim(self, worker: str, transfer_id: str) -> bool:
        def release(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE outgoing SET claimed_by = NULL, lease_until = NULL, updated = ?,"
                " state = CASE WHEN state = ? THEN ? ELSE state END"
                " WHERE id = ? AND claimed_by = ?",
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
        def note(db: sqlite3.Connection) -> bytes | None:
            db.execute(
                "INSERT OR IGNORE INTO incoming (sender, transfer_id, study_uid, total, digest,"
                " first_seen) VALUES (?, ?, ?, ?, ?, ?)",
                (sender, transfer_id, study_instance_uid, total, digest, time.time()),
            )
            row = db.execute(
                "SELECT receipt FROM incoming WHERE sender = ? AND transfer_id = ?",
                (sender, transfer_id),
            ).fetchone()
            return None if row[0] is None else bytes(row[0])

        return await self._run(note)

    async def incoming(self, sender: str, transfer_id: str) -> IncomingTransfer | None:
        def get(db: sqlite3.Connection) -> IncomingTransfer | None:
            row = db.execute(
                "SELECT study_uid, total, digest, receipt FROM incoming"
                " WHERE sender = ? AND transfer_id = ?",
                (sender, transfer_id),
            ).fetchone()
            return None if row is None else incoming_from_row(sender, transfer_id, row)

        return await self._run(get)

    async def record_received(
        self, sender: str, transfer_id: str, instances: Sequence[IncomingInstance]
    ) -> None:
        def record(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO incoming_instances (sender, transfer_id, idx, sop_uid,"
                " size, digest, stored) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (sender, transfer_id, i.index, i.sop_instance_uid, i.size, i.digest, i.stored)
                    for i in instances
                ],
            )

        await self._run(record)

    async def received(self, sender: str, transfer_id: str) -> dict[int, IncomingInstance]:
        def get(db: sqlite3.Connection) -> dict[int, IncomingInstance]:
            rows = db.execute(
                "SELECT idx, sop_uid, size, digest, stored FROM incoming_instances"
                " WHERE sender = ? AND transfer_id = ?",
                (sender, transfer_id),
            ).fetchall()
            return {
                idx: IncomingInstance(
                    index=idx, sop_instance_uid=uid, size=size, digest=digest, stored=stored
                )
                for idx, uid, size, digest, stored in rows
            }

        return await self._run(get)

    async def digests_from(self, sender: str, digests: Sequence[str]) -> set[str]:
        def get(db: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            wanted = list(digests)
            for i in range(0, len(wanted), SQL_BATCH):
                part = wanted[i : i + SQL_BATCH]
                marks = ",".join("?" * len(part))
                rows = db.execute(
                    f"SELECT DISTINCT digest FROM incoming_instances"
                    f" WHERE sender = ? AND digest IN ({marks})",
                    (sender, *part),
                )
                found.update(r[0] for r in rows)
            return found

        return await self._run(get)

    async def record_partial(self, sender: str, transfer_id: str, index: int, offset: int) -> None:
        def record(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO incoming_partials (sender, transfer_id, idx, durable)"
                " VALUES (?, ?, ?, ?)",
                (sender, transfer_id, index, offset),
            )

        await self._run(record)

    async def partial(self, sender: str, transfer_id: str, index: int) -> int:
        def get(db: sqlite3.Connection) -> int:
            row = db.execute(
                "SELECT durable FROM incoming_partials WHERE sender = ? AND transfer_id = ?"
                " AND idx = ?",
                (sender, transfer_id, index),
            ).fetchone()
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
        def commit(db: sqlite3.Connection) -> bytes:
            row = db.execute(
                "SELECT receipt FROM incoming WHERE sender = ? AND transfer_id = ?",
                (sender, transfer_id),
            ).fetchone()
            if row is not None and row[0] is not None:
                return bytes(row[0])
            # A version committed later replaces the one held (a corrected
            # instance re-sent under its UID): the store is what the receipt names.
            db.execute(
                "INSERT INTO store (study_uid, sop_uid, digest, size, sender,"
                " transfer_id, committed) SELECT ?, sop_uid, digest, size, sender, transfer_id, ?"
                " FROM incoming_instances WHERE sender = ? AND transfer_id = ? ORDER BY idx"
                " ON CONFLICT (study_uid, sop_uid) DO UPDATE SET digest = excluded.digest,"
                " size = excluded.size, sender = excluded.sender,"
                " transfer_id = excluded.transfer_id, committed = excluded.committed",
                (study_instance_uid, committed, sender, transfer_id),
            )
            db.execute(
                "UPDATE incoming SET committed = ?, receipt = ?"
                " WHERE sender = ? AND transfer_id = ?",
                (committed, receipt, sender, transfer_id),
            )
            return receipt

        return await self._run(commit)

    async def study(self, study_instance_uid: str) -> list[tuple[str, str, int]]:
        def get(db: sqlite3.Connection) -> list[tuple[str, str, int]]:
            return db.execute(
                "SELECT sop_uid, digest, size FROM store WHERE study_uid = ? ORDER BY sop_uid",
                (study_instance_uid,),
            ).fetchall()

        return await self._run(get)

    # Delivery into the local PACS.
    async def add_delivery(self, study_instance_uid: str) -> float:
        def add(db: sqlite3.Connection) -> float:
            # Stamps only increase, so a finished delivery can tell a later request.
            row = db.execute(
                "INSERT INTO deliveries (study_uid, state, queued) VALUES (?, 'pending', ?)"
                " ON CONFLICT (study_uid) DO UPDATE SET state = 'pending', finished = NULL,"
                " queued = max(excluded.queued, deliveries.queued + 1e-6) RETURNING queued",
                (study_instance_uid, time.time()),
            ).fetchone()
            return float(row[0])

        return await self._run(add)

    async def pending_deliveries(self) -> list[tuple[str, float]]:
        def get(db: sqlite3.Connection) -> list[tuple[str, float]]:
            rows = db.execute(
                "SELECT study_uid, queued FROM deliveries WHERE state = 'pending' ORDER BY queued"
            )
            return [(r[0], float(r[1])) for r in rows]

        return await self._run(get)

    async def finish_delivery(
        self, study_instance_uid: str, *, requested: float, delivered: bool, error: str
    ) -> None:
        def finish(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE deliveries SET state = ?, finished = ?, last_error = ?"
                " WHERE study_uid = ? AND queued = ?",
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
        def add(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO audit (at, org, action, transfer_id, detail) VALUES (?, ?, ?, ?, ?)",
                (time.time(), org, action, transfer_id, detail),
            )

        await self._run(add)

    async def counts(self) -> dict[str, int]:
        def get(db: sqlite3.Connection) -> dict[str, int]:
            out = {s.value: 0 for s in TransferState}
            for state, n in db.execute("SELECT state, count(*) FROM outgoing GROUP BY state"):
                out[state] = n
            out["received_committed"] = db.execute(
                "SELECT count(*) FROM incoming WHERE committed IS NOT NULL"
            ).fetchone()[0]
            out["stored_instances"] = db.execute("SELECT count(*) FROM store").fetchone()[0]
            for state, n in db.execute("SELECT state, count(*) FROM deliveries GROUP BY state"):
                out[f"deliveries_{state}"] = n
            return out

        return await self._run(get)
