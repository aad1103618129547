"""One peer connection: a non-blocking socket and the native Channel (TLS +
frame codec).

The async layer here only waits: the Channel reads the socket, decrypts and
checks frames, and writes queued records to it, in native code with the GIL
released. Sends are serialised by a lock so frames never interleave.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import anyio

from dicomrelay import pki, sockets
from dicomrelay._native import Channel, Payload, TlsConfig
from dicomrelay.errors import ProtocolError, TlsError
from dicomrelay.protocol import Kind

# (kind, flags, stream, offset, payload, digest_ok, digest), as the Channel returns them.
RawFrame = tuple[int, int, int, int, Payload, bool | None, bytes | None]


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


class Connection:
    def __init__(self, sock: socket.socket, channel: Channel) -> None:
        self.sock = sock
        self.channel = channel
        self._send_lock = anyio.Lock()
        self._pending: list[Frame] = []
        self.peer_org: str | None = None
        self.peer_certificate: bytes | None = None

    @classmethod
    async def connect(
        cls, host: str, port: int, tls: TlsConfig | None, server_name: str | None = None
    ) -> Connection:
        """Connect to a peer and complete the TLS handshake."""
        return await cls.open(await sockets.connect(host, port), tls, server_name)

    @classmethod
    async def open(
        cls, sock: socket.socket, tls: TlsConfig | None, server_name: str | None = None
    ) -> Connection:
        """Take over a connected socket and complete the TLS handshake; the
        socket is closed if that fails."""
        try:
            conn = cls(sockets.prepare(sock), Channel(tls, server_name))
            if tls is not None:
                await conn._handshake()
        except BaseException:
            sock.close()
            raise
        return conn

    async def _handshake(self) -> None:
        await self.flush()
        while self.channel.handshaking:
            await anyio.wait_readable(self.sock)
            try:
                raw, closed = self.channel.read_from(self.sock.fileno())
            except TlsError:
                # Tell the peer why (an unknown CA, a wrong name) before hanging up,
                # so its operator sees a certificate problem, not a network drop.
                with anyio.move_on_after(1), contextlib.suppress(OSError):
                    await self.flush()
                raise
            except OSError as e:
                raise ConnectionResetError(f"connection lost: {e}") from e
            self._pending.extend(self._frames(raw))
            if closed:
                raise ConnectionResetError("peer closed the connection")
            await self.flush()
        cert = self.channel.peer_certificate
        if cert is None:
            raise TlsError("peer presented no certificate")
        self.peer_certificate = cert
        self.peer_org = pki.org_code_of(cert)

    def _frames(self, raw: list[RawFrame]) -> list[Frame]:
        out = []
        for kind, flags, stream, offset, payload, ok, digest in raw:
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
                raw, closed = self.channel.read_from(self.sock.fileno())
            except TlsError:
                raise
            except OSError:
                return  # reset, or closed here: the end of the frames as much as a close
            frames = self._frames(raw)
            if self.channel.wants_write:
                await self.flush()  # an alert or a TLS reply the records asked for
            if frames:
                yield frames
            if closed:
                return
            if not frames:
                try:
                    await anyio.wait_readable(self.sock)
                except anyio.ClosedResourceError:
                    return

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
            await self._write()

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
        base: int = 0,
    ) -> None:
        """Send ``length`` bytes of an open file, at ``base + offset``, as one
        frame's payload (``offset`` the frame's, within an instance that starts
        at ``base`` in the file); the bytes never become a Python object."""
        async with self._send_lock:
            self.channel.send_from_file(
                kind, fd, offset, length, stream=stream, flags=flags, digest=digest, base=base
            )
            await self._write()

    async def send_many_from_files(
        self,
        kind: Kind,
        chunks: Sequence[tuple[int, int, int, int, int, bytes | None]],
        *,
        flags: int = 0,
    ) -> None:
        """One frame per ``(fd, base, offset, length, stream, digest)`` (as
        ``send_from_file`` takes them), read and queued in one native call and
        written together: small instances cost a tuple each, not a call."""
        async with self._send_lock:
            self.channel.send_many_from_files(kind, chunks, flags=flags)
            await self._write()

    async def flush(self) -> None:
        async with self._send_lock:
            await self._write()

    async def _write(self) -> None:
        """Write everything queued, waiting while the socket is full (TCP's flow
        control is the backpressure). Called under the send lock."""
        try:
            while self.channel.write_to(self.sock.fileno()):
                await anyio.wait_writable(self.sock)
        except (OSError, anyio.ClosedResourceError) as e:
            raise ConnectionResetError(f"connection lost: {e}") from e

    async def aclose(self) -> None:
        if self.sock.fileno() < 0:
            return
        try:
            with anyio.move_on_after(1, shield=True):
                self.channel.close()
                await self.flush()
        except (ConnectionResetError, TlsError):
            pass
        # Wake any task waiting on the socket before the descriptor can be reused.
        anyio.notify_closing(self.sock)
        self.sock.close()
