"""Faults: a peer that hangs, a peer that is not there, a full disk, a restart.
The engine must keep its promises through each: a slow destination never blocks
the others, failures retry with backoff then become dead letters, nothing is
acknowledged that is not durable, and nothing is stored twice."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from dicomrelay import scan_file, synth
from dicomrelay.config import StoreConfig
from dicomrelay.errors import LedgerUnavailable
from dicomrelay.node import Node
from dicomrelay.transfer import Event, EventKind, TransferFailed
from peers import dicomrelay_command, free_port, listening, run

from .helpers import (
    QUICK,
    Pki,
    Recorder,
    assert_delivered,
    closed_port,
    corrupt_records,
    digest_of,
    incoming_files,
    linked_nodes,
    make_study,
    node_config,
    peer,
    query,
    read_stored,
    receiver_config,
    relay,
    silent_server,
    source_by_sop,
    stored_records,
    study_files,
)

pytestmark = pytest.mark.anyio

TIMEOUT = 60


async def test_stalled_peer_does_not_hold_back_a_healthy_one(orgs: Pki, tmp_path: Path) -> None:
    limits = dataclasses.replace(QUICK, stall_timeout=1.0, connect_timeout=1.0, max_attempts=2)
    stalled_study = make_study(tmp_path / "stalled", 3, seed=1)
    healthy_study = make_study(tmp_path / "healthy", 3, seed=2)
    rcfg = receiver_config(orgs, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with Node(rcfg) as rx, silent_server() as silent:
            assert rx.port is not None
            scfg = node_config(
                "RX1",
                tmp_path / "sender",
                identity=orgs.identity("RX1"),
                peers=(peer("RX2", rx.port), peer("RX3", silent)),
                limits=limits,
            )
            async with Node(scfg) as tx:
                started = time.monotonic()
                stalled = [await tx.send(stalled_study, to="RX3") for _ in range(2)]
                healthy = await tx.send(healthy_study, to="RX2")
                receipt = await healthy.wait()
                took = time.monotonic() - started
                assert not any(t.done for t in stalled), "the stalled peer answered?"
                for t in stalled:
                    with pytest.raises(TransferFailed, match="TimeoutError"):
                        await t.wait()
                status = await tx.status()
            await assert_delivered(rx, receipt, source_by_sop(study_files(healthy_study)))
    assert took < 2.0, f"the healthy transfer took {took:.2f}s behind a stalled peer"
    assert (status["done"], status["dead"]) == (1, 2)


async def test_stall_mid_transfer_ends_the_attempt(orgs: Pki, tmp_path: Path) -> None:
    """A receiver that goes silent mid-transfer (connection open, nothing moving)
    is given up on after stall_timeout; what it acknowledged is durable there."""
    limits = dataclasses.replace(
        QUICK, stall_timeout=1.0, connect_timeout=1.0, max_attempts=2, window_bytes=512 * 1024
    )
    source = make_study(tmp_path / "study", 20, seed=3)
    sources = source_by_sop(study_files(source))
    events = Recorder()
    rcfg = receiver_config(orgs, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with Node(rcfg) as rx:
            assert rx.port is not None
            async with relay(rx.port, freeze_after=1_000_000) as hang:
                scfg = node_config(
                    "RX1",
                    tmp_path / "sender",
                    identity=orgs.identity("RX1"),
                    peers=(peer("RX2", hang.port),),
                    limits=limits,
                )
                async with Node(scfg, observer=events) as tx:
                    transfer = await tx.send(source, to="RX2")
                    with pytest.raises(TransferFailed):
                        await transfer.wait()
                assert hang.frozen
            acked = query(
                tx.config.data_dir / "ledger.sqlite",
                "SELECT digest FROM outgoing_instances WHERE acked IS NOT NULL",
            )
            assert len(acked) < len(sources)
            held = await rx.store.size_of([d for (d,) in acked])
            assert len(held) == len(acked), "acknowledged but not stored"
            assert corrupt_records(rx.config.data_dir) == []
    first_failure = events.of(EventKind.RETRYING, transfer.id)[0].detail
    assert "no progress" in first_failure, first_failure


async def test_retries_with_backoff_then_dead_letter(orgs: Pki, tmp_path: Path) -> None:
    limits = dataclasses.replace(
        QUICK, max_attempts=4, backoff_base=0.2, backoff_cap=1.0, connect_timeout=1.0
    )
    source = make_study(tmp_path / "study", 2, seed=4)
    events = Recorder()
    cfg = node_config(
        "RX1",
        tmp_path / "sender",
        identity=orgs.identity("RX1"),
        peers=(peer("RX2", closed_port()),),
        limits=limits,
    )
    with anyio.fail_after(TIMEOUT):
        async with Node(cfg, observer=events) as tx:
            transfer = await tx.send(source, to="RX2")
            with pytest.raises(TransferFailed):
                await transfer.wait()
            status = await tx.status()
            kept = await tx.ledger.outgoing(transfer.id)
        # A dead letter stays dead: a restarted node does not pick it up again.
        again = Recorder()
        async with Node(cfg, observer=again) as tx:
            await anyio.sleep(0.3)
            restarted = await tx.status()
    assert again.events == []
    assert restarted["dead"] == 1
    assert restarted["queued"] == restarted["active"] == 0

    kinds = [e.kind for e in events.events if e.kind is not EventKind.QUEUED]
    assert kinds == [EventKind.STARTED, EventKind.RETRYING] * 3 + [
        EventKind.STARTED,
        EventKind.FAILED,
    ]
    assert status["dead"] == 1
    assert status["queued"] == status["active"] == 0
    assert kept is not None
    assert kept.attempts == limits.max_attempts
    assert kept.last_error is not None
    assert "Error" in kept.last_error, kept.last_error
    # Equal-jitter exponential backoff: wait n is within [step/2, step], step = base * 2**(n-1).
    retries = events.of(EventKind.RETRYING)
    starts = events.of(EventKind.STARTED)[1:]
    for n, (failed, next_start) in enumerate(zip(retries, starts, strict=True), start=1):
        step = min(limits.backoff_cap, limits.backoff_base * 2 ** (n - 1))
        waited = next_start.at - failed.at
        assert step / 2 - 0.02 <= waited <= step + 0.5, (n, waited, step)


@contextlib.contextmanager
def small_filesystem(directory: Path, megabytes: int) -> Iterator[str]:
    """Mount a filesystem of ``megabytes`` at ``directory``: tmpfs, else a loop ext4."""
    directory.mkdir(parents=True, exist_ok=True)
    tmpfs = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    kind = "tmpfs"
    if tmpfs.returncode != 0:
        image = directory.parent / f"{directory.name}.img"
        loop = subprocess.run(
            f"truncate -s {megabytes}M {image} && mkfs.ext4 -q {image}"
            f" && mount -o loop {image} {directory}",
            shell=True,
            capture_output=True,
            text=True,
        )
        if loop.returncode != 0:
            pytest.skip(
                "cannot mount a small filesystem for the full-disk test (needs root):"
                f" tmpfs: {tmpfs.stderr.strip()}; loop: {loop.stderr.strip()}"
            )
        kind = "loop"
    try:
        yield kind
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def grow(directory: Path, kind: str, megabytes: int) -> None:
    if kind == "tmpfs":
        cmd = f"mount -o remount,size={megabytes}m {directory}"
    else:
        image = directory.parent / f"{directory.name}.img"
        cmd = (
            f"truncate -s {megabytes}M {image}"
            f" && dev=$(findmnt -n -o SOURCE {directory}) && losetup -c $dev && resize2fs $dev"
        )
    subprocess.run(cmd, shell=True, check=True, capture_output=True)


async def test_full_disk_at_receiver(orgs: Pki, tmp_path: Path) -> None:
    source = make_study(tmp_path / "study", 30, seed=5)  # about 4 MB, twice what fits
    sources = source_by_sop(study_files(source))
    events = Recorder()
    store = tmp_path / "receiver" / "store"
    limits = dataclasses.replace(QUICK, max_attempts=3, backoff_base=0.05, backoff_cap=0.2)
    segments = StoreConfig(segment_mb=1)
    # Rounds of a few instances: those that fit are acknowledged, and the first
    # that does not fails whole.
    rounds = dataclasses.replace(QUICK, round_bytes=512 << 10)
    with small_filesystem(store, 2) as kind, anyio.fail_after(TIMEOUT):
        async with linked_nodes(
            orgs, tmp_path, limits=limits, observer=events, store=segments, receiver_limits=rounds
        ) as (tx, rx):
            transfer = await tx.send(source, to="RX2")
            with pytest.raises(TransferFailed):
                await transfer.wait()
            failures = events.of(EventKind.RETRYING, transfer.id)
            assert failures, "the first failure should have been retried"
            full = re.compile(r"receiver: storage: .*(disk full|No space left)")
            assert all(full.search(e.detail) for e in failures), [e.detail for e in failures]

            # Never acknowledged before durable: every acknowledged instance is a
            # whole, verified record at the receiver, and the receiver's rows agree.
            acked = query(
                tx.config.data_dir / "ledger.sqlite",
                "SELECT digest, size FROM outgoing_instances WHERE acked IS NOT NULL",
            )
            assert 0 < len(acked) < len(sources)
            for digest, size in acked:
                data = read_stored(rx.config.data_dir, digest)
                assert len(data) == size
                assert digest_of(data) == digest
            rows = query(
                rx.config.data_dir / "ledger.sqlite", "SELECT digest FROM incoming_instances"
            )
            located = await rx.store.size_of([d for (d,) in rows])
            assert len(located) == len({d for (d,) in rows}), "a row names nothing stored"
            assert corrupt_records(rx.config.data_dir) == []
            partials = incoming_files(rx.config.data_dir / "store")
            assert partials == [], "a failed write left its temporary file"
            assert (await rx.status())["stored_instances"] == 0, "nothing committed"
            # Rounds of the last attempt may still end after the sender gave up
            # (one that fits the segment's room left): what is held once they have.
            held = set(stored_records(rx.config.data_dir))
            while True:
                await anyio.sleep(0.3)
                if (now := set(stored_records(rx.config.data_dir))) == held:
                    break
                held = now

            # The receiver kept serving: with room again, the study goes through,
            # and what it already held does not travel twice.
            grow(store, kind, 32)
            retry = await tx.send(source, to="RX2")
            receipt = await retry.wait()
            await assert_delivered(rx, receipt, sources)
            sent = {e.index for e in events.of(EventKind.INSTANCE_SENT, retry.id)}
            assert len(sent) == len(sources) - len(held)
            assert corrupt_records(rx.config.data_dir) == []
            assert incoming_files(rx.config.data_dir / "store") == []
            status = await tx.status()
    assert (status["dead"], status["done"]) == (1, 1)


async def test_receiver_restart_mid_transfer_resumes(orgs: Pki, tmp_path: Path) -> None:
    count = 60
    source = make_study(tmp_path / "study", count, seed=6)
    sources = source_by_sop(study_files(source))
    events = Recorder()
    receiver_scope = anyio.CancelScope()
    restart_at = 5

    def stop_receiver(event: object) -> None:
        if len(events.of(EventKind.VERIFIED)) == restart_at:
            receiver_scope.cancel()

    events.hooks.append(stop_receiver)
    rx_dir = tmp_path / "receiver"
    port = closed_port()
    rcfg = node_config(
        "RX2", rx_dir, identity=orgs.identity("RX2"), peers=(peer("RX1", 1),), listen_port=port
    )
    limits = dataclasses.replace(QUICK, window_bytes=256 * 1024, max_attempts=5)
    scfg = node_config(
        "RX1",
        tmp_path / "sender",
        identity=orgs.identity("RX1"),
        peers=(peer("RX2", port),),
        limits=limits,
    )
    with anyio.fail_after(TIMEOUT):
        async with Node(scfg, observer=events) as tx:
            with receiver_scope:
                async with Node(rcfg):
                    transfer = await tx.send(source, to="RX2")
                    await anyio.sleep_forever()
            # The first receiver is gone, mid-transfer. The same node comes back.
            async with Node(rcfg) as rx:
                receipt = await transfer.wait()
                await assert_delivered(rx, receipt, sources)
                assert len(list(stored_records(rx.config.data_dir))) == count
                assert corrupt_records(rx.config.data_dir) == []
                db = rx_dir / "ledger.sqlite"
                assert query(db, "SELECT count(*) FROM incoming_instances") == [(count,)]
                assert query(db, "SELECT count(*) FROM store") == [(count,)]
                assert query(db, "SELECT count(*) FROM incoming") == [(1,)]

    retried = events.position(EventKind.RETRYING, transfer.id)
    assert len(events.of(EventKind.STARTED, transfer.id)) >= 2
    before = indexes(events.events[:retried], EventKind.VERIFIED)
    after = indexes(events.events[retried:], EventKind.INSTANCE_SENT)
    assert len(before) >= restart_at
    assert before.isdisjoint(after), f"acknowledged, then sent again: {sorted(before & after)}"
    assert before | indexes(events.events[retried:], EventKind.VERIFIED) == set(range(count))


async def test_sender_restart_resumes_from_its_ledger(orgs: Pki, tmp_path: Path) -> None:
    """A sending node stopped mid-transfer picks the transfer up when started again
    (in-memory instances included: they were kept in its outbox), and sends only
    what was not acknowledged."""
    count = 40
    source = make_study(tmp_path / "study", count, seed=7)
    sources = source_by_sop(study_files(source))
    blobs = [p.read_bytes() for p in study_files(source)]
    events = Recorder()
    sender_scope = anyio.CancelScope()

    def stop_sender(event: object) -> None:
        if len(events.of(EventKind.VERIFIED)) == 5:
            sender_scope.cancel()

    events.hooks.append(stop_sender)
    rcfg = receiver_config(orgs, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with Node(rcfg) as rx:
            assert rx.port is not None
            scfg = node_config(
                "RX1",
                tmp_path / "sender",
                identity=orgs.identity("RX1"),
                peers=(peer("RX2", rx.port),),
                limits=dataclasses.replace(QUICK, window_bytes=256 * 1024),
            )
            with sender_scope:
                async with Node(scfg, observer=events) as tx:
                    transfer = await tx.send(blobs, to="RX2")
                    await anyio.sleep_forever()
            acked = {
                idx
                for (idx,) in query(
                    tmp_path / "sender" / "ledger.sqlite",
                    "SELECT idx FROM outgoing_instances WHERE acked IS NOT NULL",
                )
            }
            assert 5 <= len(acked) < count, len(acked)
            again = Recorder()
            async with Node(scfg, observer=again) as tx:
                receipt = await tx.transfer(transfer.id).wait()
            await assert_delivered(rx, receipt, sources)
            assert len(list(stored_records(rx.config.data_dir))) == count
            db = tmp_path / "receiver" / "ledger.sqlite"
            assert query(db, "SELECT count(*) FROM incoming_instances") == [(count,)]
            assert query(db, "SELECT count(*) FROM store") == [(count,)]
    resent = indexes(again.events, EventKind.INSTANCE_SENT)
    assert acked.isdisjoint(resent), f"acknowledged, then sent again: {sorted(acked & resent)}"


def indexes(events: list[Event], kind: EventKind) -> set[int]:
    return {e.index for e in events if e.kind is kind and e.index is not None}


async def test_full_disk_at_the_storage_scp(tmp_path: Path) -> None:
    """DCMTK storescu into our storescp on a filesystem too small for the study:
    the store that does not fit is answered A700, nothing partial is left under
    a final name, the server goes on, and once there is room the study arrives."""
    study = synth.write_study(tmp_path / "study", synth.PROFILES["ct"], 12)  # about 6 MB
    sources = {str(scan_file(p).sop_instance_uid): p for p in study.glob("*.dcm")}
    out = tmp_path / "received"
    port = free_port()
    command = dicomrelay_command("storescp", str(port), "-od", str(out), "-aet", "RELAY")
    storescu = [
        "/usr/bin/storescu",
        "-v",
        "-aec",
        "RELAY",
        "127.0.0.1",
        str(port),
        "+sd",
        str(study),
    ]

    def intact() -> dict[str, Path]:
        held = {str(scan_file(p).sop_instance_uid): p for p in out.glob("*.dcm")}
        for uid, path in held.items():
            source = sources[uid].read_bytes()
            dataset = path.read_bytes()[scan_file(path).dataset_offset :]
            assert dataset == source[scan_file(sources[uid]).dataset_offset :], uid
        return held

    with small_filesystem(out, 3) as kind, listening([*command, "--host", "127.0.0.1"], port):
        full = await anyio.to_thread.run_sync(run, storescu)
        assert full.returncode != 0
        assert re.search(r"Refused: OutOfResources", full.stdout + full.stderr), full.stderr
        assert 0 < len(intact()) < 12
        assert not [p for p in (out / ".incoming").iterdir() if p.stat().st_size]
        grow(out, kind, 32)
        again = await anyio.to_thread.run_sync(run, storescu)
        assert again.returncode == 0, again.stderr
        assert sorted(intact()) == sorted(sources)


def fill(path: Path) -> None:
    """Write ``path`` until its filesystem is full."""
    block = b"\0" * (64 << 10)
    # Unbuffered: nothing left over to write (and fail) when the file closes.
    with path.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(block)
            f.flush()


async def test_full_disk_under_the_ledger(orgs: Pki, tmp_path: Path) -> None:
    """The disk under the sending node's ledger fills up: queuing a study
    fails with LedgerUnavailable and records nothing of it; with room again,
    the same study is queued and delivered whole, once."""
    source = make_study(tmp_path / "study", 200, seed=12)  # more rows than the WAL holds
    with small_filesystem(tmp_path / "sender", 8), anyio.fail_after(TIMEOUT):
        async with linked_nodes(orgs, tmp_path) as (tx, rx):
            filler = tmp_path / "sender" / "filler"
            fill(filler)
            full = r"^SQLite ledger: database or disk is full"
            with pytest.raises(LedgerUnavailable, match=full):
                await tx.send(source, to="RX2")
            filler.unlink()
            receipt = await (await tx.send(source, to="RX2")).wait()
            await assert_delivered(rx, receipt, source_by_sop(study_files(source)))
            queued = await tx.ledger.all_outgoing()
    assert [t.id for t in queued] == [receipt.transfer_id]


@pytest.mark.parametrize(
    ("profile", "path"),
    [("small", "batched with other small instances"), ("ct", "streamed alone")],
)
async def test_a_file_that_shrank_after_it_was_queued_ends_the_transfer_naming_it(
    orgs: Pki, tmp_path: Path, profile: str, path: str
) -> None:
    """A source file cut short between queueing and sending (whether its
    instance goes in a batch of small ones or alone) is a dead letter naming
    the file: nothing of it is taken for the instance that was scanned."""
    source = make_study(tmp_path / "study", 3, profile=profile, seed=7)
    victim = study_files(source)[1]
    with anyio.fail_after(TIMEOUT):
        async with linked_nodes(orgs, tmp_path) as (tx, rx):
            transfer = await tx.send(source, to="RX2")
            # Before the outbox runs again: the attempt finds it short.
            with open(victim, "r+b") as f:
                f.truncate(victim.stat().st_size // 2)
            with pytest.raises(TransferFailed, match="shrank after it was scanned") as failed:
                await transfer.wait()
            kept = await tx.ledger.outgoing(transfer.id)
            assert (await rx.status())["done"] == 0
    assert str(victim) in str(failed.value), path
    assert kept is not None
    assert kept.state.value == "dead"
