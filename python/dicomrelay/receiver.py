"""The receiving side of the wire protocol: one task per connection, one shared
group committer.

An instance is acknowledged only after its blob is fsynced and renamed, its
directory fsynced, and its row committed to the ledger; the committer batches
those last two steps across every connection.
"""

from __future__ import annotations

import errno
import itertools
import logging
import re
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import anyio
import anyio.to_thread

from dicomrelay import pki
from dicomrelay._native import DurableWriter, Hasher, Payload, TlsConfig
from dicomrelay.config import DigestName, NodeConfig
from dicomrelay.connection import Connection, Frame
from dicomrelay.errors import DicomrelayError, ProtocolError, TlsError, first_failure
from dicomrelay.ledger import IncomingInstance, Ledger
from dicomrelay.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Commit,
    Failure,
    Have,
    Hello,
    InboundInstance,
    Kind,
    Nack,
    Offer,
    Verdict,
    Welcome,
)
from dicomrelay.receipt import Receipt, ReceivedInstance
from dicomrelay.store import BlobStore, StorageError

log = logging.getLogger("dicomrelay.receiver")

_ORG_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")  # an organisation code: nothing to escape

# Large instances are made durable (and their offset recorded) every this many bytes.
CHECKPOINT_BYTES = 64 << 20


class Refused(DicomrelayError):
    """A peer this node will not talk to."""


CLAIM_SHOWN = 64  # characters of a name a peer claims that an audit row keeps


def claimed(name: str) -> str:
    """A name a peer sent, fit for an audit row: quoted, escaped (no forged
    lines), and cut short."""
    shown = repr(name[:CLAIM_SHOWN])
    return shown if len(name) <= CLAIM_SHOWN else f"{shown}... ({len(name)} characters)"


def _address(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


@dataclass(slots=True)
class Stored:
    """An instance on its way to durable: blob, then ledger row, then acknowledgement."""

    sender: str
    transfer_id: str
    instance: IncomingInstance
    acknowledge: Callable[[int, float, BaseException | None], None]
    slot: int


class Committer:
    """Group commit across every connection.

    Whole blobs go to a native ``DurableWriter``, which writes them on its own
    threads and makes each round durable with one filesystem commit. Finished
    rounds (and large instances, made durable as they arrived) get their ledger
    rows in one transaction per transfer; then their acknowledgements go out.
    """

    def __init__(self, ledger: Ledger, store: BlobStore) -> None:
        self.ledger = ledger
        self.store = store
        self.writer = DurableWriter(store.root)
        self._writing: dict[int, Stored] = {}
        self._tokens = itertools.count()
        self._ready: list[tuple[Stored, BaseException | None]] = []
        self._wake = anyio.Event()

    def write(self, item: Stored, data: Payload) -> None:
        """Make ``data`` durable as the blob of ``item``, then record and acknowledge it."""
        token = next(self._tokens)
        self._writing[token] = item
        digest = item.instance.digest
        temp = self.store.incoming / f"{digest}.{token}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            self.writer.submit(token, data, temp, self.store.path_of(digest))
        except OSError as e:
            del self._writing[token]
            self._done(item, e)

    def durable(self, item: Stored) -> None:
        """Record and acknowledge an instance already durable under its name."""
        self._done(item, None)

    def _done(self, item: Stored, error: BaseException | None) -> None:
        self._ready.append((item, error))
        self._wake.set()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._collect)
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                batch, self._ready = self._ready, []
                await self._commit(batch)

    async def _collect(self) -> None:
        while True:
            await anyio.wait_readable(self.writer.fileno())
            for token, error in self.writer.completed():
                item = self._writing.pop(token)
                self._done(item, None if error is None else _storage_error(error, item))

    async def _commit(self, batch: list[tuple[Stored, BaseException | None]]) -> None:
        """Ledger rows for the durable instances, then every acknowledgement."""
        groups: dict[tuple[str, str], list[IncomingInstance]] = defaultdict(list)
        for item, error in batch:
            if error is None:
                groups[(item.sender, item.transfer_id)].append(item.instance)
        failure: BaseException | None = None
        try:
            for (sender, transfer_id), instances in groups.items():
                await self.ledger.record_received(sender, transfer_id, instances)
        except (OSError, DicomrelayError) as e:
            log.error("group commit failed: %s", e)
            failure = e
        for item, error in batch:
            item.acknowledge(item.slot, item.instance.stored, error or failure)

    def close(self) -> None:
        self.writer.close()


def _storage_error(error: OSError, item: Stored) -> StorageError:
    reason = "disk full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else str(error)
    e = StorageError(f"cannot store {item.instance.sop_instance_uid}: {reason}")
    e.errno = error.errno
    return e


class Receiver:
    """Accepts connections from known peers and stores what they send."""

    def __init__(
        self,
        config: NodeConfig,
        ledger: Ledger,
        store: BlobStore,
        committer: Committer,
        tls: TlsConfig | None,
        key_pem: bytes | None,
        *,
        on_committed: Callable[[str], None] | None = None,
    ) -> None:
        """``on_committed`` hears of each study committed (for delivery onwards)."""
        self.config = config
        self.on_committed = on_committed
        self.ledger = ledger
        self.store = store
        self.committer = committer
        self.tls = tls
        self.key_pem = key_pem
        self._write_limit = anyio.CapacityLimiter(8)

    async def handle(self, sock: socket.socket) -> None:
        """Serve one accepted connection until it closes; never raises."""
        conn: Connection | None = None
        address = _address(sock)
        try:
            timeout = self.config.limits.connect_timeout
            try:
                with anyio.fail_after(timeout):
                    conn = await Connection.open(sock, self.tls)
            except TlsError as e:
                await self._audit_handshake(address, str(e))
                raise
            except TimeoutError:
                await self._audit_handshake(address, f"no TLS handshake within {timeout:g} s")
                raise
            await _Session(self, conn, address).run()
        except Refused as e:
            log.warning("refused connection: %s", e)
        except (ConnectionResetError, DicomrelayError, OSError, TimeoutError) as e:
            log.info("connection ended: %s", e)
        except Exception:
            # A defect met on one connection must not take the listener down.
            log.exception("connection failed")
        finally:
            if conn is not None:
                await conn.aclose()

    async def _audit_handshake(self, address: str, reason: str) -> None:
        """A failed handshake on the wire port: nobody proven, so the row is this
        node's, with the caller's address."""
        await self.ledger.audit(self.config.org, "tls-refused", None, f"{address}: {reason}")

    def proven_org(self, conn: Connection, name: str) -> str:
        """Who is on the other end, for the audit: the organisation the peer's
        certificate proves; without TLS, the name it claimed (escaped, cut
        short); "?" for a certificate that names none."""
        if self.tls is None:
            return name.upper() if _ORG_CODE.fullmatch(name) else claimed(name)
        return conn.peer_org or "?"

    def check_peer(self, conn: Connection, name: str) -> str:
        """The organisation on the other end, or Refused."""
        if self.tls is None:
            org = name.upper()
        else:
            if conn.peer_org is None or conn.peer_certificate is None:
                raise Refused("certificate names no organisation")
            org = conn.peer_org
        try:
            peer = self.config.peer(org)
        except DicomrelayError:
            raise Refused(f"unknown organisation {claimed(org)}") from None
        if self.tls is not None:
            try:
                pki.require_issuer(conn.peer_certificate, peer.ca, org)
            except TlsError as e:
                raise Refused(str(e)) from e
        return org


class _Session:
    """One connection's protocol state on the receiving side."""

    def __init__(self, receiver: Receiver, conn: Connection, address: str) -> None:
        self.r = receiver
        self.conn = conn
        self.address = address
        self.sender = ""
        self.slots: dict[int, InboundInstance] = {}
        self.hashers: dict[int, Hasher] = {}  # whole-instance digests of multi-chunk slots
        self.algorithms: dict[int, DigestName] = {}
        self.acks: list[tuple[int, float]] = []
        self.failures: list[tuple[int, BaseException]] = []
        self.acks_ready = anyio.Event()
        self.buffered = 0  # bytes handed to the writer, not yet durable
        self.writing: dict[int, int] = {}  # slot -> bytes being written
        self.buffer_free = anyio.Event()

    async def run(self) -> None:
        """Raises the session's first failure itself, not wrapped in a group."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._send_acks)
                try:
                    await self._serve()
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise first_failure(group) from None

    async def _serve(self) -> None:
        hello_seen = False
        async for frames in self.conn.frames():
            for frame in frames:
                if not hello_seen:
                    await self._hello(frame)
                    hello_seen = True
                elif frame.kind is Kind.CHUNK:
                    await self._chunk(frame)
                elif frame.kind is Kind.OFFER:
                    await self._offer(Offer.parse(frame.payload))
                elif frame.kind is Kind.COMMIT:
                    await self._commit(Commit.parse(frame.payload))
                else:
                    raise ProtocolError(f"unexpected {frame.kind.name} from a sender")

    async def _hello(self, frame: Frame) -> None:
        if frame.kind is not Kind.HELLO:
            raise ProtocolError(f"expected HELLO, got {frame.kind.name}")
        hello = Hello.parse(frame.payload)
        try:
            self.sender = self.r.check_peer(self.conn, hello.org)
        except Refused as e:
            org = self.r.proven_org(self.conn, hello.org)
            detail = f"{self.address}: {e}; HELLO claimed {claimed(hello.org)}"
            await self.r.ledger.audit(org, "refused", None, detail)
            await self._fail("refused", str(e), retriable=False)
            raise
        if hello.protocol != PROTOCOL_VERSION:
            await self._fail("version", f"this node speaks protocol {PROTOCOL_VERSION}", False)
            raise ProtocolError(f"peer speaks protocol {hello.protocol}")
        welcome = Welcome(protocol=PROTOCOL_VERSION, org=self.r.config.org)
        await self.conn.send(Kind.WELCOME, welcome.payload())

    async def _fail(
        self, code: str, message: str, retriable: bool, transfer: str | None = None
    ) -> None:
        failure = Failure(code=code, message=message, retriable=retriable, transfer_id=transfer)
        await self.conn.send(Kind.ERROR, failure.payload())

    async def _offer(self, offer: Offer) -> None:
        receipt = await self.r.ledger.note_incoming(
            self.sender, offer.transfer_id, offer.study_instance_uid, offer.total, offer.digest
        )
        if receipt is not None:
            have = Have(transfer_id=offer.transfer_id, offsets={}, receipt=receipt)
            await self.conn.send(Kind.HAVE, have.payload())
            return
        held = await self.r.ledger.received(self.sender, offer.transfer_id)
        offsets: dict[int, int] = {}
        already: list[IncomingInstance] = []
        now = time.time()
        fresh = []
        for item in offer.instances:
            if item.slot in self.slots:
                raise ProtocolError(f"slot {item.slot} offered twice")
            got = held.get(item.index)
            if got is not None and got.digest == item.digest:
                offsets[item.slot] = item.size
            else:
                fresh.append(item)
        # Content this sender delivered before, in any transfer, need not travel
        # again. (Only its own: a digest alone must not let one organisation claim
        # bytes that another sent.)
        delivered = await self.r.ledger.digests_from(self.sender, [i.digest for i in fresh])
        candidates = [i for i in fresh if i.digest in delivered]
        sizes = await anyio.to_thread.run_sync(
            lambda: {i.digest: self.r.store.size_of(i.digest) for i in candidates}
        )
        for item in fresh:
            if sizes.get(item.digest) == item.size:
                offsets[item.slot] = item.size
                already.append(
                    IncomingInstance(
                        index=item.index,
                        sop_instance_uid=item.sop_instance_uid,
                        size=item.size,
                        digest=item.digest,
                        stored=now,
                    )
                )
                continue
            inbound = InboundInstance(transfer_id=offer.transfer_id, offered=item)
            self.slots[item.slot] = inbound
            if item.size > offer.chunk_size:
                algorithm = cast(DigestName, offer.digest)  # Offer.parse checked the name
                self.algorithms[item.slot] = algorithm
                self.hashers[item.slot] = await self._resume_partial(item.slot, inbound, algorithm)
                if inbound.received:
                    offsets[item.slot] = inbound.received
        if already:
            await self.r.ledger.record_received(self.sender, offer.transfer_id, already)
        have = Have(transfer_id=offer.transfer_id, offsets=offsets)
        await self.conn.send(Kind.HAVE, have.payload())

    async def _chunk(self, frame: Frame) -> None:
        inbound = self.slots.get(frame.stream)
        assert frame.data is not None
        data = memoryview(frame.data)
        if inbound is None:
            raise ProtocolError(f"chunk for slot {frame.stream}, which was not offered")
        verdict = inbound.judge(frame.offset, len(data), frame.digest_ok)
        if verdict is Verdict.OVERRUN:
            raise ProtocolError(f"slot {frame.stream}: more bytes than offered")
        if verdict in (Verdict.BAD_DIGEST, Verdict.OUT_OF_ORDER):
            # Chunks sent after the refused one are already on the way: one NACK is enough.
            if not (verdict is Verdict.OUT_OF_ORDER and inbound.refused):
                inbound.refused = True
                nack = Nack(slot=frame.stream, offset=inbound.received, reason=verdict.value)
                await self.conn.send(Kind.NACK, nack.payload())
            return
        inbound.refused = False
        offered = inbound.offered
        hasher = self.hashers.get(frame.stream)
        if hasher is None:
            # The whole instance in one chunk: the chunk's verified digest is the instance's.
            if frame.digest is None or frame.digest.hex() != offered.digest:
                await self._refuse_instance(frame.stream, inbound, "instance digest mismatch")
                return
            await self._reserve(len(data))
            del self.slots[frame.stream]
            self._store_whole(frame.stream, inbound, frame.data)
            return
        hasher.update(data)
        key = self._partial_key(inbound)
        # A checkpoint makes the bytes so far durable, so a later attempt resumes there.
        checkpoint = verdict is Verdict.APPEND and inbound.received % CHECKPOINT_BYTES < len(data)
        await anyio.to_thread.run_sync(
            lambda: self.r.store.append_partial(key, frame.offset, data, sync=checkpoint),
            limiter=self.r._write_limit,
        )
        if checkpoint:
            await self.r.ledger.record_partial(
                self.sender, inbound.transfer_id, offered.index, inbound.received
            )
        if verdict is Verdict.COMPLETE:
            del self.slots[frame.stream]
            del self.hashers[frame.stream]
            if hasher.hexdigest() != offered.digest:
                await anyio.to_thread.run_sync(self.r.store.discard_partial, key)
                await self.r.ledger.record_partial(
                    self.sender, inbound.transfer_id, offered.index, 0
                )
                await self._refuse_instance(frame.stream, inbound, "instance digest mismatch")
                return
            self.algorithms.pop(frame.stream, None)
            await anyio.to_thread.run_sync(self.r.store.publish_partial, key, offered.digest)
            self.r.committer.durable(self._stored(frame.stream, inbound))

    def _partial_key(self, inbound: InboundInstance) -> str:
        return f"{self.sender}-{inbound.transfer_id}-{inbound.offered.index}"

    async def _resume_partial(
        self, slot: int, inbound: InboundInstance, algorithm: DigestName
    ) -> Hasher:
        """A large instance's durable prefix from an earlier attempt, if any: cut the
        partial file back to its last checkpoint and hash that prefix again."""
        offset = await self.r.ledger.partial(
            self.sender, inbound.transfer_id, inbound.offered.index
        )
        key = self._partial_key(inbound)
        if not offset:
            return Hasher(algorithm)
        try:
            hasher = await anyio.to_thread.run_sync(
                self.r.store.hash_partial, key, offset, Hasher(algorithm)
            )
        except (OSError, ValueError):
            return Hasher(algorithm)
        inbound.received = offset
        return hasher

    async def _refuse_instance(self, slot: int, inbound: InboundInstance, reason: str) -> None:
        """Ask for the whole instance again; the slot stays open from byte 0."""
        inbound.received = 0
        inbound.refused = True
        self.slots[slot] = inbound
        if slot in self.algorithms:
            self.hashers[slot] = Hasher(self.algorithms[slot])
        nack = Nack(slot=slot, offset=0, reason=reason)
        await self.conn.send(Kind.NACK, nack.payload())

    async def _reserve(self, size: int) -> None:
        """Backpressure: stop reading while too many bytes wait to become durable."""
        while self.buffered and self.buffered + size > self.r.config.limits.write_buffer_bytes:
            self.buffer_free = anyio.Event()
            await self.buffer_free.wait()
        self.buffered += size

    def _store_whole(self, slot: int, inbound: InboundInstance, data: Payload) -> None:
        self.writing[slot] = len(data)
        self.r.committer.write(self._stored(slot, inbound), data)

    def _stored(self, slot: int, inbound: InboundInstance) -> Stored:
        o = inbound.offered
        instance = IncomingInstance(
            index=o.index,
            sop_instance_uid=o.sop_instance_uid,
            size=o.size,
            digest=o.digest,
            stored=time.time(),
        )
        return Stored(
            sender=self.sender,
            transfer_id=inbound.transfer_id,
            instance=instance,
            acknowledge=self._acknowledge,
            slot=slot,
        )

    def _acknowledge(self, slot: int, stored_at: float, error: BaseException | None) -> None:
        self.buffered -= self.writing.pop(slot, 0)
        self.buffer_free.set()
        if error is None:
            self.acks.append((slot, stored_at))
        else:
            self.failures.append((slot, error))
        self.acks_ready.set()

    async def _send_acks(self) -> None:
        while True:
            await self.acks_ready.wait()
            self.acks_ready = anyio.Event()
            acks, self.acks = self.acks, []
            failures, self.failures = self.failures, []
            if acks:
                await self.conn.send(Kind.ACK, Ack(stored=tuple(acks)).payload())
            for _slot, error in failures:
                await self._fail("storage", str(error), retriable=True)

    async def _commit(self, commit: Commit) -> None:
        ledger = self.r.ledger
        incoming = await ledger.incoming(self.sender, commit.transfer_id)
        if incoming is None:
            raise ProtocolError(f"commit of transfer {commit.transfer_id}, which was not offered")
        if incoming.receipt is not None:
            await self.conn.send(Kind.RECEIPT, incoming.receipt)
            return
        received = await ledger.received(self.sender, commit.transfer_id)
        total = incoming.total
        study = incoming.study_instance_uid
        digest = incoming.digest
        if len(received) < total:
            await self._fail(
                "incomplete",
                f"{len(received)} of {total} instances held",
                retriable=True,
                transfer=commit.transfer_id,
            )
            return
        now = time.time()
        receipt = Receipt(
            transfer_id=commit.transfer_id,
            sender=self.sender,
            receiver=self.r.config.org,
            study_instance_uid=study,
            digest_algorithm=digest,
            committed_at=now,
            instances=tuple(
                ReceivedInstance(
                    sop_instance_uid=i.sop_instance_uid,
                    digest=i.digest,
                    size=i.size,
                    stored_at=i.stored,
                )
                for i in sorted(received.values(), key=lambda i: i.index)
            ),
        )
        if self.r.key_pem is not None:
            receipt = receipt.signed(self.r.key_pem)
        stored = await ledger.commit_incoming(
            self.sender, commit.transfer_id, study, receipt.to_json(), now
        )
        await ledger.audit(
            self.sender, "received", commit.transfer_id, f"{total} instances of {study}"
        )
        await self.conn.send(Kind.RECEIPT, stored)
        if self.r.on_committed is not None:
            self.r.on_committed(study)
