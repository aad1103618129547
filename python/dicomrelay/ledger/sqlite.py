"""The embedded ledger: SQLite in WAL mode, synchronous=FULL, one connection
driven from worker threads one transaction at a time; and a second, read-only
one for reads that need not wait behind a write (WAL lets it read the last
committed state meanwhile)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from dicomrelay.errors import LedgerUnavailable
from dicomrelay.ledger.dialect import SQLITE, Dialect
from dicomrelay.ledger.ledger import SqlLedger
from dicomrelay.ledger.migrations import migrate
from dicomrelay.ledger.work import Query, Result, Work, drive

T = TypeVar("T")

MEMORY = ":memory:"

# SQLite's codes for a database it cannot read or write (a full or failing
# disk): the ledger is unavailable until the disk is back, as a PostgreSQL
# ledger is while its server is away.
_UNAVAILABLE = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN")


def _raise_unavailable(e: sqlite3.Error) -> None:
    """LedgerUnavailable in place of ``e`` if it says the disk refused."""
    if (getattr(e, "sqlite_errorname", None) or "").startswith(_UNAVAILABLE):
        raise LedgerUnavailable(f"SQLite ledger: {e}") from e


class SqliteDriver:
    """Runs each transaction whole on a worker thread (one hop off the event
    loop per transaction, never per statement), one at a time. A call once
    started completes even if its caller is cancelled, who sees it after."""

    def __init__(self, path: Path | str) -> None:
        """Open (or create) the database and bring its tables up to date.
        Raises LedgerUnavailable if its disk refuses (full, failing)."""
        try:
            self._db = self._connect(path)
        except sqlite3.OperationalError as e:
            _raise_unavailable(e)
            raise
        try:
            self._transaction(lambda: migrate(SQLITE))
        except BaseException as e:
            self._db.close()
            if isinstance(e, sqlite3.OperationalError):
                _raise_unavailable(e)
            raise
        self._limiter = anyio.CapacityLimiter(1)
        self._reader: sqlite3.Connection | None = None
        if path != MEMORY:  # an in-memory database is its one connection's alone
            try:
                self._reader = self._connect(path)
                self._reader.execute("PRAGMA query_only=ON")
            except BaseException:
                self._db.close()
                raise
        self._read_limiter = anyio.CapacityLimiter(1)

    @property
    def dialect(self) -> Dialect:
        return SQLITE

    @staticmethod
    def _connect(path: Path | str) -> sqlite3.Connection:
        if path != MEMORY:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Transactions are begun and ended here (isolation_level=None), not by sqlite3.
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def _execute(self, query: Query, db: sqlite3.Connection | None = None) -> Result:
        db = self._db if db is None else db
        if query.many:
            cur = db.executemany(query.sql, query.params)
        else:
            cur = db.execute(query.sql, query.params)
        rows = cur.fetchall() if cur.description is not None else []
        return Result(rows, cur.rowcount)

    def _transaction(self, work: Callable[[], Work[T]]) -> T:
        # IMMEDIATE: the write lock from the start, so no transaction fails
        # part-way for want of it (one writer at a time, in this and other processes).
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = drive(work(), self._execute)
            db.execute("COMMIT")  # a full disk can refuse the commit itself
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    async def run(self, work: Callable[[], Work[T]]) -> T:
        """Run ``work`` as one transaction, off the event loop. A disk that
        refuses the write (full, failing) raises LedgerUnavailable, the
        transaction rolled back."""
        try:
            return await anyio.to_thread.run_sync(self._transaction, work, limiter=self._limiter)
        except sqlite3.OperationalError as e:
            _raise_unavailable(e)
            raise

    async def read(self, work: Callable[[], Work[T]]) -> T:
        """Run ``work``, which only reads, as one transaction on the reading
        connection: it sees what was committed when it began and does not
        wait for a write in progress. (In memory: as ``run``.)"""
        reader = self._reader
        if reader is None:
            return await self.run(work)

        def transaction() -> T:
            reader.execute("BEGIN")
            try:
                return drive(work(), lambda query: self._execute(query, reader))
            finally:
                reader.execute("COMMIT")

        try:
            return await anyio.to_thread.run_sync(transaction, limiter=self._read_limiter)
        except sqlite3.OperationalError as e:
            _raise_unavailable(e)
            raise

    async def close(self) -> None:
        if self._reader is not None:
            await anyio.to_thread.run_sync(self._reader.close, limiter=self._read_limiter)
        await anyio.to_thread.run_sync(self._db.close, limiter=self._limiter)


class SqliteLedger(SqlLedger):
    """The ledger in a SQLite file (``MEMORY``: in memory, gone when closed)."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        super().__init__(SqliteDriver(path))


def memory_ledger() -> SqliteLedger:
    """A ledger in memory: the same implementation, for tests of what uses one."""
    return SqliteLedger(MEMORY)
