"""The ledger's hot calls on SQLite, as a transfer makes them: a 1,000-instance
study recorded as received, and acknowledged as sent, 64 instances a
transaction. On a file (synchronous=FULL: the disk's flushes count) and in
memory (what the code itself costs per transaction)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio.from_thread
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from dicomrelay.ledger import (
    IncomingInstance,
    Ledger,
    OutgoingInstance,
    OutgoingTransfer,
    SqliteLedger,
    TransferState,
    memory_ledger,
)

GROUP = "ledger-sqlite"
INSTANCES = 1000
BATCH = 64


@pytest.fixture(params=["file", "memory"])
def ledger(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[anyio.from_thread.BlockingPortal, Ledger]]:
    """A ledger, and the event loop (in a thread of its own) to call it on."""
    opened: Callable[[], Ledger] = (
        memory_ledger if request.param == "memory" else lambda: SqliteLedger(tmp_path / "l.sqlite")
    )
    with anyio.from_thread.start_blocking_portal() as portal:
        ledger = opened()
        yield portal, ledger
        portal.call(ledger.close)


def _group(benchmark: BenchmarkFixture) -> None:
    benchmark.group = GROUP
    benchmark.extra_info["instances"] = INSTANCES
    benchmark.extra_info["transactions"] = -(-INSTANCES // BATCH)


def test_record_received(
    benchmark: BenchmarkFixture, ledger: tuple[anyio.from_thread.BlockingPortal, Ledger]
) -> None:
    portal, db = ledger
    _group(benchmark)
    ids = (f"{n:032x}" for n in itertools.count())
    got = [
        IncomingInstance(index=i, sop_instance_uid=f"1.2.{i}", size=9, digest=f"{i:064x}", stored=1)
        for i in range(INSTANCES)
    ]

    async def receive() -> None:
        transfer_id = next(ids)
        for start in range(0, INSTANCES, BATCH):
            await db.record_received("RX1", transfer_id, got[start : start + BATCH])

    benchmark(portal.call, receive)
    assert len(portal.call(db.received, "RX1", f"{0:032x}")) == INSTANCES


def test_mark_acked(
    benchmark: BenchmarkFixture, ledger: tuple[anyio.from_thread.BlockingPortal, Ledger]
) -> None:
    portal, db = ledger
    _group(benchmark)
    ids = (f"{n:032x}" for n in itertools.count())
    sent = [
        OutgoingInstance(
            index=i, path="/p", sop_instance_uid=f"1.2.{i}", size=9, digest="d", chunk_digests=()
        )
        for i in range(INSTANCES)
    ]

    def new_transfer() -> tuple[tuple[str], dict[str, object]]:
        transfer = OutgoingTransfer(
            id=next(ids),
            destination="RX2",
            study_instance_uid="1.2",
            priority="routine",
            digest="sha256",
            chunk_size=1 << 20,
            state=TransferState.ACTIVE,
            attempts=0,
            next_attempt=0,
            created=1,
            total=INSTANCES,
        )
        portal.call(db.add_outgoing, transfer, sent)
        return (transfer.id,), {}

    async def acknowledge(transfer_id: str) -> None:
        for start in range(0, INSTANCES, BATCH):
            await db.mark_acked(transfer_id, range(start, min(start + BATCH, INSTANCES)), 2.0)

    # pedantic() is unannotated in pytest-benchmark.
    benchmark.pedantic(  # type: ignore[no-untyped-call]
        lambda transfer_id: portal.call(acknowledge, transfer_id),
        setup=new_transfer,
        rounds=10,
        warmup_rounds=1,
    )
    assert portal.call(db.pending_instances, f"{0:032x}") == []
