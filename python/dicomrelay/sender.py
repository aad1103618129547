"""The sending side of the wire protocol: one attempt of one transfer over one
connection. ``SenderControl`` decides (offers ahead of chunks, a window of
unacknowledged bytes, resends, commit); this module only moves the bytes."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable

import anyio

from dicomrelay.config import Limits
from dicomrelay.connection import Connection
from dicomrelay.errors import ProtocolError, first_failure
from dicomrelay.ledger import OutgoingInstance, OutgoingTransfer
from dicomrelay.protocol import DIGEST_FLAGS, PROTOCOL_VERSION, Failure, Hello, Kind, Welcome
from dicomrelay.receipt import Receipt, ReceiptError
from dicomrelay.sender_control import (
    Acknowledged,
    AttemptFailed,
    SenderControl,
    SendFrame,
    StreamInstance,
)

__all__ = ["Attempt", "AttemptFailed", "SourceOpener", "greet", "open_file"]

# Where an instance's bytes are: a descriptor (the caller closes it) and the
# offset of the instance's first byte in it.
SourceOpener = Callable[[OutgoingInstance], Awaitable[tuple[int, int]]]

# Instances whose rest is at most this (and one chunk) are streamed in batches
# of about BATCH_BYTES: one native call and one write for many small objects.
SMALL_INSTANCE = 256 << 10
BATCH_BYTES = 1 << 20


async def open_file(instance: OutgoingInstance) -> tuple[int, int]:
    """An instance in a file of its own."""
    return os.open(instance.path, os.O_RDONLY), 0


async def greet(conn: Connection, org: str, expected: str, digest: str) -> None:
    """HELLO and WELCOME: the receiver must be the organisation we meant to reach."""
    await conn.send(
        Kind.HELLO, Hello(protocol=PROTOCOL_VERSION, org=org, digests=(digest,)).payload()
    )
    async for frames in conn.frames():
        frame = frames[0]
        if frame.kind is Kind.ERROR:
            f = Failure.parse(frame.payload)
            raise AttemptFailed(
                f"{expected} refused us: {f.message}",
                retriable=f.retriable,
                code=f.code,
                receiver_message=f.message,
            )
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
    """Send ``instances`` (the unacknowledged ones) of ``transfer`` and commit it:
    the async driver of a ``SenderControl``, which decides every step."""

    def __init__(
        self,
        conn: Connection,
        transfer: OutgoingTransfer,
        instances: list[OutgoingInstance],
        limits: Limits,
        *,
        on_acked: Callable[[list[tuple[int, float]]], None],
        on_sent: Callable[[int], None],
        open_source: SourceOpener | None = None,
    ) -> None:
        """``open_source``: where an instance's bytes are, ``(fd, offset)`` (a
        descriptor the attempt closes); by default its file, from its start."""
        self.conn = conn
        self.open_source = open_source or open_file
        self.transfer = transfer
        self.limits = limits
        self.on_acked = on_acked
        self.on_sent = on_sent
        self.control = SenderControl(
            transfer,
            instances,
            offer_batch=limits.offer_batch,
            window_bytes=limits.window_bytes,
            now=time.monotonic(),
        )
        self.flags = DIGEST_FLAGS[transfer.digest]
        self._wake = anyio.Event()

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

    async def _write(self) -> Receipt:
        """Perform the control's effects in order; wait for frames when it has none."""
        while True:
            effects = self.control.effects(time.monotonic())
            if not effects:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            small: list[StreamInstance] = []
            small_bytes = 0
            for effect in effects:
                if isinstance(effect, StreamInstance) and self._small(effect):
                    small.append(effect)
                    small_bytes += effect.instance.size - effect.start
                    if small_bytes >= BATCH_BYTES:
                        await self._stream_small(small)
                        small, small_bytes = [], 0
                    continue
                if small:  # in order: what came before goes first
                    await self._stream_small(small)
                    small, small_bytes = [], 0
                if isinstance(effect, SendFrame):
                    await self.conn.send(effect.kind, effect.payload)
                elif isinstance(effect, StreamInstance):
                    await self._stream(effect)
                elif isinstance(effect, Acknowledged):
                    self.on_acked(list(effect.indexes))
                else:
                    return self._verified(effect.receipt)
            if small:
                await self._stream_small(small)

    async def _read(self) -> None:
        async for frames in self.conn.frames():
            now = time.monotonic()
            for frame in frames:
                self.control.receive(frame.kind, frame.payload, now)
            # Acknowledgements are reported as they come, not once the
            # instance being streamed meanwhile is out.
            acknowledged = self.control.take_acknowledged()
            if acknowledged:
                self.on_acked(acknowledged)
            self._wake.set()
        raise ConnectionResetError("receiver closed the connection")

    async def _watchdog(self) -> None:
        """Fail the attempt when nothing moves for ``stall_timeout`` seconds."""
        while True:
            await anyio.sleep(1)
            if self.control.stalled(time.monotonic(), self.limits.stall_timeout):
                raise AttemptFailed(
                    f"no progress for {self.limits.stall_timeout:.0f}s", retriable=True
                )

    async def _stream(self, effect: StreamInstance) -> None:
        """CHUNK frames straight from the file; the bytes never become Python objects."""
        inst = effect.instance
        chunk = self.transfer.chunk_size
        offset = effect.start
        fd, base = await self.open_source(inst)
        try:
            while offset < inst.size:
                n = min(chunk, inst.size - offset)
                digest = bytes.fromhex(inst.chunk_digests[offset // chunk])
                try:
                    await self.conn.send_from_file(
                        Kind.CHUNK,
                        fd,
                        offset,
                        n,
                        stream=effect.slot,
                        flags=self.flags,
                        digest=digest,
                        base=base,
                    )
                except EOFError:
                    raise _shrank(inst.path) from None
                offset += n
                self.control.streamed(n, time.monotonic())  # a peer that stops reading stalls
        finally:
            os.close(fd)
        self.on_sent(inst.index)

    def _small(self, effect: StreamInstance) -> bool:
        rest = effect.instance.size - effect.start
        return rest <= SMALL_INSTANCE and rest <= self.transfer.chunk_size

    async def _stream_small(self, effects: list[StreamInstance]) -> None:
        """Instances of one chunk each, read, framed and written together."""
        chunk = self.transfer.chunk_size
        opened: list[tuple[int, int, StreamInstance]] = []
        try:
            for e in effects:
                fd, base = await self.open_source(e.instance)
                opened.append((fd, base, e))
            frames = [
                (
                    fd,
                    base,
                    e.start,
                    e.instance.size - e.start,
                    e.slot,
                    bytes.fromhex(e.instance.chunk_digests[e.start // chunk]),
                )
                for fd, base, e in opened
            ]
            try:
                await self.conn.send_many_from_files(Kind.CHUNK, frames, flags=self.flags)
            except EOFError:
                shrunk = next(
                    (
                        e.instance.path
                        for fd, base, e in opened
                        if os.fstat(fd).st_size < base + e.instance.size
                    ),
                    "a source file",
                )
                raise _shrank(shrunk) from None
        finally:
            for fd, _, _ in opened:
                os.close(fd)
        now = time.monotonic()
        for e in effects:
            self.control.streamed(e.instance.size - e.start, now)
            self.on_sent(e.instance.index)

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


def _shrank(path: str) -> AttemptFailed:
    """A source file cut short since it was scanned: sending it again cannot help."""
    return AttemptFailed(f"{path} shrank after it was scanned", retriable=False)
