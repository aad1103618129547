"""A node's segment store through whole transfers: a torn tail left by a crash
is cut at start and never served; an fdatasync that fails acknowledges
nothing and the store goes on from its recorded end; compaction rewrites
sparse segments while a transfer runs, losing and duplicating nothing;
retention drops what it is told to. (kill -9 of the receiving node, over and
over, is test_kill.py's.)"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from dicomrelay import instance_store, scan, scan_file, synth
from dicomrelay._native import SegmentFaults, SegmentStore
from dicomrelay.config import Route, StoreConfig
from dicomrelay.instance_store import InstanceStore
from dicomrelay.ledger import IncomingInstance, Ledger, SqliteLedger
from dicomrelay.node import Node
from dicomrelay.retention import DAY, StoreKeeper
from dicomrelay.transfer import EventKind

from .chain_helpers import (
    dataset,
    delivering_node,
    held,
    routing_node,
    run,
    storescp,
    storescu_args,
)
from .helpers import (
    QUICK,
    Pki,
    Recorder,
    assert_delivered,
    closed_port,
    corrupt_records,
    linked_nodes,
    make_study,
    node_config,
    peer,
    query,
    receiver_config,
    segment_dir,
    source_by_sop,
    stored_records,
    study_files,
)

pytestmark = pytest.mark.anyio
TIMEOUT = 90
PATIENT = dataclasses.replace(QUICK, max_attempts=1000, backoff_base=0.05, backoff_cap=0.2)
ONE_MB = StoreConfig(segment_mb=1)


async def test_a_torn_tail_is_cut_at_start_and_never_served(orgs: Pki, tmp_path: Path) -> None:
    first = make_study(tmp_path / "first", 6, seed=1)
    second = make_study(tmp_path / "second", 6, seed=2)
    sources = source_by_sop(study_files(first))
    with anyio.fail_after(TIMEOUT):
        async with linked_nodes(orgs, tmp_path) as (tx, rx):
            receipt = await (await tx.send(first, to="RX2")).wait()
            name, end = rx.store.name, rx.store.segments.durable_end
    # What a crash leaves past the recorded end: a whole record that a round
    # made durable but the ledger never recorded, then half of another.
    root = segment_dir(tmp_path / "receiver")
    ghost = b"never acknowledged" * 100
    with SegmentStore(root, durable_end=end, segment_size=1 << 20) as store:
        store.append(ghost, hashlib.sha256(ghost).hexdigest())
        store.commit()
        torn_at = store.durable_end[1]
    with open(root / f"{end[0]:016x}.seg", "r+b") as f:
        f.seek(torn_at)
        f.write(os.urandom(6000))
    with anyio.fail_after(TIMEOUT):
        async with linked_nodes(orgs, tmp_path) as (tx, rx):
            assert rx.store.segments.cut_records == 1
            assert rx.store.segments.durable_end == end
            records, stopped_at, stop = rx.store.segments.scan(end[0], end[1])
            assert (records, stopped_at, stop) == ([], end[1], "end"), "the tail was not cut"
            assert await rx.ledger.segment_end(name) == end
            await assert_delivered(rx, receipt, sources)
            # The store goes on from there.
            again = await (await tx.send(second, to="RX2")).wait()
            await assert_delivered(rx, again, source_by_sop(study_files(second)))
            assert hashlib.sha256(ghost).hexdigest() not in stored_records(rx.config.data_dir)
            assert corrupt_records(rx.config.data_dir) == []


@asynccontextmanager
async def injected_faults(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SegmentFaults]:
    """Every instance store opened meanwhile writes and syncs through these faults."""
    faults = SegmentFaults()
    opened = InstanceStore.open.__func__  # type: ignore[attr-defined]

    async def open_with_faults(
        cls: type[InstanceStore], root: Path, ledger: Ledger, *, segment_size: int = 1 << 30
    ) -> InstanceStore:
        store: InstanceStore = await opened(
            cls, root, ledger, segment_size=segment_size, faults=faults
        )
        return store

    monkeypatch.setattr(instance_store.InstanceStore, "open", classmethod(open_with_faults))
    yield faults


async def test_a_failed_fdatasync_acknowledges_nothing_and_the_store_goes_on(
    orgs: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_study(tmp_path / "study", 12, seed=3)
    sources = source_by_sop(study_files(source))
    events = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with (
            injected_faults(monkeypatch) as faults,
            linked_nodes(orgs, tmp_path, limits=PATIENT, observer=events) as (tx, rx),
        ):
            faults.fail_syncs(errno.EIO)
            transfer = await tx.send(source, to="RX2")
            while len(events.of(EventKind.RETRYING, transfer.id)) < 3:
                await anyio.sleep(0.05)
            failures = [e.detail for e in events.of(EventKind.RETRYING, transfer.id)]
            assert all("storage" in f for f in failures), failures
            syncs = faults.syncs
            assert syncs >= 3, "no round was tried"
            # Lost: nothing of those rounds is acknowledged, recorded or served.
            acked = query(
                tx.config.data_dir / "ledger.sqlite",
                "SELECT count(*) FROM outgoing_instances WHERE acked IS NOT NULL",
            )
            assert acked == [(0,)]
            rows = query(
                rx.config.data_dir / "ledger.sqlite", "SELECT count(*) FROM incoming_instances"
            )
            assert rows == [(0,)]
            assert stored_records(rx.config.data_dir) == {}
            end = await rx.ledger.segment_end(rx.store.name)
            faults.fail_syncs(0)
            receipt = await transfer.wait()
            await assert_delivered(rx, receipt, sources)
            # Opened again at the recorded end after each failed round: the
            # records of the lost rounds were cut, not left to be found.
            assert end is not None
            segments = rx.store.segments
            scanned = sum(len(segments.scan(s)[0]) for s in segments.segments())
            assert scanned == len(sources), "a lost round's records are still there"
            assert corrupt_records(rx.config.data_dir) == []


async def test_compaction_while_a_transfer_runs_loses_and_duplicates_nothing(
    orgs: Pki, tmp_path: Path
) -> None:
    studies = [make_study(tmp_path / f"s{n}", 10, seed=20 + n) for n in range(4)]
    running = make_study(tmp_path / "running", 40, seed=30)
    keep = StoreConfig(segment_mb=1, compact_below=0.95)
    with anyio.fail_after(TIMEOUT * 2):
        async with linked_nodes(orgs, tmp_path, store=keep) as (tx, rx):
            receipts = [await (await tx.send(s, to="RX2")).wait() for s in studies]
            # Drop every other study: their records become garbage between the
            # live ones, and their segments sparse.
            dropped = [receipts[0].study_instance_uid, receipts[2].study_instance_uid]
            assert await rx.store.drop_studies(dropped) == 20
            sealed_before = [
                s for s in rx.store.segments.segments() if s < rx.store.segments.active_segment
            ]
            assert await rx.store.sparse_segments(keep.compact_below), "nothing to compact"

            keeper = StoreKeeper(rx.store, keep)
            transfer = await tx.send(running, to="RX2")
            compacted_during = 0
            moved_during = 0
            while not transfer.done:
                for segment in await rx.store.sparse_segments(keep.compact_below):
                    moved_during += await rx.store.compact(segment, batch_bytes=256 << 10)
                    compacted_during += 1
                await anyio.sleep(0.01)
            final = await transfer.wait()
            await keeper.sweep(time.time())
            assert compacted_during >= 1, "compaction never overlapped the transfer"
            assert moved_during >= 1, "compaction moved nothing"

            for kept, study in ((receipts[1], studies[1]), (receipts[3], studies[3])):
                await assert_delivered(rx, kept, source_by_sop(study_files(study)))
            await assert_delivered(rx, final, source_by_sop(study_files(running)))
            for uid in dropped:
                assert await rx.study(uid) == []
            located = stored_records(rx.config.data_dir)
            live = {
                d
                for r in (receipts[1], receipts[3], final)
                for d in (i.digest for i in r.instances)
            }
            assert set(located) == live, "a record lost, or garbage still located"
            assert corrupt_records(rx.config.data_dir) == []
            gone = set(sealed_before) - set(rx.store.segments.segments())
            assert gone, "no compacted segment was removed"
            # Each live digest is in the store once (the index), and the
            # segments' own records agree with the index where it points.
            for digest, where in located.items():
                records, _, _ = rx.store.segments.scan(where[0], where[1])
                assert records[0][1] == digest


async def test_retention_drops_expired_studies_and_their_records(orgs: Pki, tmp_path: Path) -> None:
    source = make_study(tmp_path / "study", 5, seed=40)
    with anyio.fail_after(TIMEOUT):
        async with linked_nodes(orgs, tmp_path, store=ONE_MB) as (tx, rx):
            receipt = await (await tx.send(source, to="RX2")).wait()
            keeper = StoreKeeper(rx.store, StoreConfig(segment_mb=1, keep_days=2))
            assert await keeper.sweep(time.time() + DAY) == (0, 0)
            assert len(await rx.study(receipt.study_instance_uid)) == 5
            dropped, _ = await keeper.sweep(time.time() + 3 * DAY)
            assert dropped == 1
            assert await rx.study(receipt.study_instance_uid) == []
            assert stored_records(rx.config.data_dir) == {}
            # Sent again, it is stored again (nothing claims the dropped bytes).
            again = await (await tx.send(source, to="RX2")).wait()
            await assert_delivered(rx, again, source_by_sop(study_files(source)))


def test_store_settings_are_read_strictly(tmp_path: Path, orgs: Pki) -> None:
    from dicomrelay.config import NodeConfig
    from dicomrelay.errors import ConfigurationError

    base = receiver_config(orgs, tmp_path)
    assert base.store.segment_mb == 4
    toml = tmp_path / "node.toml"
    head = f'[node]\norg = "RX2"\ndata_dir = "{tmp_path}"\ninsecure_plaintext = true\n'
    toml.write_text(head + "[store]\nkeep_days = 30\ndrop_after_delivery = true\nsegment_mb = 64\n")
    store = NodeConfig.from_toml(toml).store
    assert (store.keep_days, store.drop_after_delivery, store.segment_mb) == (30, True, 64)
    toml.write_text(head + "[store]\nkeep_day = 30\n")
    with pytest.raises(ConfigurationError, match=r"\[store\] has no setting 'keep_day'"):
        NodeConfig.from_toml(toml)
    toml.write_text(head + "[store]\nkeep_days = -1\n")
    with pytest.raises(ConfigurationError, match=r"\[store\] keep_days must be positive"):
        NodeConfig.from_toml(toml)


async def test_instance_files_of_earlier_releases_move_into_the_store(
    orgs: Pki, tmp_path: Path
) -> None:
    """A node that kept one file per instance (store/blobs/) starts with
    them in its segment store: each checked against its name, then removed."""
    source = make_study(tmp_path / "study", 3, seed=50)
    files = {p: p.read_bytes() for p in study_files(source)}
    config = receiver_config(orgs, tmp_path)
    blobs = config.data_dir / "store" / "blobs"
    ledger = SqliteLedger(config.data_dir / "ledger.sqlite")
    await ledger.note_incoming("RX1", "t" * 32, "1.2.3", len(files), "sha256")
    rows = []
    for n, data in enumerate(files.values()):
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest[:2]).mkdir(parents=True, exist_ok=True)
        (blobs / digest[:2] / digest).write_bytes(data)
        rows.append(
            IncomingInstance(
                index=n, sop_instance_uid=f"u{n}", size=len(data), digest=digest, stored=1.0
            )
        )
    damaged = blobs / "00" / ("0" * 64)
    damaged.parent.mkdir()
    damaged.write_bytes(b"not what its name says")
    await ledger.record_received("RX1", "t" * 32, rows)
    await ledger.commit_incoming("RX1", "t" * 32, "1.2.3", b"{}", 2.0)
    await ledger.close()
    with anyio.fail_after(TIMEOUT):
        async with Node(config) as rx:
            stored = await rx.study("1.2.3")
            assert len(stored) == len(files)
            assert sorted([bytes(await rx.store.read_instance(d)) for _, d in stored]) == sorted(
                files.values()
            )
    assert [p for p in blobs.rglob("*") if p.is_file()] == [damaged], "left: only the damaged one"


async def test_the_node_scp_acknowledges_no_association_whose_round_failed(
    orgs: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's SCP stores into the segment store: a round whose fdatasync
    fails loses its instances, so the association is aborted, not released,
    and nothing is routed; with the disk well again, the same study is stored
    and routed."""
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 4, seed=60)
    files = sorted(study.glob("*.dcm"))
    config = routing_node(orgs, tmp_path / "a", closed_port(), (Route(to="RX2"),))
    db = tmp_path / "a" / "ledger.sqlite"
    with anyio.fail_after(TIMEOUT):
        async with injected_faults(monkeypatch) as faults, Node(config) as a:
            assert a.dicom_port is not None
            faults.fail_syncs(errno.EIO)
            failed = await anyio.to_thread.run_sync(
                run, storescu_args(a.dicom_port, files, proposal=None)
            )
            assert failed.returncode != 0, "a lost association was released"
            assert query(db, "SELECT count(*) FROM outgoing") == [(0,)]
            assert stored_records(tmp_path / "a") == {}
            faults.fail_syncs(0)
            stored = await anyio.to_thread.run_sync(
                run, storescu_args(a.dicom_port, files, proposal=None)
            )
            assert stored.returncode == 0, stored.stderr
            rows = query(db, "SELECT digest FROM outgoing_instances")
            assert len(rows) == len(files)
            # Each as the SCP stored it: its own file meta group, the dataset sent.
            sent = {scan_file(p).sop_instance_uid: dataset(p) for p in files}
            for (digest,) in rows:
                data = bytes(await a.store.read_instance(digest))
                info = scan(data)
                assert data[info.dataset_offset :] == sent[info.sop_instance_uid]


async def test_partial_files_of_instances_already_stored_go_at_start(
    orgs: Pki, tmp_path: Path
) -> None:
    """A crash between a large instance's round and the removal of its
    partial file leaves the file: the next start removes it (the ledger holds
    the instance), and keeps those a later attempt resumes."""
    config = receiver_config(orgs, tmp_path)
    incoming = config.data_dir / "store" / "incoming"
    incoming.mkdir(parents=True)
    ledger = SqliteLedger(config.data_dir / "ledger.sqlite")
    tid = "a" * 32
    await ledger.note_incoming("RX-1", tid, "1.2.3", 2, "sha256")
    [row] = [IncomingInstance(index=0, sop_instance_uid="u0", size=9, digest="e" * 64, stored=1.0)]
    await ledger.record_received("RX-1", tid, [row])
    await ledger.close()
    (incoming / f"RX-1-{tid}-0.part").write_bytes(b"stored already")
    (incoming / f"RX-1-{tid}-1.part").write_bytes(b"still arriving")
    with anyio.fail_after(TIMEOUT):
        async with Node(config):
            pass
    assert sorted(p.name for p in incoming.iterdir()) == [f"RX-1-{tid}-1.part"]


async def test_a_study_delivered_into_the_pacs_is_dropped_when_asked(
    orgs: Pki, tmp_path: Path
) -> None:
    """``drop_after_delivery``: once the PACS holds the study (DCMTK's
    storescp here, fed from the store), the node drops it and its records."""
    source = make_study(tmp_path / "study", 4, seed=70)
    pacs_port = closed_port()
    config = delivering_node(orgs, tmp_path / "b", pacs_port)
    config = dataclasses.replace(config, store=StoreConfig(segment_mb=1, drop_after_delivery=True))
    with storescp(tmp_path / "pacs", pacs_port), anyio.fail_after(TIMEOUT):
        async with Node(config) as rx:
            assert rx.port is not None
            tx_config = node_config(
                "RX1", tmp_path / "a", identity=orgs.identity("RX1"), peers=(peer("RX2", rx.port),)
            )
            async with Node(tx_config) as tx:
                receipt = await (await tx.send(source, to="RX2")).wait()
            db = rx.config.data_dir / "ledger.sqlite"
            while not query(db, "SELECT 1 FROM audit WHERE action = 'dropped'"):
                await anyio.sleep(0.05)
            assert query(db, "SELECT state FROM deliveries") == [("done",)]
            assert await rx.study(receipt.study_instance_uid) == []
            assert stored_records(rx.config.data_dir) == {}
    delivered = held(tmp_path / "pacs")
    for path in study_files(source):
        assert dataset(delivered[scan_file(path).sop_instance_uid or ""]) == dataset(path)
