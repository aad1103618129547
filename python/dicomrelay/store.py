"""Files beside the segment store: the partial files of large instances
still arriving.

A large instance arrives as a partial file in ``incoming/``, made durable at
each checkpoint so that a later attempt resumes there; once whole and
verified it goes into the segment store (``instance_store``) as one record,
and the file is removed. (A segment record is written whole, in one round,
between other instances' records: it cannot be resumed part way, so the
partial stays a file of its own until then.)
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from dicomrelay._native import Hasher
from dicomrelay.errors import StorageError


class PartialFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        # Temporary files of writes a crash interrupted were never acknowledged:
        # nothing refers to them. (Partial files of large instances are kept:
        # the ledger's checkpoints resume them.)
        for leftover in self.incoming.glob("*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    def keys(self) -> list[str]:
        """The keys of the partial files kept."""
        return sorted(p.name.removesuffix(".part") for p in self.incoming.glob("*.part"))

    def partial_path(self, key: str) -> Path:
        return self.incoming / f"{key}.part"

    def append_partial(
        self, key: str, offset: int, data: bytes | memoryview, *, sync: bool
    ) -> None:
        """Write a chunk of a large instance at ``offset``; fsync when ``sync``."""
        path = self.partial_path(key)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                if offset == 0:
                    os.ftruncate(fd, 0)
                view = memoryview(data)
                pos = offset
                while view:
                    n = os.pwrite(fd, view, pos)
                    view, pos = view[n:], pos + n
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise _storage_error(e, key) from e

    def hash_partial(self, key: str, length: int, hasher: Hasher) -> Hasher:
        """Cut a partial file back to ``length`` bytes and feed them to ``hasher``.

        Raises ValueError if the file is shorter than ``length``.
        """
        path = self.partial_path(key)
        with open(path, "r+b") as f:
            if os.fstat(f.fileno()).st_size < length:
                raise ValueError(f"{path} is shorter than its checkpoint")
            f.truncate(length)
            left = length
            while left:
                piece = f.read(min(left, 1 << 20))
                hasher.update(piece)
                left -= len(piece)
        return hasher

    def discard_partial(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.partial_path(key).unlink()


def _storage_error(e: OSError, what: str) -> StorageError:
    reason = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else os.strerror(e.errno or 0)
    err = StorageError(f"cannot store {what}: {reason}")
    err.errno = e.errno
    return err
