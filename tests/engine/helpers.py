"""Shared helpers for the engine's integration tests: organisations and their
certificates, node configurations, event recording, byte-level checks of what a
receiver stored, and a TCP relay that can hold, freeze or tamper with traffic."""

from __future__ import annotations

import hashlib
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dicomrelay import pki, synth
from dicomrelay._native import InstanceInfo, SegmentReader, scan_many
from dicomrelay.config import DigestName, Limits, NodeConfig, Peer, StoreConfig
from dicomrelay.node import Node
from dicomrelay.pki import Identity
from dicomrelay.receipt import Receipt
from dicomrelay.transfer import Event, EventKind

LOCALHOST = "127.0.0.1"
HEADER_SIZE = 24  # docs/protocol.md: every frame starts with a 24-byte header
CHUNK, NACK = 4, 7  # frame kinds

# Fast retries so that failure paths finish in seconds.
QUICK = Limits(
    max_attempts=3, backoff_base=0.05, backoff_cap=0.5, connect_timeout=5.0, stall_timeout=10.0
)


class Pki:
    """A CA of its own and the organisations it certifies (issued on first use)."""

    def __init__(self, root: Path, name: str = "dicomrelay test CA") -> None:
        self.root = root
        self.ca_dir = root / "ca"
        self.ca = pki.make_ca(self.ca_dir, name)
        self._identities: dict[str, Identity] = {}

    def identity(self, code: str) -> Identity:
        if code not in self._identities:
            self._identities[code] = pki.issue_org(self.ca_dir, code, self.root / "orgs")
        return self._identities[code]

    def cert_der(self, code: str) -> bytes:
        return cert_der(self.identity(code))


def cert_der(identity: Identity) -> bytes:
    cert = x509.load_pem_x509_certificate(identity.cert.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        port: int = s.getsockname()[1]
    return port


def peer(code: str, port: int, *, ca: Path | None = None) -> Peer:
    return Peer(code=code, host=LOCALHOST, port=port, ca=ca)


# Test nodes' segments: small, so that rounds roll over into new segments
# (and a test machine does not preallocate a gigabyte per node).
SMALL_SEGMENTS = StoreConfig(segment_mb=4)


def node_config(
    org: str,
    data_dir: Path,
    *,
    identity: Identity | None,
    peers: Sequence[Peer] = (),
    listen_port: int | None = None,
    limits: Limits = QUICK,
    digest: DigestName = "sha256",
    plaintext: bool = False,
    store: StoreConfig = SMALL_SEGMENTS,
) -> NodeConfig:
    return NodeConfig(
        org=org,
        data_dir=data_dir,
        store=store,
        identity=identity,
        listen_port=listen_port,
        peers=tuple(peers),
        digest=digest,
        insecure_plaintext=plaintext,
        limits=limits,
    )


def receiver_config(
    orgs: Pki,
    root: Path,
    *,
    receiver: str = "RX2",
    sender: str = "RX1",
    store: StoreConfig = SMALL_SEGMENTS,
    limits: Limits = QUICK,
) -> NodeConfig:
    """``receiver``, listening on a free port, in ``root / "receiver"``; it knows
    ``sender`` by its certificate (the address is never dialled)."""
    return node_config(
        receiver,
        root / "receiver",
        identity=orgs.identity(receiver),
        peers=(peer(sender, 1),),
        listen_port=0,
        store=store,
        limits=limits,
    )


@asynccontextmanager
async def linked_nodes(
    orgs: Pki,
    root: Path,
    *,
    sender: str = "RX1",
    receiver: str = "RX2",
    limits: Limits = QUICK,
    digest: DigestName = "sha256",
    observer: Callable[[Event], None] | None = None,
    store: StoreConfig = SMALL_SEGMENTS,
    receiver_limits: Limits = QUICK,
) -> AsyncIterator[tuple[Node, Node]]:
    """A listening receiver and a sender configured to reach it, over mutual TLS."""
    rcfg = receiver_config(
        orgs, root, receiver=receiver, sender=sender, store=store, limits=receiver_limits
    )
    async with Node(rcfg) as rx:
        assert rx.port is not None
        scfg = node_config(
            sender,
            root / "sender",
            identity=orgs.identity(sender),
            peers=(peer(receiver, rx.port),),
            limits=limits,
            digest=digest,
        )
        async with Node(scfg, observer=observer) as tx:
            yield tx, rx


@dataclass
class Recorder:
    """An observer that keeps every event of every transfer, in order."""

    events: list[Event] = field(default_factory=list)
    hooks: list[Callable[[Event], None]] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        for hook in self.hooks:
            hook(event)

    def of(self, kind: EventKind, transfer_id: str | None = None) -> list[Event]:
        return [
            e
            for e in self.events
            if e.kind is kind and (transfer_id is None or e.transfer_id == transfer_id)
        ]

    def position(self, kind: EventKind, transfer_id: str) -> int:
        """Where the first event of ``kind`` for the transfer came, in arrival order."""
        for n, e in enumerate(self.events):
            if e.kind is kind and e.transfer_id == transfer_id:
                return n
        raise AssertionError(f"no {kind} event for transfer {transfer_id}")


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)
    assert predicate(), what


# What a study is, and what a receiver holds.
def make_study(directory: Path, count: int, *, profile: str = "mr", seed: int = 0) -> Path:
    return synth.write_study(directory, synth.PROFILES[profile], count, seed=seed)


def study_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def source_by_sop(paths: Iterable[Path]) -> dict[str, bytes]:
    """SOP Instance UID -> file bytes."""
    paths = list(paths)
    out: dict[str, bytes] = {}
    for path, info in zip(paths, scan_many(paths), strict=True):
        assert isinstance(info, InstanceInfo), f"{path}: {info}"
        assert info.sop_instance_uid is not None
        out[info.sop_instance_uid] = path.read_bytes()
    return out


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    if algorithm == "sha256":
        return hashlib.sha256(data).hexdigest()
    import blake3  # the test extra; the engine's own hasher is not the judge of itself

    return str(blake3.blake3(data).hexdigest())


def blob_files(store_root: Path) -> list[Path]:
    return sorted(p for p in (store_root / "blobs").rglob("*") if p.is_file())


def incoming_files(store_root: Path) -> list[Path]:
    return sorted(p for p in (store_root / "incoming").rglob("*") if p.is_file())


def corrupt_blobs(store_root: Path, algorithm: str = "sha256") -> list[Path]:
    """Blobs whose bytes do not hash to their name: must always be empty."""
    return [p for p in blob_files(store_root) if digest_of(p.read_bytes(), algorithm) != p.name]


def segment_dir(data_dir: Path) -> Path:
    """Where a node's segment store is."""
    return data_dir / "store" / "segments"


def stored_records(data_dir: Path) -> dict[str, tuple[int, int, int]]:
    """The records a node's ledger (SQLite) locates in its store, by digest."""
    name = (segment_dir(data_dir) / "store-name").read_text().strip()
    rows = query(
        data_dir / "ledger.sqlite",
        "SELECT digest, segment, record_offset, length FROM segment_records WHERE store = ?",
        name,
    )
    return {d: (s, o, n) for d, s, o, n in rows}


def read_stored(data_dir: Path, digest: str) -> bytes:
    """An instance's bytes as the node's store holds them, read beside the
    node (a reader takes no lock), checked against its digest."""
    where = stored_records(data_dir)[digest]
    return bytes(SegmentReader(segment_dir(data_dir)).read(where, digest, verify=True))


def corrupt_records(data_dir: Path) -> list[str]:
    """Located records that are not whole and true to their digest: must always be empty."""
    reader = SegmentReader(segment_dir(data_dir))
    bad = []
    for digest, where in stored_records(data_dir).items():
        try:
            reader.read(where, digest, verify=True)
        except OSError:
            bad.append(digest)
    return bad


async def assert_delivered(
    receiver: Node, receipt: Receipt, sources: dict[str, bytes], algorithm: str = "sha256"
) -> None:
    """The receipt names exactly the sources, with their true digests, and the
    receiver's committed study holds their exact bytes."""
    assert receipt.digest_algorithm == algorithm
    listed = {i.sop_instance_uid: i for i in receipt.instances}
    assert len(listed) == len(receipt.instances), "an instance listed twice in the receipt"
    assert set(listed) == set(sources)
    for sop, data in sources.items():
        assert listed[sop].digest == digest_of(data, algorithm), f"receipt digest of {sop}"
        assert listed[sop].size == len(data)
    stored = await receiver.study(receipt.study_instance_uid)
    assert sorted(uid for uid, _ in stored) == sorted(sources)
    for uid, digest in stored:
        data = bytes(await receiver.store.read_instance(digest))
        assert data == sources[uid], f"stored bytes of {uid} differ from the source"
        with await receiver.store.open_instance(digest) as reader:
            assert b"".join(reader) == data, f"{uid} streamed differs from it read whole"


def query(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Read a node's ledger through a connection of its own (WAL: readers never block)."""
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


# A TCP relay between a sender and a receiver.
FrameHook = Callable[[bytes, bytes], tuple[bytes, bytes]]


class FrameSplitter:
    """Cuts a plaintext byte stream into (header, payload) frames."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self.buffer += data
        frames = []
        while len(self.buffer) >= HEADER_SIZE:
            length = int.from_bytes(self.buffer[12:16], "big")
            if len(self.buffer) < HEADER_SIZE + length:
                break
            frames.append(
                (
                    bytes(self.buffer[:HEADER_SIZE]),
                    bytes(self.buffer[HEADER_SIZE : HEADER_SIZE + length]),
                )
            )
            del self.buffer[: HEADER_SIZE + length]
        return frames


@dataclass
class Relay:
    """Forwards loopback connections to ``target``.

    ``gate``: hold each accepted connection until it is set. ``upstream`` and
    ``downstream`` see (and may rewrite) each frame of a plaintext connection.
    ``freeze_after``: once this many bytes went upstream, stop forwarding in both
    directions, keeping every connection open (a peer that hangs mid-transfer).
    """

    target: int
    gate: anyio.Event | None = None
    upstream: FrameHook | None = None
    downstream: FrameHook | None = None
    freeze_after: int | None = None
    port: int = 0
    connections: int = 0
    upstream_bytes: int = 0
    frozen: bool = False

    async def _pipe(self, src: SocketStream, dst: SocketStream, up: bool) -> None:
        hook = self.upstream if up else self.downstream
        splitter = FrameSplitter() if hook is not None else None
        while True:
            if self.frozen:
                await anyio.sleep_forever()
            data = await src.receive()
            if self.frozen:
                await anyio.sleep_forever()
            if splitter is not None and hook is not None:
                data = b"".join(h + p for h, p in (hook(*f) for f in splitter.feed(data)))
            if up and self.freeze_after is not None:
                self.upstream_bytes += len(data)
                if self.upstream_bytes > self.freeze_after:
                    self.frozen = True
                    await anyio.sleep_forever()
            if data:
                await dst.send(data)

    async def _handle(self, client: SocketStream) -> None:
        self.connections += 1
        async with client:
            try:
                if self.gate is not None:
                    await self.gate.wait()
                server = await anyio.connect_tcp(LOCALHOST, self.target)
                async with server, anyio.create_task_group() as tg:

                    async def pipe(src: SocketStream, dst: SocketStream, up: bool) -> None:
                        try:
                            await self._pipe(src, dst, up)
                        finally:
                            tg.cancel_scope.cancel()

                    tg.start_soon(pipe, client, server, True)
                    tg.start_soon(pipe, server, client, False)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            except OSError:
                pass
            except BaseExceptionGroup as group:
                _, rest = group.split(
                    (
                        anyio.EndOfStream,
                        anyio.BrokenResourceError,
                        anyio.ClosedResourceError,
                        OSError,
                    )
                )
                if rest is not None:
                    raise rest from None


@asynccontextmanager
async def relay(
    target: int,
    *,
    gate: anyio.Event | None = None,
    upstream: FrameHook | None = None,
    downstream: FrameHook | None = None,
    freeze_after: int | None = None,
) -> AsyncIterator[Relay]:
    r = Relay(
        target=target,
        gate=gate,
        upstream=upstream,
        downstream=downstream,
        freeze_after=freeze_after,
    )
    listener = await anyio.create_tcp_listener(local_host=LOCALHOST, local_port=0)
    r.port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, r._handle)
        yield r
        tg.cancel_scope.cancel()


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never says a word."""

    async def hold(stream: SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host=LOCALHOST, local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        yield listener.extra(SocketAttribute.local_port)
        tg.cancel_scope.cancel()
