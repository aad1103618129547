"""The outbox's spool: instances made for one transfer (de-identified copies),
appended one after another to one file of the transfer's own, as the segment
store keeps many instances to a segment.

A rewritten instance is its new header, written, then its pixel data, copied
from the source by the kernel (``copy_file_range``; a reflink where the
filesystem shares extents), then its trailer: the pixel bytes never pass
through Python or user memory. The whole spool is made durable with one
fdatasync and one sync of its folder before the transfer that names it is
recorded; an instance in it is named ``spool:<offset>:<path>`` and sent from
there. The spool goes when its transfer is done.

Why not the node's segment store: the spool is written by whichever process
queues the transfer (``dicomrelay send`` beside a serving node, which alone
owns the store), its contents are derived copies nobody reads but the
sender (not received instances for retention, compaction or DICOMweb to
index), and it is dropped whole, with one unlink, when the transfer ends.
"""

from __future__ import annotations

import mmap
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dicomrelay import _native
from dicomrelay.config import DigestName
from dicomrelay.errors import DicomParseError
from dicomrelay.folders import sync_folder
from dicomrelay.rewrite import Edit, copy_range, rewrite

SPOOLED = "spool:"
SPOOL_NAME = "spool"
WRITEBACK_BYTES = 64 << 20  # written back beside the work, this much at a time
READ_WHOLE = 64 << 20  # instances up to this size are read back whole; larger ones mapped


def locator(path: Path | str, offset: int) -> str:
    """How an outgoing instance in a spool is named in the ledger."""
    return f"{SPOOLED}{offset}:{os.fspath(path)}"


def parse_locator(name: str) -> tuple[str, int]:
    """``(spool path, offset)`` of a ``spool:`` locator."""
    offset, _, path = name[len(SPOOLED) :].partition(":")
    return path, int(offset)


@dataclass(frozen=True, slots=True)
class Region:
    """An instance's bytes: a descriptor (its owner closes it), the offset of
    the instance's first byte in it, and its length."""

    fd: int
    base: int
    length: int


@contextmanager
def mapped(region: Region) -> Iterator[memoryview]:
    """The region, mapped read-only (no copy); the view must not outlive the block."""
    start = region.base - region.base % mmap.ALLOCATIONGRANULARITY
    size = region.length + region.base - start
    with mmap.mmap(region.fd, size, offset=start, access=mmap.ACCESS_READ) as m:
        whole = memoryview(m)
        try:
            part = whole[region.base - start :]
            try:
                yield part
            finally:
                part.release()
        finally:
            whole.release()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Spool:
    """One transfer's spool file, written front to back. Beside the writing,
    one thread reads each instance back through the scanner (its digests, and
    proof that it reads), and another writes the file back to disk, so the
    work, the hashing and the disk overlap and ``finish`` waits for little."""

    def __init__(self, folder: Path, *, digest: DigestName, chunk_size: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / SPOOL_NAME
        self._digest: DigestName = digest
        self._chunk_size = chunk_size
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._reader = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self.end = 0
        self.entries: list[tuple[int, int]] = []  # (offset, length) of each instance
        self._scans: list[Future[_native.InstanceInfo]] = []
        self._scanner = ThreadPoolExecutor(1, thread_name_prefix="spool-scan")
        self._writeback = ThreadPoolExecutor(1, thread_name_prefix="spool-sync")
        self._syncing: Future[None] | None = None
        self._synced_to = 0

    def add_rewritten(self, source: Region, view: memoryview, edits: Iterable[Edit]) -> int:
        """Append ``edits`` applied to the instance ``view`` (the mapping of
        ``source``): its index in the spool. The pixel data is copied from
        ``source`` by the kernel."""
        out = rewrite(view, edits, digest=None)
        start = self.end
        _write_all(self._fd, out.header)
        if out.pixel_length:
            where = source.base + out.pixel_offset
            copy_range(source.fd, self._fd, where, out.pixel_length, self.path)
        _write_all(self._fd, out.trailer)
        return self._added(start, out.size)

    def add_copy(self, source: Region) -> int:
        """Append the instance as it is (a destination that needs no change)."""
        start = self.end
        copy_range(source.fd, self._fd, source.base, source.length, self.path)
        return self._added(start, source.length)

    def _added(self, start: int, length: int) -> int:
        self.end = start + length
        self.entries.append((start, length))
        self._scans.append(self._scanner.submit(self._scan, start, length))
        if self.end - self._synced_to >= WRITEBACK_BYTES and (
            self._syncing is None or self._syncing.done()
        ):
            self._synced_to = self.end
            self._syncing = self._writeback.submit(os.fdatasync, self._fd)
        return len(self.entries) - 1

    def _scan(self, offset: int, length: int) -> _native.InstanceInfo:
        """The instance at ``offset`` read back (from the page cache, just written)."""
        try:
            if length <= READ_WHOLE:
                data = os.pread(self._reader, length, offset)
                if len(data) != length:
                    raise OSError(f"{self.path} ended before its instance at {offset}")
                return _native.scan(data, digest=self._digest, chunk_size=self._chunk_size)
            with mapped(Region(self._reader, offset, length)) as view:
                return _native.scan(view, digest=self._digest, chunk_size=self._chunk_size)
        except DicomParseError as e:
            # The rewriter wrote what the scanner refuses: never sent.
            raise DicomParseError(f"{self.path} at {offset}: {e}", e.offset, e.tag) from e

    def finish(self) -> list[_native.InstanceInfo]:
        """Make the spool durable (its data, then its name in its folder);
        each instance as the scanner read it back, in order."""
        try:
            if self._syncing is not None:
                self._syncing.result()
            os.fdatasync(self._fd)
            infos = [f.result() for f in self._scans]
        finally:
            self._close()
        sync_folder(self.path.parent)
        return infos

    def _close(self) -> None:
        self._writeback.shutdown(wait=True)
        self._scanner.shutdown(wait=True, cancel_futures=True)
        for fd in (self._fd, self._reader):
            if fd >= 0:
                os.close(fd)
        self._fd = self._reader = -1

    def discard(self) -> None:
        """Give up on the spool (the transfer was not recorded)."""
        self._close()
        remove(self.path.parent)


def remove(folder: Path) -> None:
    """A transfer's spool folder, gone (nothing if it is not there)."""
    shutil.rmtree(folder, ignore_errors=True)


def spool_folders(paths: Sequence[str]) -> set[Path]:
    """The spool folders that outgoing instance ``paths`` name."""
    return {Path(parse_locator(p)[0]).parent for p in paths if p.startswith(SPOOLED)}
