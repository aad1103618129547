"""``InstanceStore``: a node's instances in the append-only segment store,
indexed by digest in the ledger.

Many instances go into each large preallocated segment file (the native
``SegmentStore``: direct I/O, no inode, rename or directory sync per
instance). The ledger maps each digest to its location (segment, offset,
length) and records where the store's last durable round ended, in the same
transaction as that round's rows, so the two never disagree:

- a **round** appends its records, makes them durable (one fdatasync per
  segment touched), then records their locations, the instance rows and the
  new durable end in one ledger transaction; only then is anything
  acknowledged. A failed write, sync or transaction fails the whole round,
  and the store is opened again at the recorded end before the next one (a
  record the ledger never named is cut, never served);
- **opening** starts the store at the ledger's recorded end: a torn or
  unrecorded tail is cut;
- a digest already located is not written again (content addressing);
- **compaction** copies a sparse sealed segment's live records into the
  active one, commits, switches each location in the ledger only if it is
  still where it was read (one transaction, with the new durable end), and
  only then removes the old segment.

Rounds are pipelined in two stages: while one round's rows go into the
ledger, the next appends and syncs its records (the disk and the ledger work
side by side). The ledger takes rounds in the order they were appended, so
the recorded end only grows; a round that fails fails every round appended
after it too (the store is cut back to the recorded end before the next).
Compaction batches and drops run alone: they wait for the rounds before them
to be recorded, and no round starts meanwhile, so the index's view of what is
live never changes under one of them. Reads run beside them all: one that
meets a segment compaction just removed looks its record up again.
"""

from __future__ import annotations

import errno
import mmap
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import anyio
import anyio.to_thread

from dicomrelay._native import Payload, SegmentFaults, SegmentStore
from dicomrelay.config import DigestName
from dicomrelay.errors import (
    CorruptRecord,
    DicomParseError,
    InstanceNotStored,
    RewriteError,
    StorageError,
)
from dicomrelay.folders import sync_folder
from dicomrelay.ledger import IncomingInstance, Ledger, Location
from dicomrelay.ledger.reconciliations import ReconciledInstance, ReconciledRow
from dicomrelay.rewrite import Edit, Rewritten, rewrite

T = TypeVar("T")
STORE_NAME_FILE = "store-name"
# An outgoing instance's path when its bytes are in this node's store (what
# the DICOM SCP received and a route sends on), followed by its digest.
STORED = "store:"
CHUNK = 1 << 20  # what iterating an InstanceReader yields at a time


@dataclass(frozen=True, slots=True)
class Record:
    """One instance for a round: its bytes (a buffer, never copied; a file
    read a buffer at a time: a large instance; or parts written one after
    another: a rewritten instance's new header, its source's pixel data and a
    trailer), its digest and the algorithm that digest was made with."""

    data: Payload | bytes | memoryview | Path | tuple[Payload | bytes | memoryview, ...]
    digest: str
    algorithm: DigestName
    # Stored rewritten instead (an instance reconciled as it arrives): the
    # record is then the rewrite's, under its own digest, and the round
    # records which received digest it stands for.
    rewrite: OnTheWay | None = None


@dataclass(frozen=True, slots=True)
class OnTheWay:
    """The header edits to store a received instance with, and whose it is."""

    edits: tuple[Edit, ...]
    sender: str
    transfer_id: str
    study_uid: str
    sop_uid: str
    # The rewrite made already (as the instance arrived, off the round's
    # path): the round only appends it. None: the round rewrites it.
    done: Rewritten | None = None


def store_name(root: Path) -> str:
    """The store's name in the ledger, made once when the store is first made
    (several nodes may share one ledger, each with a store of its own)."""
    path = root / STORE_NAME_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    root.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    temp = root / f"{STORE_NAME_FILE}.{name}.tmp"
    with open(temp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    sync_folder(root)
    return name


class InstanceStore:
    def __init__(
        self,
        root: Path,
        ledger: Ledger,
        name: str,
        segments: SegmentStore,
        *,
        segment_size: int,
        faults: SegmentFaults | None,
    ) -> None:
        """Use ``InstanceStore.open``."""
        self.root = root
        self.name = name
        self.ledger = ledger
        self._segments = segments
        self._segment_size = segment_size
        self._faults = faults
        self._recorded = segments.durable_end  # the end the ledger holds
        self._broken = False  # a round failed: open again before the next
        self._lock = anyio.Lock()  # appending (and drops, compaction): one at a time
        # Set once the last appended round is recorded (or has failed).
        self._recording = anyio.Event()
        self._recording.set()
        self._generation = 0  # grows with every failed round
        # Digests appended by rounds not yet recorded: not appended again.
        self._unrecorded: dict[str, object] = {}

    @classmethod
    async def open(
        cls,
        root: Path,
        ledger: Ledger,
        *,
        segment_size: int = 1 << 30,
        faults: SegmentFaults | None = None,
    ) -> InstanceStore:
        """Open (or make) the store in ``root`` at the end its ledger recorded.
        ``faults``: failures to inject into its writes and syncs (tests)."""
        name = await anyio.to_thread.run_sync(store_name, root)
        end = await ledger.segment_end(name)
        segments = await anyio.to_thread.run_sync(
            lambda: SegmentStore(root, durable_end=end, segment_size=segment_size, faults=faults)
        )
        store = cls(root, ledger, name, segments, segment_size=segment_size, faults=faults)
        if end is None:
            # Recorded before any record is appended: a store that has a
            # record always has an end in the ledger to open at.
            await ledger.record_round(name, segments.durable_end, [], [])
        return store

    @property
    def segments(self) -> SegmentStore:
        return self._segments

    def close(self) -> None:
        self._segments.close()

    async def _settle(self) -> None:
        """Wait (holding the lock) until every appended round is recorded or
        has failed; then, if one failed, open the store again."""
        await self._recording.wait()
        if self._broken:
            await self._reopen()

    async def _reopen(self) -> None:
        """After a failed round: the store opened again at the recorded end,
        cutting whatever the round appended."""
        old = self._segments
        end = self._recorded
        size, faults = self._segment_size, self._faults

        def reopen() -> SegmentStore:
            old.close()
            return SegmentStore(self.root, durable_end=end, segment_size=size, faults=faults)

        self._segments = await anyio.to_thread.run_sync(reopen)
        self._broken = False

    # Writing.
    async def write_round(
        self,
        records: Sequence[Record],
        received: Sequence[tuple[str, str, IncomingInstance]],
        *,
        appended: Callable[[], None] | None = None,
    ) -> None:
        """One durable round: ``records`` appended (those whose digest is not
        stored yet, each once) and synced, then their locations, the rows of
        ``received`` ``(sender, transfer_id, instance)`` and the new durable
        end in one ledger transaction. ``appended`` is called once the records
        are synced (or the append failed): the next round may append while
        this one is recorded. Raises StorageError (or the ledger's error):
        then nothing of the round counts, nor of any round appended after it,
        and the next round starts from the store opened again at the recorded
        end."""
        try:
            async with self._lock:
                if self._broken:
                    await self._settle()
                generation, token = self._generation, object()
                end, located, reconciled = await self._append(records, token)
                previous, mine = self._recording, anyio.Event()
                self._recording = mine
        finally:
            if appended is not None:
                appended()
        try:
            await previous.wait()  # the rounds appended before are recorded first
            if self._generation != generation:
                raise StorageError("an earlier round failed: this one's records were cut")
            await self.ledger.record_round(self.name, end, located, received, reconciled)
            self._recorded = end
        except BaseException:
            self._fail()
            raise
        finally:
            for digest, _ in located:
                if self._unrecorded.get(digest) is token:
                    del self._unrecorded[digest]
            mine.set()

    def _fail(self) -> None:
        """A round failed: it, and every round appended after it, count for
        nothing; the store opens again at the recorded end before the next."""
        self._generation += 1
        self._broken = True

    async def _append(
        self, records: Sequence[Record], token: object
    ) -> tuple[tuple[int, int], list[tuple[str, Location]], list[ReconciledRow]]:
        """Append and sync a round's records (under the lock); their
        locations and the end the ledger is to record. A failure here fails
        this round alone: the rounds before it are synced whole."""
        fresh: dict[str, Record] = {}
        rewriting = [r for r in records if r.rewrite is not None]
        for r in records:
            if r.rewrite is None and r.digest not in self._unrecorded:
                fresh.setdefault(r.digest, r)
        if fresh:
            stored = await self.ledger.locations(self.name, list(fresh))
            for digest in stored:
                del fresh[digest]
        located: list[tuple[str, Location]] = []
        reconciled: list[ReconciledRow] = []
        segments = self._segments

        def append_and_commit() -> tuple[int, int]:
            for r in rewriting:
                _append_rewritten(segments, r, located, reconciled)
            by_algorithm: dict[DigestName, list[Record]] = {}
            for r in fresh.values():
                by_algorithm.setdefault(r.algorithm, []).append(r)
            for algorithm, group in by_algorithm.items():
                buffers: list[tuple[Payload | bytes | memoryview, str]] = []
                files: list[tuple[Path, str]] = []
                parted: list[tuple[tuple[Payload | bytes | memoryview, ...], str]] = []
                for r in group:
                    if isinstance(r.data, Path):
                        files.append((r.data, r.digest))
                    elif isinstance(r.data, tuple):
                        parted.append((r.data, r.digest))
                    else:
                        buffers.append((r.data, r.digest))
                places = segments.append_many(buffers, algorithm=algorithm)
                located.extend(zip((d for _, d in buffers), places, strict=True))
                for path, digest in files:
                    where = segments.append_file(path, digest, algorithm=algorithm)
                    located.append((digest, where))
                for parts, digest in parted:
                    where = segments.append_parts(parts, digest, algorithm=algorithm)
                    located.append((digest, where))
            return segments.commit()

        try:
            end = await anyio.to_thread.run_sync(append_and_commit)
        except BaseException:
            self._broken = True
            raise
        for digest, _ in located:
            self._unrecorded[digest] = token
        return end, located, reconciled

    # Reading.
    async def locate(self, digest: str) -> Location | None:
        return (await self.ledger.locations(self.name, [digest])).get(digest)

    async def locations(self, digests: Sequence[str]) -> dict[str, Location]:
        return await self.ledger.locations(self.name, digests)

    def opener(self, digest: str, where: Location) -> Callable[[], InstanceReader]:
        """Opens the record of ``digest`` at ``where`` (from ``locations``) when
        called, on the caller's thread: for code that reads as it sends."""

        def open_() -> InstanceReader:
            fd, offset, length = self._segments.open_record(where, digest)
            return InstanceReader(fd, offset, length, digest)

        return open_

    async def size_of(self, digests: Sequence[str]) -> dict[str, int]:
        """The sizes of those of ``digests`` the store holds."""
        located = await self.ledger.locations(self.name, digests)
        return {d: where[2] for d, where in located.items()}

    async def open_instance(self, digest: str) -> InstanceReader:
        """The instance stored under ``digest``, to read as a stream of chunks
        (iterate it) or as a file (``read``, ``seek``); close it (or use it as a
        context manager). Its record's header is checked against the digest and
        length; its bytes were verified when stored (``read_instance`` verifies
        them again). InstanceNotStored if the store does not hold it."""
        fd, offset, length = await self.open_record(digest)
        return InstanceReader(fd, offset, length, digest)

    async def open_record(self, digest: str) -> tuple[int, int, int]:
        """The record of ``digest`` to send straight from its segment: ``(fd,
        offset, length)``, a descriptor of its own that the caller closes."""
        return await self._at_location(digest, SegmentStore.open_record)

    async def read_instance(self, digest: str) -> Payload:
        """The whole instance, hashed and checked against ``digest``
        (CorruptRecord if it does not match)."""
        return await self._at_location(
            digest, lambda segments, where, d: segments.read(where, d, verify=True)
        )

    async def _at_location(
        self, digest: str, action: Callable[[SegmentStore, Location, str], T]
    ) -> T:
        """``action`` on the record of ``digest``, looked up again if compaction
        moved it meanwhile (its old segment gone) or the store was opened again."""
        for attempt in range(3):
            where = await self.locate(digest)
            if where is None:
                raise InstanceNotStored(f"no instance {digest} in this node's store")
            segments = self._segments
            try:
                return await anyio.to_thread.run_sync(action, segments, where, digest)
            except CorruptRecord:
                raise
            except (StorageError, ValueError):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # Retention and compaction.
    async def drop_studies(self, studies: Sequence[str]) -> int:
        """Drop committed studies from the store's index (their records become
        garbage, for compaction); returns how many locations went."""
        if not studies:
            return 0
        async with self._lock:
            await self._settle()
            return await self.ledger.drop_studies(studies)

    async def switch_reconciled(
        self,
        sender: str,
        transfer_id: str,
        study_uid: str,
        instances: Sequence[ReconciledInstance],
        *,
        rule: str | None,
        foreign: tuple[str | None, str | None],
        local: tuple[str | None, str | None],
        reason: str,
        deliver: bool = False,
    ) -> int:
        """The store's rows of a reconciled transfer switched to the rewritten
        records and the received ones dropped (``Ledger.finish_reconciliation``,
        with the (patient ID, issuer) it was ``foreign``, now ``local``; with
        ``deliver``, its delivery requested), run as drops are: one at a time.
        How many rows switched."""
        async with self._lock:
            await self._settle()
            return await self.ledger.finish_reconciliation(
                sender,
                transfer_id,
                study_uid,
                instances,
                rule=rule,
                foreign_patient_id=foreign[0],
                foreign_issuer=foreign[1],
                local_patient_id=local[0],
                local_issuer=local[1],
                reason=reason,
                deliver=deliver,
            )

    async def drop_routed(self, before: float) -> int:
        """Drop what the DICOM SCP stored and a transfer done before ``before``
        sent on (unless something else names it); how many records went."""
        async with self._lock:
            await self._settle()
            return await self.ledger.drop_routed(self.name, before)

    async def sparse_segments(self, below: float) -> list[int]:
        """Sealed segments whose live data is under ``below`` of their size
        (those with none at all included), fullest last."""
        usage = {s: live for s, _n, live in await self.ledger.segment_usage(self.name)}
        active = self._segments.active_segment
        found: list[tuple[float, int]] = []
        for segment in await anyio.to_thread.run_sync(self._segments.segments):
            if segment >= active:
                continue
            try:
                size = (self.root / f"{segment:016x}.seg").stat().st_size
            except FileNotFoundError:
                continue
            share = usage.get(segment, 0) / max(size, 1)
            if share < below:
                found.append((share, segment))
        return [s for _share, s in sorted(found)]

    async def compact(self, segment: int, *, batch_bytes: int = 32 << 20) -> int:
        """Move the live records of sealed ``segment`` into the active one, a
        batch at a time (rounds go on between batches), then remove it.
        Returns how many records moved."""
        moved = 0
        while True:
            async with self._lock:
                await self._settle()
                live = await self.ledger.records_in_segment(self.name, segment)
                if not live:
                    # Nothing names it any more: remove it (durably).
                    try:
                        await anyio.to_thread.run_sync(self._segments.remove_segment, segment)
                    except StorageError as e:
                        if e.errno != errno.ENOENT:
                            raise
                    return moved
                batch: list[tuple[str, Location]] = []
                size = 0
                for digest, where in live:
                    batch.append((digest, where))
                    size += where[2]
                    if size >= batch_bytes:
                        break
                self._broken = True
                new, end = await anyio.to_thread.run_sync(
                    _copy, self._segments, segment, [(w, d) for d, w in batch]
                )
                moves = [(d, old, n) for (d, old), n in zip(batch, new, strict=True)]
                moved += await self.ledger.move_records(self.name, moves, end)
                self._recorded = end
                self._broken = False


def _append_rewritten(
    segments: SegmentStore,
    record: Record,
    located: list[tuple[str, Location]],
    reconciled: list[ReconciledRow],
) -> None:
    """Append ``record`` rewritten by its edits (on the round's thread): the new
    header, a view of the received pixel bytes (a large instance's file
    mapped, not read), the trailer. An instance the edits cannot be applied to
    is stored as received: its reconciliation then holds it, with the reason."""
    assert record.rewrite is not None
    way = record.rewrite
    mapped: mmap.mmap | None = None
    try:
        data: Payload | bytes | memoryview | mmap.mmap
        if isinstance(record.data, Path):
            with open(record.data, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            data = mapped
        elif isinstance(record.data, tuple):
            raise TypeError("a record of parts is rewritten already")
        else:
            data = record.data
        try:
            out = way.done or rewrite(data, way.edits, digest=record.algorithm)
        except (RewriteError, DicomParseError):
            where = (
                segments.append_file(record.data, record.digest, algorithm=record.algorithm)
                if isinstance(record.data, Path)
                else segments.append(data, record.digest, algorithm=record.algorithm)
            )
            located.append((record.digest, where))
            return
        assert out.digest is not None
        view = memoryview(data)
        try:
            pixels = view[out.pixel_offset : out.pixel_offset + out.pixel_length]
            parts = (out.header, pixels, out.trailer)
            where = segments.append_parts(parts, out.digest, algorithm=record.algorithm)
            pixels.release()
        finally:
            view.release()
        located.append((out.digest, where))
        reconciled.append(
            (
                way.sender,
                way.transfer_id,
                record.digest,
                out.digest,
                way.study_uid,
                way.sop_uid,
                out.size,
            )
        )
    finally:
        if mapped is not None:
            mapped.close()


def _copy(
    segments: SegmentStore, segment: int, live: list[tuple[Location, str]]
) -> tuple[list[Location], tuple[int, int]]:
    """Compaction's copy of ``live`` records of ``segment``, made durable."""
    new = segments.compact(segment, live)
    return new, segments.commit()


class InstanceReader:
    """One stored instance, readable as a file or iterated as chunks of
    ``CHUNK`` bytes. Holds its own descriptor of the segment (a compaction that
    removes the segment meanwhile does not disturb it)."""

    def __init__(self, fd: int, offset: int, size: int, digest: str) -> None:
        self._fd = fd
        self._base = offset
        self.size = size
        self.digest = digest
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        left = self.size - self._pos
        n = left if n < 0 else min(n, left)
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self._base + self._pos)
        if len(data) != n:
            raise StorageError(f"instance {self.digest}: its segment ended early")
        self._pos += n
        return data

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __iter__(self) -> Iterator[bytes]:
        """The instance from where the reader is, a chunk at a time."""
        while chunk := self.read(CHUNK):
            yield chunk

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
