"""A study goes from one organisation to another and arrives whole, exact and
signed for: byte comparisons against the source files, digests recomputed with
hashlib, receipts checked against the receiver's certificate."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import sqlite3
from pathlib import Path

import anyio
import pytest

from dicomrelay.errors import ConfigurationError
from dicomrelay.ledger import SqliteLedger
from dicomrelay.node import Node
from dicomrelay.receipt import ReceiptError
from dicomrelay.transfer import EventKind, Transfer

from .helpers import (
    QUICK,
    Pki,
    Recorder,
    assert_delivered,
    corrupt_records,
    digest_of,
    incoming_files,
    linked_nodes,
    make_study,
    node_config,
    peer,
    query,
    receiver_config,
    relay,
    source_by_sop,
    stored_records,
    study_files,
    wait_until,
)

pytestmark = pytest.mark.anyio

TIMEOUT = 60


async def test_event_loop_is_the_one_the_backend_names(
    anyio_backend: tuple[str, dict[str, bool]],
) -> None:
    loop = asyncio.get_running_loop()
    assert ("uvloop" in type(loop).__module__) is anyio_backend[1]["use_uvloop"]


async def test_study_arrives_byte_identical(orgs: Pki, tmp_path: Path) -> None:
    source = make_study(tmp_path / "study", 6, seed=1)
    sources = source_by_sop(study_files(source))
    events = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with linked_nodes(orgs, tmp_path, observer=events) as (tx, rx):
            transfer = await tx.send(source, to="RX2")
            receipt = await transfer.wait()
            await assert_delivered(rx, receipt, sources)
            assert receipt.transfer_id == transfer.id
            assert (receipt.sender, receipt.receiver) == ("RX1", "RX2")
            assert len(receipt.instances) == len(sources)

            # The store holds these records and nothing else: whole, true to their digest.
            blobs = list(stored_records(rx.config.data_dir))
            assert sorted(blobs) == sorted(map(digest_of, sources.values()))
            assert corrupt_records(rx.config.data_dir) == []
            assert incoming_files(rx.config.data_dir / "store") == [], "temporary files left behind"

    kinds = [e.kind for e in events.events if e.transfer_id == transfer.id]
    assert kinds[0] is EventKind.QUEUED
    assert kinds[1] is EventKind.STARTED
    assert kinds[-1] is EventKind.COMMITTED
    verified = events.of(EventKind.VERIFIED, transfer.id)
    assert sorted(e.index for e in verified if e.index is not None) == list(range(len(sources)))
    assert all(e.latency is not None and e.latency >= 0 for e in verified)


async def test_receipt_signature_verifies_and_catches_tampering(orgs: Pki, tmp_path: Path) -> None:
    source = make_study(tmp_path / "study", 3, seed=2)
    with anyio.fail_after(TIMEOUT):
        async with linked_nodes(orgs, tmp_path) as (tx, rx):
            transfer = await tx.send(source, to="RX2")
            receipt = await transfer.wait()
            kept = await tx.ledger.outgoing(transfer.id)
            incoming = await rx.ledger.incoming("RX1", transfer.id)

    receiver_cert = orgs.cert_der("RX2")
    assert receipt.signature is not None
    receipt.verify(receiver_cert)

    # What both ledgers kept is the same signed receipt.
    assert kept is not None
    assert kept.receipt is not None
    assert incoming is not None
    assert incoming.receipt is not None
    assert kept.receipt == incoming.receipt == receipt.to_json()

    first = receipt.instances[0]
    tampered = [
        dataclasses.replace(receipt, study_instance_uid=receipt.study_instance_uid + ".9"),
        dataclasses.replace(receipt, committed_at=receipt.committed_at + 1),
        dataclasses.replace(receipt, sender="RX9"),
        dataclasses.replace(
            receipt,
            instances=(dataclasses.replace(first, digest="0" * 64), *receipt.instances[1:]),
        ),
        dataclasses.replace(receipt, instances=(dataclasses.replace(first, size=first.size + 1),)),
        dataclasses.replace(receipt, instances=receipt.instances[1:]),
        dataclasses.replace(receipt, signature=None),
        dataclasses.replace(receipt, signature="AAAA"),
    ]
    for bad in tampered:
        with pytest.raises(ReceiptError):
            bad.verify(receiver_cert)
    # Signed by the receiver's key, not by anyone else's.
    with pytest.raises(ReceiptError):
        receipt.verify(orgs.cert_der("RX1"))


async def test_same_folder_twice_stores_each_blob_once(orgs: Pki, tmp_path: Path) -> None:
    source = make_study(tmp_path / "study", 5, seed=3)
    sources = source_by_sop(study_files(source))
    events = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with linked_nodes(orgs, tmp_path, observer=events) as (tx, rx):
            first = await (await tx.send(source, to="RX2")).wait()
            again = await tx.send(source, to="RX2")
            second = await again.wait()
            assert first.transfer_id != second.transfer_id
            await assert_delivered(rx, first, sources)
            await assert_delivered(rx, second, sources)
            assert len(list(stored_records(rx.config.data_dir))) == len(sources)
            assert len(await rx.study(first.study_instance_uid)) == len(sources)
            status = await rx.status()

    # The second transfer's HAVE said "held in full" for every instance: no byte went again.
    assert events.of(EventKind.INSTANCE_SENT, again.id) == []
    assert len(events.of(EventKind.VERIFIED, again.id)) == len(sources)
    assert status["received_committed"] == 2
    assert status["stored_instances"] == len(sources)


async def test_urgent_overtakes_queued_routine_transfers(orgs: Pki, tmp_path: Path) -> None:
    """With one transfer per peer: an urgent transfer gets a slot beyond the limit
    and commits before routine and bulk transfers that were queued before it."""
    studies = {
        name: make_study(tmp_path / name, 3, seed=n)
        for n, name in enumerate(("r1", "bulk", "r2", "r3", "urgent"))
    }
    events = Recorder()
    gate = anyio.Event()
    rcfg = receiver_config(orgs, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with Node(rcfg) as rx:
            assert rx.port is not None
            async with relay(rx.port, gate=gate) as gatekeeper:
                scfg = node_config(
                    "RX1",
                    tmp_path / "sender",
                    identity=orgs.identity("RX1"),
                    peers=(peer("RX2", gatekeeper.port),),
                    limits=dataclasses.replace(QUICK, transfers_per_peer=1),
                )
                async with Node(scfg, observer=events) as tx:
                    r1 = await tx.send(studies["r1"], to="RX2")
                    # r1 holds the destination's only slot, waiting at the gate.
                    await wait_until(lambda: gatekeeper.connections == 1, 10, "r1 connects")
                    bulk = await tx.send(studies["bulk"], to="RX2", priority="bulk")
                    r2 = await tx.send(studies["r2"], to="RX2")
                    r3 = await tx.send(studies["r3"], to="RX2")
                    urgent = await tx.send(studies["urgent"], to="RX2", priority="urgent")
                    await wait_until(lambda: gatekeeper.connections == 2, 10, "urgent connects")
                    await anyio.sleep(0.2)
                    assert gatekeeper.connections == 2, "a routine transfer went past the limit"
                    gate.set()
                    handles = (r1, bulk, r2, r3, urgent)
                    receipts = {t.id: await t.wait() for t in handles}

    def committed(t: Transfer) -> float:
        return receipts[t.id].committed_at

    # The urgent transfer commits before every transfer that was queued when it came.
    for queued in (bulk, r2, r3):
        assert committed(urgent) < committed(queued)
        assert events.position(EventKind.COMMITTED, urgent.id) < events.position(
            EventKind.STARTED, queued.id
        ), "a queued transfer started before the urgent one committed"
    # Then routine in the order queued, and bulk last.
    assert committed(r2) < committed(r3) < committed(bulk)


async def test_in_memory_instances(orgs: Pki, tmp_path: Path) -> None:
    source = make_study(tmp_path / "study", 4, seed=4)
    sources = source_by_sop(study_files(source))
    blobs = [p.read_bytes() for p in study_files(source)]
    seen: list[EventKind] = []
    with anyio.fail_after(TIMEOUT):
        async with linked_nodes(orgs, tmp_path) as (tx, rx):
            transfer = await tx.send(blobs, to="RX2")

            async def follow() -> None:
                async for event in transfer.events():
                    seen.append(event.kind)

            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                receipt = await transfer.wait()
            await assert_delivered(rx, receipt, sources)
            # Written (and kept) in the sender's outbox, so a restart could resume them.
            kept = sorted(
                p.read_bytes() for p in study_files(tx.config.data_dir / "outbox" / transfer.id)
            )
            assert kept == sorted(blobs)
    # A subscriber that starts after send returned sees the whole story, from
    # queued to the commit, every instance sent and verified.
    assert seen[:2] == [EventKind.QUEUED, EventKind.STARTED]
    assert seen[-1] is EventKind.COMMITTED
    assert seen.count(EventKind.INSTANCE_SENT) == len(blobs)
    assert seen.count(EventKind.VERIFIED) == len(blobs)


async def test_blake3_digest(orgs: Pki, tmp_path: Path) -> None:
    pytest.importorskip("blake3")
    source = make_study(tmp_path / "study", 4, seed=5)
    sources = source_by_sop(study_files(source))
    with anyio.fail_after(TIMEOUT):
        async with linked_nodes(orgs, tmp_path, digest="blake3") as (tx, rx):
            receipt = await (await tx.send(source, to="RX2")).wait()
            await assert_delivered(rx, receipt, sources, algorithm="blake3")
            receipt.verify(orgs.cert_der("RX2"))
            names = sorted(stored_records(rx.config.data_dir))
            assert names == sorted(digest_of(b, "blake3") for b in sources.values())
            assert corrupt_records(rx.config.data_dir) == []


async def test_multi_chunk_instances_arrive_intact(orgs: Pki, tmp_path: Path) -> None:
    chunk = 64 * 1024
    source = make_study(tmp_path / "study", 8, seed=6)
    sources = source_by_sop(study_files(source))
    assert min(map(len, sources.values())) > 2 * chunk, "each instance should span 3+ chunks"
    limits = dataclasses.replace(QUICK, chunk_size=chunk, window_bytes=4 * chunk)
    with anyio.fail_after(TIMEOUT):
        async with linked_nodes(orgs, tmp_path, limits=limits) as (tx, rx):
            transfer = await tx.send(source, to="RX2")
            receipt = await transfer.wait()
            await assert_delivered(rx, receipt, sources)
            assert corrupt_records(rx.config.data_dir) == []
            assert incoming_files(rx.config.data_dir / "store") == [], "partial files left behind"
            rows = query(
                tx.config.data_dir / "ledger.sqlite",
                "SELECT size, chunk_digests FROM outgoing_instances WHERE transfer_id = ?",
                transfer.id,
            )
    for size, chunks in rows:
        assert len(chunks.split(",")) == -(-size // chunk)


async def test_instance_larger_than_the_window(orgs: Pki, tmp_path: Path) -> None:
    """An instance bigger than window_bytes (a multi-GB object against the default
    16 MiB window) must still stream: acknowledgements come per whole instance,
    so a window that waits for one before the instance is complete never opens."""
    chunk = 64 * 1024
    source = make_study(tmp_path / "study", 2, seed=7)
    sources = source_by_sop(study_files(source))
    window = 2 * chunk
    assert min(map(len, sources.values())) > window
    limits = dataclasses.replace(
        QUICK, chunk_size=chunk, window_bytes=window, stall_timeout=3.0, max_attempts=1
    )
    with anyio.fail_after(TIMEOUT):
        async with linked_nodes(orgs, tmp_path, limits=limits) as (tx, rx):
            receipt = await (await tx.send(source, to="RX2")).wait()
            await assert_delivered(rx, receipt, sources)


async def test_status_counts(orgs: Pki, tmp_path: Path) -> None:
    sizes = (2, 3, 4)
    studies = [make_study(tmp_path / f"s{n}", k, seed=10 + n) for n, k in enumerate(sizes)]
    zero = {"queued": 0, "active": 0, "done": 0, "dead": 0, "held": 0}
    with anyio.fail_after(TIMEOUT):
        async with linked_nodes(orgs, tmp_path) as (tx, rx):
            before = await tx.status()
            assert before == {
                **zero,
                "received_committed": 0,
                "stored_instances": 0,
                "in_flight": 0,
            }
            transfers = [await tx.send(s, to="RX2") for s in studies]
            for t in transfers:
                await t.wait()
            sent = await tx.status()
            while sent["in_flight"]:  # the last attempt's bookkeeping ends just after its receipt
                await anyio.sleep(0.01)
                sent = await tx.status()
            received = await rx.status()
    assert sent == {
        **zero,
        "done": len(studies),
        "received_committed": 0,
        "stored_instances": 0,
        "in_flight": 0,
    }
    assert received == {
        **zero,
        "received_committed": len(studies),
        "stored_instances": sum(sizes),
        "in_flight": 0,
    }


async def test_a_node_that_cannot_start_closes_its_ledger(orgs: Pki, tmp_path: Path) -> None:
    """A port already taken: the node says so, and leaves no ledger open."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = node_config(
            "RX2", tmp_path / "rx", identity=orgs.identity("RX2"), listen_port=port
        )
        ledger = SqliteLedger(tmp_path / "rx" / "ledger.sqlite")
        with pytest.raises(ConfigurationError, match=f"cannot listen on 127.0.0.1:{port}.*in use"):
            async with Node(config, ledger=ledger):
                pass
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        await ledger.counts()
