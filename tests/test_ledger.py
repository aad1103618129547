"""The ledger, on each backend (SQLite, PostgreSQL): what it records survives
reopening; commits are atomic and idempotent; delivery stamps; claims of
sending work by several workers at once. And the same ledger in memory, for
tests of what uses one."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from dicomrelay.ledger import (
    IncomingInstance,
    Ledger,
    OutgoingInstance,
    OutgoingTransfer,
    SqliteLedger,
    TransferState,
    memory_ledger,
)
from pg_server import fresh_schema, postgres_url

pytestmark = pytest.mark.anyio
TID = "f" * 32


@pytest.fixture(params=[False, True], ids=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return "asyncio", {"use_uvloop": request.param}


@dataclass
class Backend:
    """Opens ledgers on one store: each call a new ledger (new connections) on it."""

    name: str
    open: Callable[[], Awaitable[Ledger]]


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":

        async def open_sqlite() -> Ledger:
            return SqliteLedger(tmp_path / "ledger.sqlite")

        yield Backend("sqlite", open_sqlite)
        return
    url = postgres_url()
    from dicomrelay.ledger.postgres import PostgresLedger

    async with fresh_schema(url) as schema:

        async def open_postgres() -> Ledger:
            return await PostgresLedger.open(url, schema=schema)

        yield Backend("postgres", open_postgres)


def transfer(
    total: int = 3,
    *,
    id: str = TID,
    priority: str = "routine",
    created: float = 1.0,
    next_attempt: float = 0.0,
) -> OutgoingTransfer:
    return OutgoingTransfer(
        id=id,
        destination="RX2",
        study_instance_uid="1.2.3",
        priority=priority,
        digest="sha256",
        chunk_size=1 << 20,
        state=TransferState.QUEUED,
        attempts=0,
        next_attempt=next_attempt,
        created=created,
        total=total,
    )


def instances(n: int = 3) -> list[OutgoingInstance]:
    return [
        OutgoingInstance(
            index=i,
            path=f"/src/{i}.dcm",
            sop_instance_uid=f"1.2.3.{i}",
            size=100 + i,
            digest=f"{i:064x}",
            chunk_digests=(f"{i:064x}",),
        )
        for i in range(n)
    ]


def received(uids_digests: list[tuple[str, str]]) -> list[IncomingInstance]:
    return [
        IncomingInstance(index=n, sop_instance_uid=uid, size=9, digest=digest, stored=1.0)
        for n, (uid, digest) in enumerate(uids_digests)
    ]


async def test_outgoing_state_and_acks_survive_reopening(backend: Backend) -> None:
    ledger = await backend.open()
    await ledger.add_outgoing(transfer(), instances())
    await ledger.mark_acked(TID, [0, 2], at=5.0)
    await ledger.set_outgoing_state(TID, TransferState.ACTIVE, attempts=2, error="boom")
    await ledger.close()

    ledger = await backend.open()
    [t] = await ledger.unfinished_outgoing()
    assert (t.state, t.attempts, t.acked, t.last_error) == (TransferState.ACTIVE, 2, 2, "boom")
    assert (t.claimed_by, t.lease_until) == (None, None)
    pending = await ledger.pending_instances(TID)
    assert [i.index for i in pending] == [1]
    assert pending[0].chunk_digests == (f"{1:064x}",)
    await ledger.set_outgoing_state(TID, TransferState.DONE, receipt=b"{}")
    assert await ledger.unfinished_outgoing() == []
    done = await ledger.outgoing(TID)
    assert done is not None
    assert (done.receipt, done.last_error, done.attempts) == (b"{}", "boom", 2)
    assert [t.id for t in await ledger.all_outgoing()] == [TID]
    assert (await ledger.counts())["done"] == 1
    await ledger.close()


async def test_incoming_commit_is_atomic_and_idempotent(backend: Backend) -> None:
    ledger = await backend.open()
    assert await ledger.note_incoming("RX1", TID, "1.2.3", 2, "sha256") is None
    got = received([("u0", f"{0:064x}"), ("u1", f"{1:064x}")])
    await ledger.record_received("RX1", TID, got[:1])
    await ledger.record_received("RX1", TID, got)  # a repeat stores nothing twice
    assert sorted(await ledger.received("RX1", TID)) == [0, 1]
    assert await ledger.study("1.2.3") == []  # nothing visible before the commit
    assert await ledger.digests_from("RX1", [f"{1:064x}", f"{7:064x}"]) == {f"{1:064x}"}
    assert await ledger.digests_from("RX9", [f"{1:064x}"]) == set()
    assert await ledger.digests_from("RX1", []) == set()

    first = await ledger.commit_incoming("RX1", TID, "1.2.3", b"receipt-1", 2.0)
    again = await ledger.commit_incoming("RX1", TID, "1.2.3", b"receipt-2", 3.0)
    assert first == again == b"receipt-1"
    assert len(await ledger.study("1.2.3")) == 2
    assert await ledger.note_incoming("RX1", TID, "1.2.3", 2, "sha256") == b"receipt-1"
    incoming = await ledger.incoming("RX1", TID)
    assert incoming is not None
    assert (incoming.total, incoming.receipt) == (2, b"receipt-1")
    assert await ledger.incoming("RX9", TID) is None
    counts = await ledger.counts()
    assert (counts["received_committed"], counts["stored_instances"]) == (1, 2)
    await ledger.close()


async def test_concurrent_commits_of_one_transfer_return_one_receipt(backend: Backend) -> None:
    """Two workers committing the same transfer at once: one receipt is kept and
    both are answered with it."""
    ledgers = [await backend.open() for _ in range(2)]
    await ledgers[0].note_incoming("RX1", TID, "1.2.3", 2, "sha256")
    await ledgers[0].record_received("RX1", TID, received([("u0", "a" * 64), ("u1", "b" * 64)]))
    answers: list[bytes] = []

    async def commit(ledger: Ledger, receipt: bytes) -> None:
        answers.append(await ledger.commit_incoming("RX1", TID, "1.2.3", receipt, 2.0))

    async with anyio.create_task_group() as tg:
        for n, ledger in enumerate(ledgers):
            tg.start_soon(commit, ledger, f"receipt-{n}".encode())
    kept = await ledgers[0].incoming("RX1", TID)
    assert kept is not None
    assert answers == [kept.receipt, kept.receipt]
    for ledger in ledgers:
        await ledger.close()


async def test_a_later_committed_version_replaces_the_one_held(backend: Backend) -> None:
    ledger = await backend.open()
    for tid, uids in (
        ("1" * 32, [("u0", "a" * 64), ("u1", "b" * 64)]),
        # A corrected u1, and (as a careless sender may) u2 twice: its last index wins.
        ("2" * 32, [("u1", "c" * 64), ("u2", "d" * 64), ("u2", "e" * 64)]),
    ):
        await ledger.note_incoming("RX1", tid, "1.2.3", len(uids), "sha256")
        await ledger.record_received("RX1", tid, received(uids))
        await ledger.commit_incoming("RX1", tid, "1.2.3", tid.encode(), 2.0)
    assert await ledger.study("1.2.3") == [
        ("u0", "a" * 64, 9),
        ("u1", "c" * 64, 9),
        ("u2", "e" * 64, 9),
    ]
    await ledger.close()


async def test_partials_keep_the_latest_durable_offset(backend: Backend) -> None:
    ledger = await backend.open()
    assert await ledger.partial("RX1", TID, 0) == 0
    await ledger.record_partial("RX1", TID, 0, 64 << 20)
    await ledger.record_partial("RX1", TID, 0, 5 << 30)  # past 32 bits
    assert await ledger.partial("RX1", TID, 0) == 5 << 30
    assert await ledger.partial("RX1", TID, 1) == 0
    await ledger.audit("RX1", "received", TID, "detail")
    await ledger.audit("RX1", "refused", None, "detail")
    await ledger.close()


async def test_a_failed_transaction_leaves_nothing(backend: Backend) -> None:
    ledger = await backend.open()
    await ledger.add_outgoing(transfer(), instances())
    with pytest.raises(Exception, match=r"(?i)unique"):
        await ledger.add_outgoing(transfer(), instances())
    assert len(await ledger.pending_instances(TID)) == 3
    with pytest.raises(Exception, match=r"(?i)unique"):
        # The transfer is new, its instances are not: the transfer is not kept either.
        await ledger.add_outgoing(transfer(id="e" * 32), [*instances(2), *instances(1)])
    assert await ledger.outgoing("e" * 32) is None
    await ledger.close()


async def test_a_commit_records_what_it_owes_next(backend: Backend) -> None:
    """The delivery into the PACS, or the reconciliation, that a commit owes is
    recorded in the commit's own transaction: a node killed right after the
    commit finds it on restart. A repeated commit owes nothing again."""
    ledger = await backend.open()
    for tid, study in (("d" * 32, "1.2.1"), ("r" * 32, "1.2.2"), ("n" * 32, "1.2.3")):
        await ledger.note_incoming("RX1", tid, study, 1, "sha256")
        await ledger.record_received("RX1", tid, received([(f"u{study}", f"{1:064x}")]))
    await ledger.commit_incoming("RX1", "d" * 32, "1.2.1", b"r1", 2.0, then="deliver")
    await ledger.commit_incoming(
        "RX1", "r" * 32, "1.2.2", b"r2", 2.0, then="reconcile", priority="urgent"
    )
    await ledger.commit_incoming("RX1", "n" * 32, "1.2.3", b"r3", 2.0)
    await ledger.close()
    ledger = await backend.open()  # as after a crash
    [(study, first)] = await ledger.pending_deliveries()
    assert study == "1.2.1"
    [owed] = await ledger.reconciliations()
    assert (owed.transfer_id, owed.study_uid, owed.state, owed.priority) == (
        "r" * 32,
        "1.2.2",
        "pending",
        "urgent",
    )
    # Committed before: the receipt kept, nothing owed twice.
    await ledger.commit_incoming("RX1", "d" * 32, "1.2.1", b"again", 3.0, then="deliver")
    assert await ledger.pending_deliveries() == [("1.2.1", first)]
    # A reconciliation finished with its delivery: requested in that transaction.
    await ledger.finish_reconciliation(
        "RX1",
        "r" * 32,
        "1.2.2",
        [],
        rule=None,
        foreign_patient_id=None,
        foreign_issuer=None,
        local_patient_id=None,
        local_issuer=None,
        reason="no inbound rule reconciles its instances",
        deliver=True,
    )
    assert [s for s, _ in await ledger.pending_deliveries()] == ["1.2.1", "1.2.2"]
    await ledger.close()


async def test_a_delivery_asked_for_again_stays_due(backend: Backend) -> None:
    """A delivery that finishes after the study was asked for again (a newer
    version committed meanwhile) does not close the newer request."""
    ledger = await backend.open()
    first = await ledger.add_delivery("1.2.3")
    second = await ledger.add_delivery("1.2.3")
    assert second > first
    await ledger.finish_delivery("1.2.3", requested=first, delivered=True, error="")
    assert await ledger.pending_deliveries() == [("1.2.3", second)]
    await ledger.finish_delivery("1.2.3", requested=second, delivered=True, error="")
    assert await ledger.pending_deliveries() == []
    third = await ledger.add_delivery("1.2.3")
    await ledger.finish_delivery("1.2.3", requested=third, delivered=False, error="refused")
    assert (await ledger.counts())["deliveries_dead"] == 1
    await ledger.close()
    reopened = await backend.open()
    assert await reopened.pending_deliveries() == []
    await reopened.close()


# Claims: several workers sharing one ledger's sending work.
async def test_claims_take_due_transfers_most_urgent_first(backend: Backend) -> None:
    ledger = await backend.open()
    await ledger.add_outgoing(transfer(id="r" * 32, created=1.0), instances())
    await ledger.add_outgoing(transfer(id="b" * 32, priority="bulk", created=0.5), instances())
    await ledger.add_outgoing(transfer(id="u" * 32, priority="urgent", created=3.0), instances())
    await ledger.add_outgoing(transfer(id="l" * 32, next_attempt=150.0), instances())  # not due
    await ledger.add_outgoing(transfer(id="d" * 32), instances())
    await ledger.set_outgoing_state("d" * 32, TransferState.DONE)

    claimed = await ledger.claim_outgoing("w1", now=100.0, lease_seconds=100.0, limit=2)
    assert [t.id for t in claimed] == ["u" * 32, "r" * 32]
    assert {(t.claimed_by, t.lease_until) for t in claimed} == {("w1", 200.0)}
    assert [t.acked for t in claimed] == [0, 0]
    # What w1 holds, nobody else gets: w2 gets the rest of what is due.
    rest = await ledger.claim_outgoing("w2", now=100.0, lease_seconds=100.0, limit=10)
    assert [t.id for t in rest] == ["b" * 32]
    assert await ledger.claim_outgoing("w3", now=100.0, lease_seconds=30.0, limit=10) == []
    # Later, the retry is due.
    later = await ledger.claim_outgoing("w3", now=160.0, lease_seconds=30.0, limit=1)
    assert [t.id for t in later] == ["l" * 32]

    # Given back after its attempt, a transfer is free for anyone once due.
    assert await ledger.release_claim("w1", "r" * 32)
    assert not await ledger.release_claim("w1", "r" * 32)
    assert not await ledger.release_claim("w2", "u" * 32)  # not w2's to give
    freed = await ledger.outgoing("r" * 32)
    assert freed is not None
    assert (freed.claimed_by, freed.lease_until) == (None, None)
    again = await ledger.claim_outgoing("w2", now=101.0, lease_seconds=30.0, limit=10)
    assert [t.id for t in again] == ["r" * 32]

    # An attempt cut short (its worker stopping) leaves the transfer active:
    # given back, it is queued again for any worker, not stranded.
    await ledger.set_outgoing_state("r" * 32, TransferState.ACTIVE)
    assert await ledger.release_claim("w2", "r" * 32)
    stranded = await ledger.outgoing("r" * 32)
    assert stranded is not None
    assert (stranded.state, stranded.claimed_by) == (TransferState.QUEUED, None)
    resumed = await ledger.claim_outgoing("w3", now=102.0, lease_seconds=30.0, limit=10)
    assert [t.id for t in resumed] == ["r" * 32]
    # A finished one keeps its state when given back.
    await ledger.set_outgoing_state("r" * 32, TransferState.DONE, receipt=b"{}")
    assert await ledger.release_claim("w3", "r" * 32)
    finished = await ledger.outgoing("r" * 32)
    assert finished is not None
    assert finished.state is TransferState.DONE
    await ledger.close()


async def test_finished_transfers_are_found_among_many(backend: Backend) -> None:
    ledger = await backend.open()
    ids = [f"{n:032x}" for n in range(1200)]  # more than one SQL batch
    for n, transfer_id in enumerate(ids):
        await ledger.add_outgoing(transfer(id=transfer_id), instances(1))
        if n % 300 == 7:
            await ledger.set_outgoing_state(transfer_id, TransferState.DONE, receipt=b"{}")
        elif n % 300 == 8:
            await ledger.set_outgoing_state(transfer_id, TransferState.DEAD, error="refused")
        elif n % 300 == 9:
            await ledger.set_outgoing_state(transfer_id, TransferState.ACTIVE)
    found = await ledger.finished_outgoing([*ids, "f" * 32])  # one it never had
    expected = {i for n, i in enumerate(ids) if n % 300 in (7, 8)}
    assert {t.id for t in found} == expected
    assert {t.state for t in found} == {TransferState.DONE, TransferState.DEAD}
    assert await ledger.finished_outgoing([]) == []
    await ledger.close()


async def test_an_expired_lease_is_claimable_again(backend: Backend) -> None:
    ledger = await backend.open()
    await ledger.add_outgoing(transfer(id="q" * 32), instances())
    await ledger.add_outgoing(transfer(id="a" * 32, created=2.0), instances())
    [q, a] = await ledger.claim_outgoing("w1", now=100.0, lease_seconds=10.0, limit=5)
    # w1 starts "a" and dies mid-attempt; it kept "q" queued (say, waiting for a slot).
    await ledger.set_outgoing_state(a.id, TransferState.ACTIVE)
    assert await ledger.renew_lease("w1", [q.id, a.id], now=105.0, lease_seconds=10.0) == {
        q.id,
        a.id,
    }
    assert await ledger.claim_outgoing("w2", now=114.0, lease_seconds=10.0, limit=5) == []

    taken = await ledger.claim_outgoing("w2", now=115.0, lease_seconds=10.0, limit=5)
    assert [(t.id, t.state, t.claimed_by) for t in taken] == [
        (q.id, TransferState.QUEUED, "w2"),
        (a.id, TransferState.ACTIVE, "w2"),
    ]
    # w1 comes back: its leases are lost, and it cannot give back what it lost.
    assert await ledger.renew_lease("w1", [q.id, a.id], now=116.0, lease_seconds=10.0) == set()
    assert not await ledger.release_claim("w1", a.id)
    assert await ledger.renew_lease("w2", [a.id], now=116.0, lease_seconds=10.0) == {a.id}

    # An active transfer that no lease holds (left by a release whose nodes
    # held none) is taken too: nobody else will ever finish it.
    await ledger.add_outgoing(transfer(id="n" * 32), instances())
    await ledger.set_outgoing_state("n" * 32, TransferState.ACTIVE)
    taken = await ledger.claim_outgoing("w3", now=1e12, lease_seconds=10.0, limit=5)
    assert [t.id for t in taken] == ["n" * 32, q.id, a.id]
    assert taken == [await ledger.outgoing(t) for t in ("n" * 32, q.id, a.id)]
    await ledger.close()


async def test_a_worker_claims_only_what_it_is_told_and_takes_back_its_own(
    backend: Backend,
) -> None:
    """``only``: a sender of its own transfer claims nothing else; a worker
    starting again gives back, at once, what it held when it stopped."""
    ledger = await backend.open()
    ids = [c * 32 for c in "abc"]
    for n, i in enumerate(ids):
        await ledger.add_outgoing(transfer(id=i, created=float(n)), instances())
    assert await ledger.claim_outgoing("w1", now=10.0, lease_seconds=60, limit=5, only=[]) == []
    [mine] = await ledger.claim_outgoing(
        "w1", now=10.0, lease_seconds=60, limit=5, only=[ids[1], "f" * 32]
    )
    assert (mine.id, mine.claimed_by) == (ids[1], "w1")
    rest = await ledger.claim_outgoing("w2", now=10.0, lease_seconds=60, limit=5)
    assert [t.id for t in rest] == [ids[0], ids[2]]
    await ledger.set_outgoing_state(ids[0], TransferState.ACTIVE)
    # w2 dies and comes back (same name): everything it held is due again now.
    assert await ledger.release_claims("w2") == 2
    assert await ledger.release_claims("w2") == 0
    back = {t.id: t for t in await ledger.all_outgoing()}
    assert (back[ids[0]].state, back[ids[0]].claimed_by) == (TransferState.QUEUED, None)
    assert (back[ids[2]].state, back[ids[2]].claimed_by) == (TransferState.QUEUED, None)
    assert back[ids[1]].claimed_by == "w1", "another worker's claim stays"
    await ledger.close()


async def test_a_dead_letter_is_queued_again_with_a_fresh_budget(backend: Backend) -> None:
    ledger = await backend.open()
    await ledger.add_outgoing(transfer(id="d" * 32), instances())
    await ledger.add_outgoing(transfer(id="q" * 32, created=2.0), instances())
    await ledger.set_outgoing_state(
        "d" * 32, TransferState.DEAD, attempts=9, attempts_without_progress=3, error="refused"
    )
    assert not await ledger.requeue_dead("q" * 32, now=50.0), "only a dead letter"
    assert not await ledger.requeue_dead("f" * 32, now=50.0)
    [dead] = await ledger.all_outgoing(state=TransferState.DEAD)
    assert (dead.id, dead.last_error, dead.attempts_without_progress) == ("d" * 32, "refused", 3)
    assert len(await ledger.all_outgoing(state=TransferState.QUEUED)) == 1
    assert await ledger.requeue_dead("d" * 32, now=50.0)
    again = await ledger.outgoing("d" * 32)
    assert again is not None
    assert (again.state, again.next_attempt, again.attempts_without_progress) == (
        TransferState.QUEUED,
        50.0,
        0,
    )
    assert (again.attempts, again.last_error) == (9, "refused"), "its history stays"
    assert await ledger.all_outgoing(state=TransferState.DEAD) == []
    claimed = await ledger.claim_outgoing("w1", now=50.0, lease_seconds=10, limit=5)
    assert [t.id for t in claimed] == ["d" * 32, "q" * 32]
    await ledger.close()


async def test_concurrent_claimers_never_share_a_transfer(backend: Backend) -> None:
    """Three ledgers (their own connections), two claiming tasks on each, take
    small batches until nothing is due: every transfer is claimed exactly once."""
    setup = await backend.open()
    ids = [f"{n:032x}" for n in range(60)]
    for n, tid in enumerate(ids):
        priority = ("urgent", "routine", "bulk")[n % 3]
        await setup.add_outgoing(transfer(1, id=tid, priority=priority, created=n), instances(1))
    await setup.close()

    ledgers: list[Ledger] = []

    async def open_one() -> None:
        ledgers.append(await backend.open())  # at once: schema creation races too

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(open_one)

    claims: dict[str, list[str]] = {}

    async def claimer(worker: str, ledger: Ledger) -> None:
        mine = claims.setdefault(worker, [])
        while batch := await ledger.claim_outgoing(worker, now=100.0, lease_seconds=60, limit=2):
            assert all(t.claimed_by == worker for t in batch)
            mine.extend(t.id for t in batch)
            await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        for n, ledger in enumerate(ledgers):
            for k in range(2):
                tg.start_soon(claimer, f"w{n}.{k}", ledger)

    everything = [tid for mine in claims.values() for tid in mine]
    assert sorted(everything) == ids, "a transfer claimed twice, or never"
    assert sum(1 for mine in claims.values() if mine) >= 2, "one claimer took everything"
    for t in await ledgers[0].all_outgoing():
        assert t.id in claims[str(t.claimed_by)]
    for ledger in ledgers:
        await ledger.close()


async def test_an_older_sqlite_ledger_gains_the_claim_columns(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE outgoing (id TEXT PRIMARY KEY, destination TEXT NOT NULL,"
        " study_uid TEXT NOT NULL, priority TEXT NOT NULL, digest TEXT NOT NULL,"
        " chunk_size INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
        " next_attempt REAL NOT NULL DEFAULT 0, created REAL NOT NULL, updated REAL NOT NULL,"
        " total INTEGER NOT NULL, last_error TEXT, receipt BLOB)"
    )
    db.execute(
        "INSERT INTO outgoing (id, destination, study_uid, priority, digest, chunk_size, state,"
        " created, updated, total) VALUES (?, 'RX2', '1.2.3', 'routine', 'sha256', 1, 'queued',"
        " 1, 1, 0)",
        (TID,),
    )
    db.commit()
    db.close()

    ledger = SqliteLedger(path)
    [t] = await ledger.claim_outgoing("w1", now=5.0, lease_seconds=1.0, limit=5)
    await ledger.set_outgoing_state(TID, TransferState.QUEUED, attempts_without_progress=2)
    again = await ledger.outgoing(TID)
    await ledger.close()
    assert (t.id, t.claimed_by, t.lease_until) == (TID, "w1", 6.0)
    assert (t.attempts_without_progress, again and again.attempts_without_progress) == (0, 2)


async def test_an_older_postgres_ledger_gains_the_retry_budget_column() -> None:
    url = postgres_url()
    import psycopg
    from psycopg import sql

    from dicomrelay.ledger.postgres import PostgresLedger

    async with fresh_schema(url) as schema:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            await conn.execute(
                "CREATE TABLE outgoing (id TEXT PRIMARY KEY, destination TEXT NOT NULL,"
                " study_uid TEXT NOT NULL, priority TEXT NOT NULL, digest TEXT NOT NULL,"
                " chunk_size INTEGER NOT NULL, state TEXT NOT NULL,"
                " attempts INTEGER NOT NULL DEFAULT 0,"
                " next_attempt DOUBLE PRECISION NOT NULL DEFAULT 0,"
                " created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL,"
                " total INTEGER NOT NULL, last_error TEXT, receipt BYTEA, claimed_by TEXT,"
                " lease_until DOUBLE PRECISION)"
            )
            await conn.execute(
                "INSERT INTO outgoing (id, destination, study_uid, priority, digest, chunk_size,"
                " state, created, updated, total) VALUES (%s, 'RX2', '1.2.3', 'routine',"
                " 'sha256', 1, 'dead', 1, 1, 0)",
                (TID,),
            )
        for _ in range(2):  # the second open finds the column there
            ledger = await PostgresLedger.open(url, schema=schema)
            [t] = await ledger.all_outgoing(state=TransferState.DEAD)
            await ledger.close()
            assert (t.id, t.attempts_without_progress) == (TID, 0)


async def test_a_memory_ledger_is_the_same_ledger_without_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ledger, other = memory_ledger(), memory_ledger()
    await ledger.add_outgoing(transfer(), instances())
    [claimed] = await ledger.claim_outgoing("w1", now=1.0, lease_seconds=5.0, limit=5)
    assert (claimed.id, claimed.claimed_by) == (TID, "w1")
    await ledger.mark_acked(TID, [0, 1], at=2.0)
    assert [i.index for i in await ledger.pending_instances(TID)] == [2]
    assert await ledger.note_incoming("RX1", TID, "1.2.3", 1, "sha256") is None
    await ledger.record_received("RX1", TID, received([("u0", "a" * 64)]))
    assert await ledger.commit_incoming("RX1", TID, "1.2.3", b"r", 2.0) == b"r"
    assert await ledger.study("1.2.3") == [("u0", "a" * 64, 9)]
    assert await other.outgoing(TID) is None, "each memory ledger is its own"
    assert await ledger.outgoing(TID) is not None
    await ledger.close()
    await other.close()
    assert list(tmp_path.iterdir()) == [], "nothing written to disk"


async def test_segment_index_rounds_compaction_switches_and_drops(backend: Backend) -> None:
    """A round's locations, rows and durable end land together; a digest
    located before keeps its place; compaction moves only rows still where it
    read them; dropping a study frees only digests nothing else names."""
    ledger = await backend.open()
    a, b, c = (f"{n:064x}" for n in (10, 11, 12))
    assert await ledger.segment_end("S") is None
    await ledger.note_incoming("RX1", TID, "1.2.3", 2, "sha256")
    got = received([("u0", a), ("u1", b)])
    await ledger.record_round(
        "S", (1, 20480), [(a, (1, 4096, 100)), (b, (1, 8192, 200))], [("RX1", TID, i) for i in got]
    )
    assert await ledger.segment_end("S") == (1, 20480)
    assert await ledger.segment_end("other") is None
    assert sorted(await ledger.received("RX1", TID)) == [0, 1]
    # A digest written again (its copy is garbage) keeps the first place.
    await ledger.record_round("S", (1, 24576), [(a, (1, 20480, 100))], [])
    assert await ledger.locations("S", [a, b, c]) == {a: (1, 4096, 100), b: (1, 8192, 200)}
    assert await ledger.locations("other", [a]) == {}
    assert await ledger.segment_usage("S") == [(1, 2, 300)]
    assert await ledger.records_in_segment("S", 1) == [(a, (1, 4096, 100)), (b, (1, 8192, 200))]

    moves = [(a, (1, 4096, 100), (2, 4096, 100)), (b, (1, 9999, 200), (2, 8192, 200))]
    assert await ledger.move_records("S", moves, (2, 12288)) == 1  # b was not where it said
    assert await ledger.locations("S", [a, b]) == {a: (2, 4096, 100), b: (1, 8192, 200)}
    assert await ledger.segment_end("S") == (2, 12288)

    # Still arriving (not committed): nothing of it may go.
    assert await ledger.drop_studies(["1.2.3"]) == 0
    await ledger.commit_incoming("RX1", TID, "1.2.3", b"r", 5.0)
    assert await ledger.expired_studies(4.0) == []
    assert await ledger.expired_studies(6.0) == ["1.2.3"]
    # Another study naming b keeps b's record.
    other = "e" * 32
    await ledger.note_incoming("RX2", other, "4.5.6", 1, "sha256")
    await ledger.record_round("S", (2, 12288), [], [("RX2", other, received([("v0", b)])[0])])
    await ledger.commit_incoming("RX2", other, "4.5.6", b"r", 9.0)
    assert await ledger.expired_studies(6.0) == ["1.2.3"]
    assert await ledger.drop_studies(["1.2.3"]) == 1
    assert await ledger.study("1.2.3") == []
    assert await ledger.locations("S", [a, b]) == {b: (1, 8192, 200)}
    assert await ledger.drop_studies(["4.5.6", "7.8.9"]) == 1
    assert await ledger.locations("S", [a, b]) == {}
    assert await ledger.segment_usage("S") == []
    await ledger.close()


async def test_what_the_scp_stored_goes_once_the_transfer_routing_it_is_done(
    backend: Backend,
) -> None:
    """Records the DICOM SCP stored (sent from the store by a routed transfer)
    go once that transfer is done and older than asked, unless another
    transfer still to send (or a dead letter, which may be sent again) names
    them."""
    import dataclasses

    ledger = await backend.open()
    stored = [dataclasses.replace(i, path=f"store:{i.digest}") for i in instances(3)]
    await ledger.add_outgoing(transfer(), stored)
    other = "d" * 32
    await ledger.add_outgoing(transfer(id=other), stored[2:])
    located = [(i.digest, (1, 4096 * (n + 1), i.size)) for n, i in enumerate(stored)]
    await ledger.record_round("S", (1, 20480), located, [])
    assert await ledger.drop_routed("S", before=1e12) == 0, "not done yet"
    await ledger.set_outgoing_state(TID, TransferState.DONE)
    assert await ledger.drop_routed("S", before=0.0) == 0, "done after the time given"
    assert await ledger.drop_routed("S", before=1e12) == 2, "the other transfer still needs one"
    assert await ledger.locations("S", [i.digest for i in stored]) == {
        stored[2].digest: (1, 12288, stored[2].size)
    }
    await ledger.set_outgoing_state(other, TransferState.DEAD)
    assert await ledger.drop_routed("S", before=1e12) == 0, "a dead letter may be sent again"
    await ledger.set_outgoing_state(other, TransferState.DONE)
    assert await ledger.drop_routed("S", before=1e12) == 1
    await ledger.close()


async def test_what_the_scp_stored_goes_once_a_copy_made_from_it_is_sent(
    backend: Backend,
) -> None:
    """A transfer that sends de-identified copies (from its spool) names each
    one's origin, the stored instance it was made from: that goes once the
    transfer is done, unless another transfer still to send names it (as an
    origin or as what it sends itself). The copies' own digests are never
    the store's."""
    import dataclasses

    ledger = await backend.open()
    originals = instances(3)
    copies = [
        dataclasses.replace(
            i, path=f"/spool/{TID}#{i.index}", digest=f"c{i.index:063x}", origin=i.digest
        )
        for i in originals
    ]
    await ledger.add_outgoing(transfer(), copies)
    [back] = [i for i in await ledger.pending_instances(TID) if i.index == 1]
    assert back.origin == originals[1].digest
    other, plain = "d" * 32, "e" * 32
    await ledger.add_outgoing(transfer(1, id=other), copies[2:])  # a copy of the third, again
    sent = dataclasses.replace(originals[1], index=0, path=f"store:{originals[1].digest}")
    await ledger.add_outgoing(transfer(1, id=plain), [sent])  # the second, as it is
    located = [(i.digest, (1, 4096 * (n + 1), i.size)) for n, i in enumerate(originals)]
    await ledger.record_round("S", (1, 20480), located, [])
    assert await ledger.drop_routed("S", before=1e12) == 0, "not done yet"
    await ledger.set_outgoing_state(TID, TransferState.DONE)
    assert await ledger.drop_routed("S", before=0.0) == 0, "done after the time given"
    assert await ledger.drop_routed("S", before=1e12) == 1, "others still need two"
    assert (await ledger.locations("S", [i.digest for i in originals])).keys() == {
        originals[1].digest,
        originals[2].digest,
    }
    await ledger.set_outgoing_state(other, TransferState.DEAD)
    await ledger.set_outgoing_state(plain, TransferState.DONE)
    assert await ledger.drop_routed("S", before=1e12) == 1, "a dead letter may be sent again"
    await ledger.set_outgoing_state(other, TransferState.DONE)
    assert await ledger.drop_routed("S", before=1e12) == 1
    assert await ledger.locations("S", [i.digest for i in originals]) == {}
    await ledger.close()
