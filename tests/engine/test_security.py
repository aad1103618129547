"""Only the organisations a node knows may hand it data, a sender delivers only
to the organisation it meant, and bytes changed on the way never reach the store."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import anyio
import orjson
import pytest

from dicomrelay.config import Limits, Peer
from dicomrelay.node import Node
from dicomrelay.transfer import EventKind, TransferFailed

from .helpers import (
    CHUNK,
    HEADER_SIZE,
    NACK,
    QUICK,
    FrameHook,
    Pki,
    Recorder,
    assert_delivered,
    corrupt_records,
    incoming_files,
    make_study,
    node_config,
    peer,
    query,
    relay,
    source_by_sop,
    stored_records,
    study_files,
)

pytestmark = pytest.mark.anyio

TIMEOUT = 60
TWO_TRIES = dataclasses.replace(QUICK, max_attempts=2, connect_timeout=3.0)


def assert_nothing_received(rx: Node) -> None:
    assert list(stored_records(rx.config.data_dir)) == []
    assert incoming_files(rx.config.data_dir / "store") == []
    db = rx.config.data_dir / "ledger.sqlite"
    assert query(db, "SELECT count(*) FROM incoming") == [(0,)]
    assert query(db, "SELECT count(*) FROM incoming_instances") == [(0,)]
    assert query(db, "SELECT count(*) FROM store") == [(0,)]


async def deliver_ok(orgs: Pki, root: Path, code: str, port: int, rx: Node) -> None:
    """A legitimate peer still gets through: the refusal did not harm the receiver."""
    source = make_study(root / f"ok-{code}", 2, seed=99)
    cfg = node_config(
        code, root / f"ok-{code}-node", identity=orgs.identity(code), peers=(peer("RX2", port),)
    )
    async with Node(cfg) as good:
        receipt = await (await good.send(source, to="RX2")).wait()
    await assert_delivered(rx, receipt, source_by_sop(study_files(source)))


async def test_untrusted_ca_refused_before_anything_is_stored(orgs: Pki, tmp_path: Path) -> None:
    evil = Pki(tmp_path / "evil", name="evil CA")
    source = make_study(tmp_path / "study", 3, seed=1)
    events = Recorder()
    rcfg = node_config(
        "RX2",
        tmp_path / "receiver",
        identity=orgs.identity("RX2"),
        peers=(peer("RX1", 1), peer("RX4", 1)),
        listen_port=0,
    )
    with anyio.fail_after(TIMEOUT):
        async with Node(rcfg) as rx:
            assert rx.port is not None
            # RX1's certificate comes from a CA the receiver does not trust. (The
            # sender trusts the receiver's CA, so only the receiver can object.)
            scfg = node_config(
                "RX1",
                tmp_path / "sender",
                identity=evil.identity("RX1"),
                peers=(peer("RX2", rx.port, ca=orgs.ca),),
                limits=TWO_TRIES,
            )
            async with Node(scfg, observer=events) as tx:
                transfer = await tx.send(source, to="RX2")
                with pytest.raises(TransferFailed):
                    await transfer.wait()
                assert (await tx.status())["dead"] == 1
            assert_nothing_received(rx)
            await deliver_ok(orgs, tmp_path, "RX4", rx.port, rx)

    details = [e.detail for e in events.of(EventKind.RETRYING) + events.of(EventKind.FAILED)]
    assert len(details) == TWO_TRIES.max_attempts
    assert all("Tls" in d or "certificate" in d.lower() for d in details), details


@pytest.mark.parametrize("case", ["unknown-organisation", "wrong-pinned-ca"])
async def test_refused_organisation(orgs: Pki, tmp_path: Path, case: str) -> None:
    """A valid certificate from the trusted CA is not enough: the organisation must
    be a configured peer, and from the CA pinned for it if one is."""
    other = Pki(tmp_path / "other", name="another CA")
    peers: tuple[Peer, ...]
    if case == "unknown-organisation":
        code, peers = "RX3", (peer("RX4", 1),)
    else:
        code, peers = "RX1", (peer("RX1", 1, ca=other.ca), peer("RX4", 1))
    source = make_study(tmp_path / "study", 3, seed=2)
    rcfg = node_config(
        "RX2",
        tmp_path / "receiver",
        identity=orgs.identity("RX2"),
        peers=peers,
        listen_port=0,
    )
    with anyio.fail_after(TIMEOUT):
        async with Node(rcfg) as rx:
            assert rx.port is not None
            scfg = node_config(
                code,
                tmp_path / "sender",
                identity=orgs.identity(code),
                peers=(peer("RX2", rx.port),),
                limits=TWO_TRIES,
            )
            async with Node(scfg) as tx:
                transfer = await tx.send(source, to="RX2")
                with pytest.raises(TransferFailed, match="refused"):
                    await transfer.wait()
                kept = await tx.ledger.outgoing(transfer.id)
                assert kept is not None
                assert kept.attempts == 1, "a refusal is final: no retry"
            assert_nothing_received(rx)
            audit = query(rx.config.data_dir / "ledger.sqlite", "SELECT org, action FROM audit")
            assert (code, "refused") in audit
            await deliver_ok(orgs, tmp_path, "RX4", rx.port, rx)


@pytest.mark.parametrize("plaintext", [False, True], ids=["tls", "plaintext"])
async def test_sender_refuses_a_receiver_of_another_organisation(
    orgs: Pki, tmp_path: Path, plaintext: bool
) -> None:
    """RX1 means to reach RX2, but RX3 answers at that address. With TLS the
    certificate name check fails; in plaintext the WELCOME names the wrong org."""
    source = make_study(tmp_path / "study", 3, seed=3)
    events = Recorder()
    rcfg = node_config(
        "RX3",
        tmp_path / "impostor",
        identity=None if plaintext else orgs.identity("RX3"),
        peers=(peer("RX1", 1),),
        listen_port=0,
        plaintext=plaintext,
    )
    with anyio.fail_after(TIMEOUT):
        async with Node(rcfg) as impostor:
            assert impostor.port is not None
            scfg = node_config(
                "RX1",
                tmp_path / "sender",
                identity=None if plaintext else orgs.identity("RX1"),
                peers=(peer("RX2", impostor.port),),
                limits=TWO_TRIES,
                plaintext=plaintext,
            )
            async with Node(scfg, observer=events) as tx:
                transfer = await tx.send(source, to="RX2")
                with pytest.raises(TransferFailed):
                    await transfer.wait()
            assert_nothing_received(impostor)
    detail = events.of(EventKind.FAILED, transfer.id)[0].detail
    if plaintext:
        assert "reached RX3, not RX2" in detail
    else:
        assert "Tls" in detail or "certificate" in detail.lower(), detail


def tamperer(mode: str, log: list[tuple[int, int]]) -> FrameHook:
    """An upstream frame hook that corrupts the data of the first CHUNK frame.

    ``flip``: one byte changes, the chunk digest no longer matches.
    ``forge``: one byte changes and the chunk digest is recomputed, so only the
    check of the whole instance against its offered digest can catch it.
    """
    done = False

    def hook(header: bytes, payload: bytes) -> tuple[bytes, bytes]:
        nonlocal done
        kind = header[3]
        if kind == CHUNK:
            log.append((int.from_bytes(header[8:12], "big"), int.from_bytes(header[16:24], "big")))
            if not done:
                done = True
                digest, data = payload[:32], bytearray(payload[32:])
                data[len(data) // 2] ^= 0xFF
                if mode == "forge":
                    assert header[4] == 1, "sha256 chunks"
                    digest = hashlib.sha256(data).digest()
                payload = digest + bytes(data)
                assert len(payload) == int.from_bytes(header[12:16], "big")
        return header, payload

    return hook


@pytest.mark.parametrize("chunk_size", [1 << 20, 64 * 1024], ids=["one-chunk", "multi-chunk"])
@pytest.mark.parametrize("mode", ["flip", "forge"])
async def test_tampered_chunk_is_refused_and_resent(
    tmp_path: Path, mode: str, chunk_size: int
) -> None:
    source = make_study(tmp_path / "study", 6, seed=4)
    sources = source_by_sop(study_files(source))
    chunks: list[tuple[int, int]] = []
    nacks: list[dict[str, object]] = []

    def downstream(header: bytes, payload: bytes) -> tuple[bytes, bytes]:
        assert header[:2] == b"DR"
        assert len(header) == HEADER_SIZE
        if header[3] == NACK:
            nacks.append(orjson.loads(payload))
        return header, payload

    rcfg = node_config(
        "RX2",
        tmp_path / "receiver",
        identity=None,
        peers=(peer("RX1", 1),),
        listen_port=0,
        plaintext=True,
    )
    limits: Limits = dataclasses.replace(QUICK, chunk_size=chunk_size)
    with anyio.fail_after(TIMEOUT):
        async with Node(rcfg) as rx:
            assert rx.port is not None
            hook = tamperer(mode, chunks)
            async with relay(rx.port, upstream=hook, downstream=downstream) as proxy:
                scfg = node_config(
                    "RX1",
                    tmp_path / "sender",
                    identity=None,
                    peers=(peer("RX2", proxy.port),),
                    limits=limits,
                    plaintext=True,
                )
                async with Node(scfg) as tx:
                    transfer = await tx.send(source, to="RX2")
                    receipt = await transfer.wait()
                    kept = await tx.ledger.outgoing(transfer.id)
                assert proxy.connections == 1, "the refusal was handled within one attempt"
            await assert_delivered(rx, receipt, sources)
            assert corrupt_records(rx.config.data_dir) == []
            assert len(list(stored_records(rx.config.data_dir))) == len(sources)
            assert incoming_files(rx.config.data_dir / "store") == []

    assert kept is not None
    assert kept.attempts == 0
    assert len(nacks) == 1, nacks
    slot, offset = chunks[0]
    expected_reason = "bad-digest" if mode == "flip" else "instance digest mismatch"
    assert nacks[0] == {"slot": slot, "offset": 0, "reason": expected_reason}
    # The tampered chunk went again: its (slot, offset) appears twice on the wire.
    assert chunks.count((slot, offset)) == 2
