"""A local wake-up call: ``dicomrelay send`` and ``retry`` tell the node serving
the same data directory that a transfer was queued, so that it claims the
transfer at once rather than at its next look at the ledger.

A Unix datagram socket, ``node.sock`` in the data directory: only those who
can write there can reach it; a datagram carries nothing to trust (it only
makes the node look at its ledger sooner); and sending fails at once when no
node is serving (no socket, or a stale one that nobody reads).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

import anyio

log = logging.getLogger("dicomrelay.wakeup")

SOCKET_NAME = "node.sock"


def poke(data_dir: Path) -> bool:
    """Wake the node serving ``data_dir``; False if none is."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        try:
            s.sendto(b"queued", os.fspath(data_dir / SOCKET_NAME))
        except BlockingIOError:
            return True  # its queue is full of wake-ups it has yet to read
        except OSError:
            return False
    return True


class WakeSocket:
    """The serving node's end: bound in ``data_dir`` while the node runs."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / SOCKET_NAME
        self._sock: socket.socket | None = None
        self._inode = 0  # of the socket file this node bound

    def open(self) -> bool:
        """Bind (replacing a stale socket a node that died left behind); False,
        logged, when another node already serves this directory or the path
        is too long for a socket: the node then finds queued work by polling."""
        if self.path.exists() or self.path.is_symlink():
            if poke(self.path.parent):
                log.warning("another node serves %s: wake-ups go to it", self.path.parent)
                return False
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(os.fspath(self.path))
        except OSError as e:
            sock.close()
            log.warning("no wake-up socket at %s: %s", self.path, e)
            return False
        sock.setblocking(False)
        self._sock = sock
        self._inode = self.path.stat().st_ino
        return True

    async def wait(self) -> None:
        """Until at least one wake-up came; reads every one waiting."""
        assert self._sock is not None
        await anyio.wait_readable(self._sock)
        with contextlib.suppress(BlockingIOError):
            while self._sock.recv(64):
                pass

    def close(self) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self._inode:  # not a newer node's
                self.path.unlink()
        anyio.notify_closing(self._sock)
        self._sock.close()
        self._sock = None
