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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dicomrelay import _native
from dicomrelay.config import DigestName
from dicomrelay.rewrite import Edit, copy_range, rewrite

SPOOLED = "spool:"
SPOOL_NAME = "spool"


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
    """One transfer's spool file, written front to back."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / SPOOL_NAME
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.end = 0
        self.entries: list[tuple[int, int]] = []  # (offset, length) of each instance

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
        return len(self.entries) - 1

    def finish(self) -> None:
        """Make the spool durable: its data, then its name in its folder."""
        try:
            os.fdatasync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = -1
        _sync_folder(self.path.parent)

    def discard(self) -> None:
        """Give up on the spool (the transfer was not recorded)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        remove(self.path.parent)

    def scan(self, *, digest: DigestName, chunk_size: int) -> list[_native.InstanceInfo]:
        """Each spooled instance read back by the scanner (on every core): its
        header, whole digest and chunk digests, as the transfer sends them."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with mapped(Region(fd, 0, self.end)) as view:
                parts = [view[o : o + n] for o, n in self.entries]
                try:
                    results = _native.scan_many(
                        parts,
                        digest=digest,
                        chunk_size=chunk_size,
                    )
                finally:
                    for p in parts:
                        p.release()
        finally:
            os.close(fd)
        infos = []
        for (offset, _), result in zip(self.entries, results, strict=True):
            if not isinstance(result, _native.InstanceInfo):
                # The rewriter wrote what the scanner refuses: never sent.
                raise type(result)(f"{self.path} at {offset}: {result}")
            infos.append(result)
        return infos


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(folder: Path) -> None:
    """A transfer's spool folder, gone (nothing if it is not there)."""
    shutil.rmtree(folder, ignore_errors=True)


def spool_folders(paths: Sequence[str]) -> set[Path]:
    """The spool folders that outgoing instance ``paths`` name."""
    return {Path(parse_locator(p)[0]).parent for p in paths if p.startswith(SPOOLED)}
