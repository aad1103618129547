"""The ledger's numbered migrations, on each backend: a ledger any earlier
release made (tables created by that release's own statements, rows in them)
opens, keeps its rows and works; the migrations are applied once, all or none;
a new ledger's tables are the same on both backends."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import psycopg
import pytest
from psycopg import sql

import ledger_old_schemas as old
from dicomrelay.ledger import Ledger, SqliteLedger, TransferState
from dicomrelay.ledger import migrations as migrations_module
from dicomrelay.ledger.migrations import LATEST, MIGRATIONS, Migration
from pg_server import fresh_schema, postgres_url

pytestmark = pytest.mark.anyio
TID = "f" * 32

# Rows every release's tables can hold: a transfer half sent, a study received
# and committed, an audit line. {blob}: the backend's name for bytes.
ROWS = (
    "INSERT INTO outgoing (id, destination, study_uid, priority, digest, chunk_size, state,"
    " attempts, next_attempt, created, updated, total)"
    f" VALUES ('{TID}', 'RX2', '1.2.3', 'routine', 'sha256', 1048576, 'queued', 2, 0, 1, 1, 2)",
    "INSERT INTO outgoing_instances (transfer_id, idx, path, sop_uid, size, digest,"
    f" chunk_digests, acked) VALUES ('{TID}', 0, '/a.dcm', '1.2.3.1', 10, 'd0', 'c0', 5),"
    f" ('{TID}', 1, '/b.dcm', '1.2.3.2', 11, 'd1', 'c1', NULL)",
    "INSERT INTO incoming (sender, transfer_id, study_uid, total, digest, first_seen, committed,"
    " receipt) VALUES ('RX1', 'in1', '4.5.6', 1, 'sha256', 1, 2, CAST('receipt-1' AS {blob}))",
    "INSERT INTO incoming_instances (sender, transfer_id, idx, sop_uid, size, digest, stored)"
    " VALUES ('RX1', 'in1', 0, '4.5.6.1', 9, 'e0', 1)",
    "INSERT INTO store (study_uid, sop_uid, digest, size, sender, transfer_id, committed)"
    " VALUES ('4.5.6', '4.5.6.1', 'e0', 9, 'RX1', 'in1', 2)",
    "INSERT INTO audit (at, org, action, transfer_id, detail)"
    " VALUES (1, 'RX1', 'received', 'in1', 'old')",
)


async def works_as_before(ledger: Ledger) -> None:
    """What the old release recorded is there, and every part of the ledger works."""
    t = await ledger.outgoing(TID)
    assert t is not None
    assert (t.state, t.attempts, t.acked, t.total) == (TransferState.QUEUED, 2, 1, 2)
    assert (t.claimed_by, t.attempts_without_progress) == (None, 0)
    assert [i.index for i in await ledger.pending_instances(TID)] == [1]
    [claimed] = await ledger.claim_outgoing("w1", now=10.0, lease_seconds=5.0, limit=5)
    assert (claimed.id, claimed.claimed_by, claimed.lease_until) == (TID, "w1", 15.0)
    await ledger.set_outgoing_state(TID, TransferState.ACTIVE, attempts_without_progress=3)
    await ledger.mark_acked(TID, [1], at=6.0)
    t = await ledger.outgoing(TID)
    assert t is not None
    assert (t.attempts_without_progress, t.acked) == (3, 2)

    assert await ledger.note_incoming("RX1", "in1", "4.5.6", 1, "sha256") == b"receipt-1"
    assert await ledger.study("4.5.6") == [("4.5.6.1", "e0", 9)]
    assert await ledger.digests_from("RX1", ["e0", "e1"]) == {"e0"}
    await ledger.record_partial("RX1", "in2", 0, 5 << 30)  # a table the first release lacked
    assert await ledger.partial("RX1", "in2", 0) == 5 << 30
    stamp = await ledger.add_delivery("4.5.6")
    assert await ledger.pending_deliveries() == [("4.5.6", stamp)]
    await ledger.audit("RX1", "migrated", None, "new")
    counts = await ledger.counts()
    assert (counts["active"], counts["stored_instances"], counts["deliveries_pending"]) == (1, 1, 1)


def test_migrations_are_numbered_from_one_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert len(MIGRATIONS) == LATEST
    assert all(m.description and m.steps for m in MIGRATIONS)


# SQLite.
def sqlite_versions(path: Path) -> list[tuple[int, float]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT version, applied FROM schema_version ORDER BY version").fetchall()


def sqlite_indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        return {r[0] for r in rows}


@pytest.mark.parametrize(
    "schema",
    [old.SQLITE_FIRST_RELEASE, old.SQLITE_BEFORE_RETRY_BUDGET, old.SQLITE_LAST_UNNUMBERED],
    ids=["first-release", "before-retry-budget", "last-unnumbered"],
)
async def test_an_older_sqlite_ledger_migrates_once_and_works(schema: str, tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(schema)
        for row in ROWS:
            db.execute(row.format(blob="BLOB"))

    ledger = SqliteLedger(path)
    await works_as_before(ledger)
    await ledger.close()
    versions = sqlite_versions(path)
    assert [v for v, _ in versions] == [m.version for m in MIGRATIONS]
    assert "outgoing_state" not in sqlite_indexes(path), "migration 2 replaced it"
    assert {"outgoing_due", "incoming_by_digest", "store_digest"} <= sqlite_indexes(path)
    assert "incoming_digest" not in sqlite_indexes(path), "migration 3 replaced it"

    reopened = SqliteLedger(path)  # nothing left to apply
    assert (await reopened.outgoing(TID)) is not None
    await reopened.close()
    assert sqlite_versions(path) == versions, "a migration applied twice"


async def test_a_failed_migration_leaves_the_ledger_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.sqlite"
    await SqliteLedger(path).close()  # at the latest version
    broken = Migration(LATEST + 1, "broken", ("CREATE TABLE extra (x INTEGER)", "NOT SQL"))
    monkeypatch.setattr(migrations_module, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(sqlite3.OperationalError, match="syntax error"):
        SqliteLedger(path)
    fresh = tmp_path / "fresh.sqlite"
    with pytest.raises(sqlite3.OperationalError, match="syntax error"):
        SqliteLedger(fresh)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'extra'").fetchone() == (
            0,
        )
    with sqlite3.connect(fresh) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [], "nothing half-made"
    assert [v for v, _ in sqlite_versions(path)] == [m.version for m in MIGRATIONS]


async def test_a_ledger_a_newer_release_migrated_opens_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    await SqliteLedger(path).close()
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO schema_version VALUES (?, 'from a newer release', 9)", (LATEST + 1,)
        )
    ledger = SqliteLedger(path)
    await ledger.audit("RX1", "opened", None, "")
    assert (await ledger.counts())["queued"] == 0
    await ledger.close()
    assert [v for v, _ in sqlite_versions(path)][-1] == LATEST + 1


# PostgreSQL.
async def create_postgres(url: str, schema: str, statements: Sequence[str]) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        for statement in statements:
            await conn.execute(statement)
        for row in ROWS:
            await conn.execute(row.format(blob="BYTEA"))


async def postgres_rows(url: str, schema: str, query: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        cur = await conn.execute(query)
        return await cur.fetchall()


@pytest.fixture
async def postgres() -> AsyncIterator[tuple[str, str]]:
    url = postgres_url()
    async with fresh_schema(url) as schema:
        yield url, schema


@pytest.mark.parametrize(
    "statements",
    [old.POSTGRES_BEFORE_RETRY_BUDGET, old.POSTGRES_LAST_UNNUMBERED],
    ids=["before-retry-budget", "last-unnumbered"],
)
async def test_an_older_postgres_ledger_migrates_once_and_works(
    statements: Sequence[str], postgres: tuple[str, str]
) -> None:
    from dicomrelay.ledger.postgres import PostgresLedger

    url, schema = postgres
    await create_postgres(url, schema, statements)
    opened: list[PostgresLedger] = []

    async def open_one() -> None:
        opened.append(await PostgresLedger.open(url, schema=schema))

    async with anyio.create_task_group() as tg:  # several workers upgrading at once
        for _ in range(3):
            tg.start_soon(open_one)
    await works_as_before(opened[0])
    for ledger in opened:
        await ledger.close()
    query = "SELECT version, applied FROM schema_version ORDER BY version"
    versions = await postgres_rows(url, schema, query)
    assert [v for v, _ in versions] == [m.version for m in MIGRATIONS]
    in_schema = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    indexes = {r[0] for r in await postgres_rows(url, schema, in_schema)}
    assert "outgoing_state" not in indexes
    assert {"outgoing_due", "incoming_by_digest", "store_digest"} <= indexes

    reopened = await PostgresLedger.open(url, schema=schema)
    assert (await reopened.outgoing(TID)) is not None
    await reopened.close()
    assert await postgres_rows(url, schema, query) == versions, "a migration applied twice"


async def test_a_failed_postgres_migration_leaves_nothing(
    postgres: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomrelay.ledger.postgres import PostgresLedger

    url, schema = postgres
    broken = Migration(LATEST + 1, "broken", ("CREATE TABLE extra (x INTEGER)", "NOT SQL"))
    monkeypatch.setattr(migrations_module, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(psycopg.errors.SyntaxError):
        await PostgresLedger.open(url, schema=schema)
    query = "SELECT count(*) FROM pg_tables WHERE schemaname = %s"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(query, (schema,))
        assert await cur.fetchone() == (0,), "nothing half-made"


async def test_a_new_ledger_has_the_same_tables_on_both_backends(
    postgres: tuple[str, str], tmp_path: Path
) -> None:
    from dicomrelay.ledger.postgres import PostgresLedger

    url, schema = postgres
    await (await PostgresLedger.open(url, schema=schema)).close()
    on_postgres = await postgres_rows(
        url,
        schema,
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema()",
    )
    await SqliteLedger(tmp_path / "ledger.sqlite").close()
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        on_sqlite = [
            (table, r[1]) for table in tables for r in db.execute(f"PRAGMA table_info({table})")
        ]
    assert sorted(on_sqlite) == sorted(on_postgres)
    assert len(on_sqlite) > 50
    pg_indexes = await postgres_rows(
        url,
        schema,
        "SELECT indexname FROM pg_indexes"
        " WHERE schemaname = current_schema() AND indexname NOT LIKE '%pkey'",
    )
    assert sqlite_indexes(tmp_path / "ledger.sqlite") == {r[0] for r in pg_indexes}
