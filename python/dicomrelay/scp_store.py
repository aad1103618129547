"""``StoreCommit``: the node's DICOM SCP makes what it receives durable in the
node's instance store, a round at a time, instead of one file per instance.

The SCP holds each dataset in memory as it arrives (digested on the way; the
node's SCP sets ``in_memory``) and hands its bytes over here; only a dataset
too large to hold comes as a temporary Part 10 file. A round appends
everything handed over so far to the store (bytes straight into the
segment's direct-I/O buffer, a file read a buffer at a time), makes the
segments durable, records the locations and the store's durable end in one
ledger transaction, and removes the files.

Why bytes and not the dataset written straight into the active segment as it
arrives: a record's header (its length and digest) comes before its data and
is known only once the dataset has ended, and several associations would
interleave in the one active segment; reserving room per association would
leave dead bytes inside the durable range and change the record format. Bytes
in memory cost one copy into the segment's buffer, which direct I/O makes
anyway, and no file: no inode, no page-cache write and read back, no unlink.
(A copy_file_range or reflink from a spill file cannot share blocks either:
a record's data starts 64 bytes into a block.) An association's release waits
for its instances' round, as it waits for ``GroupCommit``'s flush; a failed
round loses its instances (the SCP aborts the association instead of
releasing it, and its sender stores them again).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import anyio
import anyio.to_thread

from dicomrelay._native import Payload
from dicomrelay.config import DigestName
from dicomrelay.errors import DicomrelayError, StorageError
from dicomrelay.groupcommit import Rounds
from dicomrelay.instance_store import InstanceStore, Record


class StoreCommit(Rounds):
    def __init__(self, store: InstanceStore, algorithm: DigestName) -> None:
        """``algorithm``: the one the SCP digests its files with."""
        super().__init__()
        self.store = store
        self.algorithm: DigestName = algorithm
        self._files: dict[int, tuple[Path | Payload, str]] = {}  # waiting for a round

    def add(self, temp: Path | Payload, final: Path, digest: str | None = None) -> int:
        """``temp`` (its bytes, or a closed file) goes into the store under
        ``digest``; ``final`` is not used (the store names nothing by path)."""
        if digest is None:
            raise ValueError("the node's SCP must digest what it stores")
        self._added += 1
        self._files[self._added] = (temp, digest)
        return self._added

    def _due(self) -> bool:
        return bool(self._files)

    async def _round(self) -> None:
        target = self._added
        files, self._files = self._files, {}
        try:
            records = [Record(temp, digest, self.algorithm) for temp, digest in files.values()]
            try:
                await self.store.write_round(records, [])
            except (OSError, DicomrelayError) as e:
                lost = e if isinstance(e, OSError) else StorageError(str(e))
                self._failed.update({ticket: lost for ticket in files})
            spilled = [temp for temp, _ in files.values() if isinstance(temp, Path)]
            if spilled:
                await anyio.to_thread.run_sync(_remove, spilled)
        finally:
            self._settled = target

    def close(self) -> None:
        """Nothing held: the store is the node's."""


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
