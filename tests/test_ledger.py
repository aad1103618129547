"""The SQLite ledger: what it records survives reopening; commits are atomic and idempotent."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomrelay.ledger import (
    IncomingInstance,
    OutgoingInstance,
    OutgoingTransfer,
    SqliteLedger,
    TransferState,
)

pytestmark = pytest.mark.anyio
TID = "f" * 32


@pytest.fixture(params=[False, True], ids=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return "asyncio", {"use_uvloop": request.param}


def transfer(total: int = 3) -> OutgoingTransfer:
    return OutgoingTransfer(
        id=TID,
        destination="RX2",
        study_instance_uid="1.2.3",
        priority="routine",
        digest="sha256",
        chunk_size=1 << 20,
        state=TransferState.QUEUED,
        attempts=0,
        next_attempt=0.0,
        created=1.0,
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


async def test_outgoing_state_and_acks_survive_reopening(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "l.sqlite")
    await ledger.add_outgoing(transfer(), instances())
    await ledger.mark_acked(TID, [0, 2], at=5.0)
    await ledger.set_outgoing_state(TID, TransferState.ACTIVE, attempts=2, error="boom")
    await ledger.close()

    ledger = SqliteLedger(tmp_path / "l.sqlite")
    [t] = await ledger.unfinished_outgoing()
    assert (t.state, t.attempts, t.acked, t.last_error) == (TransferState.ACTIVE, 2, 2, "boom")
    pending = await ledger.pending_instances(TID)
    assert [i.index for i in pending] == [1]
    assert pending[0].chunk_digests == (f"{1:064x}",)
    await ledger.set_outgoing_state(TID, TransferState.DONE, receipt=b"{}")
    assert await ledger.unfinished_outgoing() == []
    assert (await ledger.counts())["done"] == 1
    await ledger.close()


async def test_incoming_commit_is_atomic_and_idempotent(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "l.sqlite")
    assert await ledger.note_incoming("RX1", TID, "1.2.3", 2, "sha256") is None
    got = [
        IncomingInstance(index=i, sop_instance_uid=f"u{i}", size=9, digest=f"{i:064x}", stored=1.0)
        for i in range(2)
    ]
    await ledger.record_received("RX1", TID, got[:1])
    await ledger.record_received("RX1", TID, got)  # a repeat stores nothing twice
    assert sorted(await ledger.received("RX1", TID)) == [0, 1]
    assert await ledger.study("1.2.3") == []  # nothing visible before the commit

    first = await ledger.commit_incoming("RX1", TID, "1.2.3", b"receipt-1", 2.0)
    again = await ledger.commit_incoming("RX1", TID, "1.2.3", b"receipt-2", 3.0)
    assert first == again == b"receipt-1"
    assert len(await ledger.study("1.2.3")) == 2
    assert await ledger.note_incoming("RX1", TID, "1.2.3", 2, "sha256") == b"receipt-1"
    incoming = await ledger.incoming("RX1", TID)
    assert incoming is not None
    assert incoming.total == 2
    assert await ledger.incoming("RX9", TID) is None
    await ledger.close()


async def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "l.sqlite")
    await ledger.add_outgoing(transfer(), instances())
    with pytest.raises(Exception, match="UNIQUE"):
        await ledger.add_outgoing(transfer(), instances())
    assert len(await ledger.pending_instances(TID)) == 3
    await ledger.close()


async def test_a_delivery_asked_for_again_stays_due(tmp_path: Path) -> None:
    """A delivery that finishes after the study was asked for again (a newer
    version committed meanwhile) does not close the newer request."""
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    first = await ledger.add_delivery("1.2.3")
    second = await ledger.add_delivery("1.2.3")
    assert second > first
    await ledger.finish_delivery("1.2.3", requested=first, delivered=True, error="")
    assert await ledger.pending_deliveries() == [("1.2.3", second)]
    await ledger.finish_delivery("1.2.3", requested=second, delivered=True, error="")
    assert await ledger.pending_deliveries() == []
    await ledger.close()
    reopened = SqliteLedger(tmp_path / "ledger.sqlite")
    assert await reopened.pending_deliveries() == []
    await reopened.close()
