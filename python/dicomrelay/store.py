"""The blob store: instance files on disk, content-addressed by digest.

A blob is written in ``incoming/`` first, made durable, then renamed to
``blobs/<first two hex digits>/<digest>``, and the rename made durable, before
anything is acknowledged: a blob at its final name is whole and verified.
Whole instances are written by the native ``DurableWriter`` (direct I/O, one
filesystem commit per round); this module names the paths and handles large
instances, which arrive as checkpointed partial files. Which blobs make up a
committed study is the ledger's business, not the file system's: that is what
makes a study commit atomic.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dicomrelay._native import Hasher
from dicomrelay.errors import StorageError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class InstanceBytes:
    """A stored instance's bytes (or a range of them), read as they are iterated."""

    length: int
    chunks: Iterator[bytes]


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.incoming = root / "incoming"
        for d in (self.blobs, self.incoming):
            d.mkdir(parents=True, exist_ok=True)
        # Temporary files of writes a crash interrupted were never acknowledged:
        # nothing refers to them. (Partial files of large instances are kept:
        # the ledger's checkpoints resume them.)
        for leftover in self.incoming.glob("*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    def path_of(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a hex digest: {digest!r:.80}")
        return self.blobs / digest[:2] / digest

    def size_of(self, digest: str) -> int | None:
        """The blob's size if it is stored, else None."""
        try:
            return self.path_of(digest).stat().st_size
        except FileNotFoundError:
            return None

    def open_instance(
        self, digest: str, *, start: int = 0, stop: int | None = None, chunk: int = 1 << 20
    ) -> InstanceBytes:
        """The one way to read what is stored: bytes ``start`` to ``stop`` (the
        end) of the instance stored under ``digest``, read a ``chunk`` at a
        time as they are iterated (the file closes when they are done or the
        iterator is closed). Raises StorageError (errno ENOENT if it is not
        stored) now, not while iterating."""
        try:
            f = open(self.path_of(digest), "rb")  # noqa: SIM115 (closed by the iterator)
        except OSError as e:
            raise _storage_error(e, digest) from e
        size = os.fstat(f.fileno()).st_size
        end = size if stop is None else min(stop, size)
        begin = min(max(start, 0), end)

        def chunks() -> Iterator[bytes]:
            with f:
                f.seek(begin)
                left = end - begin
                while left > 0:
                    piece = f.read(min(chunk, left))
                    if not piece:
                        raise StorageError(f"instance {digest} is shorter than it was")
                    left -= len(piece)
                    yield piece

        return InstanceBytes(end - begin, chunks())

    def adopt_many(self, files: list[tuple[Path, str]]) -> list[Path]:
        """Keep each (durable, closed) file as the blob of its digest, its
        name made durable with one flush of each folder touched; the paths.
        The files are moved, not copied: they must be on the store's file
        system (``incoming`` is)."""
        touched: set[Path] = {self.incoming}
        finals = []
        try:
            for temp, digest in files:
                final = self.path_of(digest)
                if final.exists():
                    temp.unlink()
                else:
                    touched.add(self._publish(temp, final))
                finals.append(final)
        except OSError as e:
            raise _storage_error(e, "instances") from e
        self.sync(touched)
        return finals

    def _publish(self, temp: Path, final: Path) -> Path:
        try:
            os.rename(temp, final)
        except FileNotFoundError:
            final.parent.mkdir(exist_ok=True)
            fsync_dir(self.blobs)
            os.rename(temp, final)
        return final.parent

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

    def publish_partial(self, key: str, digest: str) -> Path:
        """Move a complete, verified partial file to its blob name, durably (the
        file and both directories fsynced); returns the blob's path."""
        temp = self.partial_path(key)
        final = self.path_of(digest)
        try:
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if final.exists():
                temp.unlink()
            else:
                self._publish(temp, final)
            self.sync([final.parent, self.incoming])
            return final
        except OSError as e:
            raise _storage_error(e, digest) from e

    def adopt(self, path: Path, digest_of: Callable[[Path], str]) -> Path:
        """Keep the file at ``path`` as a blob, durably, named by ``digest_of``
        its bytes as they are now: a hard link (a copy on another file system),
        so that a file later written to ``path`` (by rename, never in place)
        leaves the blob as it was. Returns the blob's path."""
        temp = self.incoming / f"adopted.{uuid.uuid4().hex}.tmp"
        try:
            try:
                os.link(path, temp)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                shutil.copyfile(path, temp)
                fd = os.open(temp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            final = self.path_of(digest_of(temp))
            self.sync([self._publish(temp, final), self.incoming])
            return final
        except OSError as e:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise _storage_error(e, os.fspath(path)) from e

    def discard_partial(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.partial_path(key).unlink()

    def sync(self, directories: Iterable[Path]) -> None:
        """Make renames durable: fsync each touched directory once."""
        try:
            for d in set(directories):
                fsync_dir(d)
        except OSError as e:
            raise _storage_error(e, "directory") from e


def _storage_error(e: OSError, what: str) -> StorageError:
    reason = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else os.strerror(e.errno or 0)
    err = StorageError(f"cannot store {what}: {reason}")
    err.errno = e.errno
    return err
