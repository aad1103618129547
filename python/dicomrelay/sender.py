"""The sending side of the wire protocol: one attempt of one transfer over one
connection, pipelined (offers ahead of chunks, a window of unacknowledged bytes)."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from dicomrelay.config import Limits
from dicomrelay.connection import Connection, Frame
from dicomrelay.errors import DicomrelayError, ProtocolError, first_failure
from dicomrelay.ledger import OutgoingInstance, OutgoingTransfer
from dicomrelay.protocol import (
    DIGEST_FLAGS,
    PROTOCOL_VERSION,
    Ack,
    Commit,
    Failure,
    Have,
    Hello,
    Kind,
    Nack,
    Offer,
    OfferedInstance,
    Welcome,
)
from dicomrelay.receipt import Receipt, ReceiptError

MAX_RESENDS = 3


class AttemptFailed(DicomrelayError):
    """One attempt failed; ``retriable`` says whether another may succeed."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


@dataclass(slots=True)
class _Slot:
    instance: OutgoingInstance
    start: int = 0  # the byte to send from (after HAVE or NACK)
    resends: int = 0
    first_sent: float = 0.0  # monotonic time its first chunk went out


@dataclass(slots=True)
class _Progress:
    """Shared by the writer and the reader of one attempt."""

    slots: dict[int, _Slot] = field(default_factory=dict)
    haves: deque[Have] = field(default_factory=deque)
    have_ready: anyio.Event = field(default_factory=anyio.Event)
    in_flight: int = 0  # bytes sent, not yet acknowledged
    window_open: anyio.Event = field(default_factory=anyio.Event)
    unacked: int = 0  # instances not yet acknowledged
    all_acked: anyio.Event = field(default_factory=anyio.Event)
    resend: deque[int] = field(default_factory=deque)
    wake: anyio.Event = field(default_factory=anyio.Event)  # an ack or a resend request came in
    receipt: bytes | None = None
    receipt_ready: anyio.Event = field(default_factory=anyio.Event)
    last_progress: float = field(default_factory=time.monotonic)


async def greet(conn: Connection, org: str, expected: str, digest: str) -> None:
    """HELLO and WELCOME: the receiver must be the organisation we meant to reach."""
    await conn.send(
        Kind.HELLO, Hello(protocol=PROTOCOL_VERSION, org=org, digests=(digest,)).payload()
    )
    async for frames in conn.frames():
        frame = frames[0]
        if frame.kind is Kind.ERROR:
            f = Failure.parse(frame.payload)
            raise AttemptFailed(f"{expected} refused us: {f.message}", retriable=f.retriable)
        if frame.kind is not Kind.WELCOME:
            raise ProtocolError(f"expected WELCOME, got {frame.kind.name}")
        welcome = Welcome.parse(frame.payload)
        if welcome.org != expected:
            raise AttemptFailed(f"reached {welcome.org}, not {expected}", retriable=False)
        if len(frames) > 1:
            raise ProtocolError("frames after WELCOME before any offer")
        return
    raise ConnectionResetError("closed during greeting")


class Attempt:
    """Send ``instances`` (the unacknowledged ones) of ``transfer`` and commit it."""

    def __init__(
        self,
        conn: Connection,
        transfer: OutgoingTransfer,
        instances: list[OutgoingInstance],
        limits: Limits,
        *,
        on_acked: Callable[[list[tuple[int, float]]], None],
        on_sent: Callable[[int], None],
    ) -> None:
        self.conn = conn
        self.transfer = transfer
        self.instances = instances
        self.limits = limits
        self.on_acked = on_acked
        self.on_sent = on_sent
        self.p = _Progress()
        self.flags = DIGEST_FLAGS[transfer.digest]

    async def run(self) -> Receipt:
        """Raises the attempt's first failure itself, not wrapped in a group."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read)
                tg.start_soon(self._watchdog)
                receipt = await self._write()
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise first_failure(group) from None
        return receipt

    async def _watchdog(self) -> None:
        """Fail the attempt when nothing moves for ``stall_timeout`` seconds."""
        while True:
            await anyio.sleep(1)
            if time.monotonic() - self.p.last_progress > self.limits.stall_timeout:
                raise AttemptFailed(
                    f"no progress for {self.limits.stall_timeout:.0f}s", retriable=True
                )

    def _progressed(self) -> None:
        self.p.last_progress = time.monotonic()

    async def _write(self) -> Receipt:
        batches = [
            self.instances[i : i + self.limits.offer_batch]
            for i in range(0, len(self.instances), self.limits.offer_batch)
        ]
        self.p.unacked = len(self.instances)
        if not batches:
            self.p.all_acked.set()
        slot = 0
        offered: deque[list[int]] = deque()
        for n, batch in enumerate(batches):
            slots = []
            for inst in batch:
                self.p.slots[slot] = _Slot(instance=inst)
                slots.append(slot)
                slot += 1
            await self._offer(batch, slots)
            offered.append(slots)
            # Keep one offer ahead: its answer travels while this batch's chunks do.
            if n >= 1 and await self._send_batch(offered.popleft()):
                break
        while offered:
            if await self._send_batch(offered.popleft()):
                break
        while not self.p.all_acked.is_set():
            await self._drain_resends()
            if not self.p.all_acked.is_set() and not self.p.resend:
                self.p.wake = anyio.Event()
                await self.p.wake.wait()
        if self.p.receipt is None:
            await self.conn.send(Kind.COMMIT, Commit(transfer_id=self.transfer.id).payload())
            await self.p.receipt_ready.wait()
        assert self.p.receipt is not None
        return self._verified(self.p.receipt)

    async def _offer(self, batch: list[OutgoingInstance], slots: list[int]) -> None:
        offer = Offer(
            transfer_id=self.transfer.id,
            study_instance_uid=self.transfer.study_instance_uid,
            priority=self.transfer.priority,
            digest=self.transfer.digest,
            chunk_size=self.transfer.chunk_size,
            total=self.transfer.total,
            instances=tuple(
                OfferedInstance(
                    slot=s,
                    index=i.index,
                    sop_instance_uid=i.sop_instance_uid,
                    size=i.size,
                    digest=i.digest,
                )
                for s, i in zip(slots, batch, strict=True)
            ),
        )
        await self.conn.send(Kind.OFFER, offer.payload())

    async def _next_have(self) -> Have:
        while not self.p.haves:
            self.p.have_ready = anyio.Event()
            await self.p.have_ready.wait()
        return self.p.haves.popleft()

    async def _send_batch(self, slots: list[int]) -> bool:
        """Send a batch once its HAVE is in. True when the transfer turned out committed."""
        have = await self._next_have()
        if have.receipt is not None:
            self.p.receipt = have.receipt
            self.p.all_acked.set()
            return True
        done = []
        for s in slots:
            held = have.offsets.get(s, 0)
            if held >= self.p.slots[s].instance.size:
                done.append(s)
            else:
                self.p.slots[s].start = held
        if done:
            self._acked(done)
        for s in slots:
            if s in self.p.slots and s not in done:
                await self._send_instance(s)
            await self._drain_resends()
        return False

    async def _drain_resends(self) -> None:
        while self.p.resend:
            s = self.p.resend.popleft()
            if s in self.p.slots:
                await self._send_instance(s)

    async def _send_instance(self, s: int) -> None:
        slot = self.p.slots[s]
        inst = slot.instance
        chunk = self.transfer.chunk_size
        offset = slot.start - slot.start % chunk
        # The window is checked per instance: acknowledgements come per whole
        # instance, so one larger than the window must go out in one piece
        # (TCP's own flow control paces its chunks).
        window = self.limits.window_bytes
        while self.p.in_flight and self.p.in_flight + min(inst.size - offset, window) > window:
            self.p.window_open = anyio.Event()
            await self.p.window_open.wait()
        fd = os.open(inst.path, os.O_RDONLY)
        if not slot.first_sent:
            slot.first_sent = time.monotonic()
        try:
            while offset < inst.size:
                n = min(chunk, inst.size - offset)
                digest = bytes.fromhex(inst.chunk_digests[offset // chunk])
                try:
                    await self.conn.send_from_file(
                        Kind.CHUNK, fd, offset, n, stream=s, flags=self.flags, digest=digest
                    )
                except EOFError:
                    raise AttemptFailed(
                        f"{inst.path} shrank after it was scanned", retriable=False
                    ) from None
                self.p.in_flight += n
                offset += n
                self._progressed()  # a peer that stops reading stops this too
        finally:
            os.close(fd)
        self.on_sent(inst.index)

    def _acked(self, slots: list[int]) -> None:
        """Instances the receiver holds durably; with each, seconds from first byte sent."""
        now = time.monotonic()
        indexes: list[tuple[int, float]] = []
        for s in slots:
            slot = self.p.slots.pop(s, None)
            if slot is None:
                continue
            indexes.append((slot.instance.index, now - slot.first_sent if slot.first_sent else 0.0))
            self.p.in_flight = max(0, self.p.in_flight - (slot.instance.size - slot.start))
        self.p.unacked -= len(indexes)
        self.p.window_open.set()
        self._progressed()
        if indexes:
            self.on_acked(indexes)
        if self.p.unacked <= 0:
            self.p.all_acked.set()
        self.p.wake.set()

    async def _read(self) -> None:
        async for frames in self.conn.frames():
            for frame in frames:
                self._handle(frame)
        raise ConnectionResetError("receiver closed the connection")

    def _handle(self, frame: Frame) -> None:
        if frame.kind is Kind.HAVE:
            self.p.haves.append(Have.parse(frame.payload))
            self.p.have_ready.set()
            self._progressed()
        elif frame.kind is Kind.ACK:
            self._acked([s for s, _ in Ack.parse(frame.payload).stored])
        elif frame.kind is Kind.NACK:
            nack = Nack.parse(frame.payload)
            slot = self.p.slots.get(nack.slot)
            if slot is None:
                return
            slot.resends += 1
            if slot.resends > MAX_RESENDS:
                raise AttemptFailed(
                    f"instance {slot.instance.sop_instance_uid} refused {slot.resends} times"
                    f" ({nack.reason})",
                    retriable=True,
                )
            sent = slot.instance.size - slot.start
            self.p.in_flight = max(0, self.p.in_flight - sent)
            slot.start = nack.offset
            self.p.resend.append(nack.slot)
            self.p.window_open.set()
            self.p.wake.set()
        elif frame.kind is Kind.RECEIPT:
            self.p.receipt = frame.payload
            self.p.receipt_ready.set()
        elif frame.kind is Kind.ERROR:
            f = Failure.parse(frame.payload)
            raise AttemptFailed(f"receiver: {f.code}: {f.message}", retriable=f.retriable)
        else:
            raise ProtocolError(f"unexpected {frame.kind.name} from a receiver")

    def _verified(self, raw: bytes) -> Receipt:
        receipt = Receipt.from_json(raw)
        if receipt.transfer_id != self.transfer.id:
            raise AttemptFailed("receipt names another transfer", retriable=False)
        if self.conn.peer_certificate is not None:
            try:
                receipt.verify(self.conn.peer_certificate)
            except ReceiptError as e:
                raise AttemptFailed(str(e), retriable=False) from e
        if len(receipt.instances) != self.transfer.total:
            raise AttemptFailed(
                f"receipt lists {len(receipt.instances)} of {self.transfer.total} instances",
                retriable=False,
            )
        return receipt
