"""One peer connection: a byte stream and the native Channel (TLS + frame codec).

The async layer here only moves bytes; framing, TLS and chunk digests happen in
Rust. Sends are serialised by a lock so frames never interleave.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import anyio
from anyio.abc import ByteStream, SocketAttribute

from dicomrelay import pki
from dicomrelay._native import Channel, Payload, TlsConfig
from dicomrelay.errors import ProtocolError, TlsError
from dicomrelay.protocol import Kind

RECEIVE_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    flags: int
    stream: int
    offset: int
    payload: bytes  # a control frame's JSON; empty for a chunk
    data: Payload | None  # a chunk's data, left in the Rust buffer it was decrypted into
    digest_ok: bool | None
    digest: bytes | None  # the digest a chunk claimed; trust it only when digest_ok


def set_nodelay(stream: ByteStream) -> None:
    """Nagle and delayed ACKs cost tens of milliseconds a message: always off."""
    sock = stream.extra(SocketAttribute.raw_socket, None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Connection:
    def __init__(self, stream: ByteStream, channel: Channel) -> None:
        self.stream = stream
        self.channel = channel
        self._send_lock = anyio.Lock()
        self._pending: list[Frame] = []
        self.peer_org: str | None = None
        self.peer_certificate: bytes | None = None

    @classmethod
    async def open(
        cls, stream: ByteStream, tls: TlsConfig | None, server_name: str | None = None
    ) -> Connection:
        """Wrap a connected stream and complete the TLS handshake."""
        set_nodelay(stream)
        conn = cls(stream, Channel(tls, server_name))
        if tls is not None:
            await conn._handshake()
        return conn

    async def _handshake(self) -> None:
        await self.flush()
        while self.channel.handshaking:
            data = await self._receive_bytes()
            try:
                self._pending.extend(self._frames(data))
            except TlsError:
                # Tell the peer why (an unknown CA, a wrong name) before hanging up,
                # so its operator sees a certificate problem, not a network drop.
                with anyio.move_on_after(1), contextlib.suppress(ConnectionResetError):
                    await self.flush()
                raise
            await self.flush()
        cert = self.channel.peer_certificate
        if cert is None:
            raise TlsError("peer presented no certificate")
        self.peer_certificate = cert
        self.peer_org = pki.org_code_of(cert)

    async def _receive_bytes(self) -> bytes:
        try:
            return await self.stream.receive(RECEIVE_SIZE)
        except anyio.EndOfStream:
            raise ConnectionResetError("peer closed the connection") from None
        except (anyio.BrokenResourceError, OSError) as e:
            raise ConnectionResetError(f"connection lost: {e}") from e

    def _frames(self, data: bytes) -> list[Frame]:
        out = []
        for kind, flags, stream, offset, payload, ok, digest in self.channel.receive(data):
            try:
                k = Kind(kind)
            except ValueError:
                raise ProtocolError(f"unknown frame kind {kind}") from None
            if k is Kind.CHUNK:
                out.append(Frame(k, flags, stream, offset, b"", payload, ok, digest))
            else:
                out.append(Frame(k, flags, stream, offset, bytes(payload), None, ok, digest))
        return out

    async def frames(self) -> AsyncIterator[list[Frame]]:
        """Batches of frames as they arrive, until the peer closes."""
        if self._pending:
            pending, self._pending = self._pending, []
            yield pending
        while True:
            try:
                data = await self.stream.receive(RECEIVE_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            frames = self._frames(data)
            if self.channel.outgoing_len:
                await self.flush()
            if frames:
                yield frames

    async def send(
        self,
        kind: Kind,
        payload: bytes | memoryview,
        *,
        stream: int = 0,
        offset: int = 0,
        flags: int = 0,
        digest: bytes | None = None,
    ) -> None:
        async with self._send_lock:
            self.channel.send(
                kind, payload, stream=stream, offset=offset, flags=flags, digest=digest
            )
            data = self.channel.take_outgoing()
            if len(data):
                await self._write(data)

    async def send_from_file(
        self,
        kind: Kind,
        fd: int,
        offset: int,
        length: int,
        *,
        stream: int = 0,
        flags: int = 0,
        digest: bytes | None = None,
    ) -> None:
        """Send ``length`` bytes of an open file as one frame's payload; the bytes
        never become a Python object."""
        async with self._send_lock:
            self.channel.send_from_file(
                kind, fd, offset, length, stream=stream, flags=flags, digest=digest
            )
            data = self.channel.take_outgoing()
            if len(data):
                await self._write(data)

    async def flush(self) -> None:
        async with self._send_lock:
            data = self.channel.take_outgoing()
            if len(data):
                await self._write(data)

    async def _write(self, data: Payload) -> None:
        try:
            # Transports take any buffer; anyio's annotation says bytes.
            await self.stream.send(cast(bytes, memoryview(data)))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
            raise ConnectionResetError(f"connection lost: {e}") from e

    async def aclose(self) -> None:
        try:
            with anyio.move_on_after(1, shield=True):
                self.channel.close()
                await self.flush()
        except (ConnectionResetError, TlsError):
            pass
        await self.stream.aclose()
