"""Files made durable and published in groups: one syncfs covers every file
written before it began, so a thousand small files cost a few flushes, not a
thousand.

A writer hands over each finished temporary file with the name it must end up
under (``add`` returns a ticket). A file is renamed to that name only once a
flush has made its data durable, and counts as durable once a later flush has
made the rename durable too: after a crash, a file under its final name is
always whole. Waiters share the flushes; ``flush`` started while data arrives
lets the disk write back the group so far, so that a waiter seldom waits long.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Protocol

import anyio
import anyio.to_thread

from dicomrelay._native import Payload, sync_filesystem


class Commits(Protocol):
    """Where the storage SCP makes the files it received durable: the folder
    of ``GroupCommit`` (``dicomrelay storescp``), or a node's instance store."""

    def add(self, temp: Path | Payload, final: Path, digest: str | None = None) -> int:
        """``temp``: a closed temporary file, or the dataset's bytes (an SCP
        with ``in_memory`` set; only commits that store by content take them)."""
        ...

    @property
    def flushing(self) -> bool: ...
    async def wait(self, ticket: int) -> None: ...
    async def flush_soon(self, interval: float) -> None: ...
    def close(self) -> None: ...


class Rounds:
    """Tickets made durable a round at a time: a round covers every ticket
    added before it began, one round runs at a time, waiters share rounds, and
    ``flush_soon`` paces rounds for data still arriving. A subclass says what
    is due and what a round does (``_round`` advances ``_settled`` and records
    what it lost in ``_failed``)."""

    def __init__(self) -> None:
        self._added = 0  # tickets handed out
        self._settled = 0  # tickets up to here are durable (or failed)
        self._failed: dict[int, OSError] = {}
        self._running: anyio.Event | None = None  # set when the running round ends
        self._last_start = -math.inf  # when the last round began (anyio clock)
        self._soon = False  # a flush_soon is waiting to flush

    def _due(self) -> bool:
        raise NotImplementedError

    async def _round(self) -> None:
        raise NotImplementedError

    @property
    def flushing(self) -> bool:
        """A round is running, or one is due soon."""
        return self._running is not None or self._soon

    async def wait(self, ticket: int) -> None:
        """Return once ``ticket`` is durable; raises the OSError that lost it."""
        while ticket not in self._failed and self._settled < ticket:
            if self._running is not None:
                await self._running.wait()
            else:
                await self.flush()
        error = self._failed.pop(ticket, None)
        if error is not None:
            raise error

    async def flush_soon(self, interval: float) -> None:
        """A round for data still arriving, at most one every ``interval``
        seconds: the disk starts on the group so far, without a sync for every
        file or two. (A waiter flushes at once.)"""
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
        if self._running is not None or not self._due():
            return
        self._running = anyio.Event()
        self._last_start = anyio.current_time()
        try:
            with anyio.CancelScope(shield=True):
                await self._round()
        finally:
            done, self._running = self._running, None
            done.set()


class GroupCommit(Rounds):
    """A file counts as durable (settled) once a later round has made its
    rename durable too."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        # Opened before any file is written: the kernel reports to this
        # descriptor every writeback error after it was opened, none before.
        self._fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        self._renamed = 0  # tickets up to here are renamed (or failed)
        self._files: dict[int, tuple[Path, Path]] = {}  # ticket -> (temp, final), not yet renamed

    def add(self, temp: Path | Payload, final: Path, digest: str | None = None) -> int:
        """``temp`` is written and closed; it is to become ``final``. (``digest``,
        its bytes' digest, is for commits that store by content.)"""
        if not isinstance(temp, Path):
            raise TypeError("GroupCommit renames files into place: give it a file")
        self._added += 1
        self._files[self._added] = (temp, final)
        return self._added

    @property
    def pending(self) -> int:
        return self._added - self._settled

    def _due(self) -> bool:
        return self.pending > 0

    async def _round(self) -> None:
        renamed_before, target = self._renamed, self._added
        files = [(t, *self._files.pop(t)) for t in range(renamed_before + 1, target + 1)]
        synced, failed = False, dict[int, OSError]()
        try:
            synced, failed = await anyio.to_thread.run_sync(self._sync_then_rename, files)
        finally:
            self._failed.update(failed)
            if synced:  # the renames done before this round began are durable now
                self._settled = renamed_before
            self._renamed = target

    def _sync_then_rename(
        self, files: list[tuple[int, Path, Path]]
    ) -> tuple[bool, dict[int, OSError]]:
        try:
            sync_filesystem(self._fd)
        except OSError as e:
            # Some written data may not have reached the disk: none of this
            # group is published. (Earlier renames wait for the next flush.)
            for _, temp, _ in files:
                with contextlib.suppress(OSError):
                    temp.unlink()
            return False, {ticket: e for ticket, _, _ in files}
        failed: dict[int, OSError] = {}
        for ticket, temp, final in files:
            try:
                os.replace(temp, final)
            except OSError as e:
                failed[ticket] = e
                with contextlib.suppress(OSError):
                    temp.unlink()
        return True, failed

    def close(self) -> None:
        """Close the directory's descriptor (once). A flush after this fails
        with EBADF: -1 never names a file, where a reused number could."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
