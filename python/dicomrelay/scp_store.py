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
import math
from pathlib import Path

import anyio
import anyio.to_thread

from dicomrelay.config import DigestName
from dicomrelay.errors import DicomrelayError, StorageError
from dicomrelay.instance_store import InstanceStore, Record


class StoreCommit:
    def __init__(self, store: InstanceStore, algorithm: DigestName) -> None:
        """``algorithm``: the one the SCP digests its files with."""
        self.store = store
        self.algorithm: DigestName = algorithm
        self._added = 0
        self._files: dict[int, tuple[Path, str]] = {}  # waiting for a round
        self._failed: dict[int, OSError] = {}
        self._settled = 0  # tickets up to here are durable (or failed)
        self._round: anyio.Event | None = None  # set when the running round ends
        self._last_start = -math.inf
        self._soon = False

    def add(self, temp: Path, final: Path, digest: str | None = None) -> int:
        """``temp`` (closed) goes into the store under ``digest``; ``final`` is
        not used (the store names nothing by path)."""
        if digest is None:
            raise ValueError("the node's SCP must digest what it stores")
        self._added += 1
        self._files[self._added] = (temp, digest)
        return self._added

    @property
    def flushing(self) -> bool:
        return self._round is not None or self._soon

    async def wait(self, ticket: int) -> None:
        """Return once ``ticket``'s instance is durable in the store; raises the
        error that lost it."""
        while ticket not in self._failed and self._settled < ticket:
            if self._round is not None:
                await self._round.wait()
            else:
                await self.flush()
        error = self._failed.pop(ticket, None)
        if error is not None:
            raise error

    async def flush_soon(self, interval: float) -> None:
        """A round for data still arriving, at most one every ``interval`` seconds."""
        if self._soon:
            return
        self._soon = True
        try:
            await anyio.sleep(max(0.0, self._last_start + interval - anyio.current_time()))
        finally:
            self._soon = False
        await self.flush()

    async def flush(self) -> None:
        """One round of everything added so far, unless one is running."""
        if self._round is not None or not self._files:
            return
        self._round = anyio.Event()
        self._last_start = anyio.current_time()
        target = self._added
        files, self._files = self._files, {}
        try:
            with anyio.CancelScope(shield=True):
                records = [Record(temp, digest, self.algorithm) for temp, digest in files.values()]
                try:
                    await self.store.write_round(records, [])
                except (OSError, DicomrelayError) as e:
                    lost = e if isinstance(e, OSError) else StorageError(str(e))
                    self._failed.update({ticket: lost for ticket in files})
                await anyio.to_thread.run_sync(_remove, [temp for temp, _ in files.values()])
        finally:
            self._settled = target
            done, self._round = self._round, None
            done.set()

    def close(self) -> None:
        """Nothing held: the store is the node's."""


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
