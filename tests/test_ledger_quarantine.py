"""The quarantine's table, on each backend: holds recorded with what release
needs, listed by state, resolved once only (two operators releasing the same
instance cannot both send it), released in the transaction that queues its
transfer (or not at all), and counted by ``counts``."""

from __future__ import annotations

import pytest

from dicomrelay.errors import NotHeld
from dicomrelay.ledger import HeldInstance, HoldState, OutgoingInstance
from dicomrelay.ledger.quarantine import BURNED_IN
from test_ledger import Backend, anyio_backend, backend, transfer  # noqa: F401  (fixtures)

pytestmark = pytest.mark.anyio


def hold(n: int, *, direction: str = "send", kind: str = BURNED_IN) -> HeldInstance:
    return HeldInstance(
        id=f"h{n:011d}",
        kind=kind,
        direction=direction,
        org="RES1",
        study_uid="1.2.3",
        sop_uid=f"1.2.3.{n}",
        patient_id="P1",
        digest=f"{n:064x}",
        size=100 + n,
        location=f"/var/q/h{n}.dcm",
        reason="Burned In Annotation (0028,0301) is YES",
        context={"priority": "urgent", "source_ae": "MODALITY1"},
        held=1000.0 + n,
    )


def instances(count: int) -> list[OutgoingInstance]:
    return [
        OutgoingInstance(
            index=i,
            path=f"spool:{i * 10}:/x/spool",
            sop_instance_uid=f"2.25.{i}",
            size=10,
            digest=f"{i:064x}",
            chunk_digests=(f"{i:064x}",),
        )
        for i in range(count)
    ]


async def test_holds_are_kept_listed_and_counted(backend: Backend) -> None:  # noqa: F811
    ledger = await backend.open()
    try:
        await ledger.hold([hold(1), hold(2, direction="receive", kind="needs-reconciliation")])
        assert (await ledger.counts())["held"] == 2
        assert await ledger.held_counts() == {BURNED_IN: 1, "needs-reconciliation": 1}
    finally:
        await ledger.close()
    ledger = await backend.open()  # another connection sees what was committed
    try:
        [first, second] = await ledger.held_instances()
        assert first == hold(1)  # every field as it went in (state held)
        assert second.direction == "receive"
        assert await ledger.held_instance("nope") is None
        await ledger.resolve_hold(first.id, HoldState.DELETED, "deleted by an operator")
        with pytest.raises(NotHeld):
            await ledger.resolve_hold(first.id, HoldState.RELEASED, "again")
        deleted = await ledger.held_instance(first.id)
        assert deleted is not None
        assert deleted.state is HoldState.DELETED
        assert deleted.resolution == "deleted by an operator"
        assert deleted.resolved is not None
        assert [h.id for h in await ledger.held_instances()] == [second.id]
        assert [h.id for h in await ledger.held_instances(HoldState.DELETED)] == [first.id]
        assert len(await ledger.held_instances(None)) == 2
        assert (await ledger.counts())["held"] == 1
    finally:
        await ledger.close()


async def test_a_release_and_its_transfer_are_one_transaction(backend: Backend) -> None:  # noqa: F811
    ledger = await backend.open()
    try:
        await ledger.hold([hold(1)])
        queued = transfer(1, id="a" * 32)
        await ledger.add_outgoing(queued, instances(1), releases=hold(1).id)
        released = await ledger.held_instance(hold(1).id)
        assert released is not None
        assert released.state is HoldState.RELEASED
        assert released.resolution == queued.id
        # Released already: a second release queues nothing.
        with pytest.raises(NotHeld):
            await ledger.add_outgoing(transfer(1, id="b" * 32), instances(1), releases=hold(1).id)
        assert await ledger.outgoing("b" * 32) is None
        assert [t.id for t in await ledger.all_outgoing()] == [queued.id]
    finally:
        await ledger.close()


async def test_a_transfer_records_the_holds_of_its_study(backend: Backend) -> None:  # noqa: F811
    ledger = await backend.open()
    try:
        queued = transfer(2, id="c" * 32)
        await ledger.add_outgoing(queued, instances(2), held=[hold(7), hold(8)])
        assert {h.id for h in await ledger.held_instances()} == {hold(7).id, hold(8).id}
        pending = await ledger.pending_instances(queued.id)
        assert [i.path for i in pending] == ["spool:0:/x/spool", "spool:10:/x/spool"]
    finally:
        await ledger.close()
