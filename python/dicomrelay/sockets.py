"""Plain non-blocking TCP sockets for peer connections.

A ``Connection`` reads and writes its socket itself, in native code
(``Channel.read_from`` / ``write_to``), so no event-loop transport may own the
socket. Connecting and accepting wait with anyio's readiness functions, so
deadlines and cancel scopes apply as everywhere else.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
from anyio.abc import TaskGroup

from dicomrelay.errors import ConfigurationError

log = logging.getLogger("dicomrelay.sockets")

BACKLOG = 65535  # the kernel caps it at net.core.somaxconn

# Accept failures that pass when connections close; anything else is a closed listener.
_TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

Handler = Callable[[socket.socket], Coroutine[Any, Any, None]]


def prepare(sock: socket.socket) -> socket.socket:
    """Non-blocking, with Nagle off: Nagle and delayed ACKs cost tens of
    milliseconds a message."""
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def connect(host: str, port: int) -> socket.socket:
    """A connected socket to the first address of ``host`` that accepts."""
    addresses = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for family, kind, proto, _name, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            prepare(sock)
            try:
                sock.connect(address)
            except BlockingIOError:
                await anyio.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, f"connect to {host}:{port}: {os.strerror(code)}") from None
            return sock
        except OSError as e:
            sock.close()
            errors.append(e)
        except BaseException:
            sock.close()
            raise
    if len(errors) == 1:
        raise errors[0]
    raise OSError(f"cannot connect to {host}:{port}: {'; '.join(map(str, errors))}")


def cannot_listen(host: str, port: int, error: OSError) -> ConfigurationError:
    """A listening address that cannot be had, as one line naming it."""
    reason = (error.strerror or str(error)).lower()
    hint = " (another process is listening there?)" if error.errno == errno.EADDRINUSE else ""
    return ConfigurationError(f"cannot listen on {host}:{port}: {reason}{hint}")


async def tcp_listener(host: str, port: int) -> anyio.abc.Listener[anyio.abc.SocketStream]:
    """anyio's TCP listener, with an address that cannot be had as one line naming it."""
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"cannot listen on {host}:{port}: ports are 0 to 65535")
    try:
        return await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as e:
        raise cannot_listen(host, port, e) from e


class Listener:
    """Listening sockets on every address of a host, all on one port."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.socks = socks

    @classmethod
    async def bind(cls, host: str, port: int) -> Listener:
        try:
            found = await anyio.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
            )
        except OSError as e:
            raise cannot_listen(host, port, e) from e
        socks: list[socket.socket] = []
        try:
            for family, kind, proto, _name, address in sorted(set(found)):
                sock = socket.socket(family, kind, proto)
                socks.append(sock)
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and len(socks) > 1:
                    # Any free port: the one the first address was given.
                    address = (address[0], socks[0].getsockname()[1], *address[2:])
                sock.bind(address)
                sock.listen(BACKLOG)
        except BaseException as e:
            for sock in socks:
                sock.close()
            if isinstance(e, OSError):
                raise cannot_listen(host, port, e) from e
            raise
        return cls(socks)

    @property
    def port(self) -> int:
        return int(self.socks[0].getsockname()[1])

    async def serve(self, handler: Handler) -> None:
        """Accept until cancelled, each connection (non-blocking, TCP_NODELAY) in
        a task of its own; then close the listening sockets, so a node restarted
        in the same process can listen on the same port."""
        try:
            async with anyio.create_task_group() as tg:
                for sock in self.socks:
                    tg.start_soon(self._accept, sock, handler, tg)
        finally:
            for sock in self.socks:
                sock.close()

    @staticmethod
    async def _accept(listening: socket.socket, handler: Handler, tg: TaskGroup) -> None:
        while True:
            await anyio.wait_readable(listening)
            while True:
                try:
                    sock, _address = listening.accept()
                except BlockingIOError:
                    break
                except ConnectionAbortedError:
                    continue  # the client gave up while queued
                except OSError as e:
                    if e.errno not in _TRANSIENT:
                        raise
                    log.warning("cannot accept a connection: %s", e)
                    await anyio.sleep(0.1)
                    break
                try:
                    prepare(sock)
                except OSError:
                    sock.close()  # reset before we got to it
                    continue
                tg.start_soon(handler, sock)
