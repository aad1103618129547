"""Reads beside writes: on SQLite (WAL) a reading statement runs on a
connection of its own, so it neither waits for a write transaction in progress
(here another process's, holding the write lock) nor sees what that
transaction has not committed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from dicomrelay.ledger.sqlite import SqliteLedger, memory_ledger

pytestmark = pytest.mark.anyio
STORE = "s" * 32
A, B = "a" * 64, "b" * 64


async def test_a_read_does_not_wait_for_a_write_in_progress(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = SqliteLedger(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await ledger.record_round(STORE, (1, 4096), [(A, (1, 0, 100))], [])
        other.execute("BEGIN IMMEDIATE")  # the write lock, held
        other.execute(
            "INSERT INTO segment_records (store, digest, segment, record_offset, length)"
            " VALUES (?, ?, 1, 4096, 100)",
            (STORE, B),
        )
        with anyio.fail_after(5):  # a writer would wait up to its 10 s busy timeout
            seen = await ledger.locations(STORE, [A, B])
        assert seen == {A: (1, 0, 100)}, "the committed row, not the one in progress"
        other.execute("COMMIT")
        assert set(await ledger.locations(STORE, [A, B])) == {A, B}
    finally:
        other.close()
        await ledger.close()


async def test_in_memory_reads_use_the_one_connection() -> None:
    ledger = memory_ledger()
    try:
        await ledger.record_round(STORE, (1, 4096), [(A, (1, 0, 100))], [])
        assert await ledger.locations(STORE, [A]) == {A: (1, 0, 100)}
    finally:
        await ledger.close()
