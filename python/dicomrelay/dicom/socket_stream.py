"""A non-blocking socket as an anyio byte stream, read and written by the
event loop's readiness functions only: no transport owns the socket, so the
storage SCP can hand its reads to a native pump (and take them back). And TLS
over it that hands over every record already received at once."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSStream

READ_SIZE = 256 << 10  # one recv: few syscalls, and still in cache when used


class SocketByteStream(ByteStream):
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._closed = False

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                data = self.sock.recv(max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self.sock)
                continue
            except OSError as e:
                raise anyio.BrokenResourceError from e
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                await anyio.wait_writable(self.sock)
            except OSError as e:
                raise anyio.BrokenResourceError from e

    async def send_eof(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        anyio.notify_closing(self.sock)
        self.sock.close()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {
            SocketAttribute.raw_socket: lambda: self.sock,
            SocketAttribute.remote_address: self.sock.getpeername,
            SocketAttribute.local_address: self.sock.getsockname,
        }


class DrainingTLSStream(TLSStream):
    """anyio's TLS stream, but a receive returns the plaintext of every record
    already received (up to ``max_bytes``), not one 16 KB record: the SCP's
    data plane is then fed a few times per dataset, not once per record."""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await super().receive(max_bytes)
        chunks, size = [data], len(data)
        while size < max_bytes:
            try:
                more = self._ssl_object.read(max_bytes - size)
            except ssl.SSLError:
                break  # nothing whole yet (or an error the next receive raises)
            if not more:
                break
            chunks.append(more)
            size += len(more)
        return data if len(chunks) == 1 else b"".join(chunks)
