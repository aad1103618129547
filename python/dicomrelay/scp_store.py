"""``StoreCommit``: the node's DICOM SCP makes what it receives durable in the
node's instance store, a round at a time, instead of one file per instance.

The SCP writes each dataset to a temporary Part 10 file as it arrives
(digested on the way) and hands it over here; a round appends every file
handed over so far to the store (read a buffer at a time), makes the
segments durable, records the locations and the store's durable end in one
ledger transaction, and removes the files. An association's release waits
for its instances' round, as it waits for ``GroupCommit``'s flush; a failed
round loses its instances (the SCP aborts the association instead of
releasing it, and its sender stores them again).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import anyio
import anyio.to_thread

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
        self._files: dict[int, tuple[Path, str]] = {}  # waiting for a round

    def add(self, temp: Path, final: Path, digest: str | None = None) -> int:
        """``temp`` (closed) goes into the store under ``digest``; ``final`` is
        not used (the store names nothing by path)."""
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
            await anyio.to_thread.run_sync(_remove, [temp for temp, _ in files.values()])
        finally:
            self._settled = target

    def close(self) -> None:
        """Nothing held: the store is the node's."""


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
