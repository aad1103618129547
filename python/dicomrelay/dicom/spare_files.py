"""Temporary files for a storage SCP's incoming datasets, made ahead of need."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import anyio
import anyio.to_thread

from dicomrelay._native import StreamFile
from dicomrelay.config import DigestName


class SpareFiles:
    """Temporary files made ahead of need, off an association's path: creating a
    file can wait behind a journal commit for longer than receiving an image."""

    def __init__(self, directory: Path, digest: DigestName | None, keep: int = 8) -> None:
        self.directory = directory  # on the output folder's filesystem, for renames
        self.digest: DigestName | None = digest
        self.keep = keep
        self._spare: list[tuple[Path, StreamFile]] = []
        self._refilling = False
        directory.mkdir(exist_ok=True)
        for stale in directory.glob("*.dcm"):  # left by a crash, never made durable
            stale.unlink(missing_ok=True)

    def take(self) -> tuple[Path, StreamFile]:
        """A new empty file (made now if none is ready). Raises OSError."""
        while self._spare:
            path, file = self._spare.pop()
            if path.exists():  # not removed behind the server's back
                return path, file
            file.finish(sync=False)
        return self._create()

    @property
    def low(self) -> bool:
        return not self._refilling and len(self._spare) < self.keep // 2

    async def refill(self) -> None:
        if self._refilling:
            return
        self._refilling = True
        try:
            with anyio.CancelScope(shield=True):  # a file made is never dropped
                await anyio.to_thread.run_sync(self._make_spares, self.keep - len(self._spare))
        finally:
            self._refilling = False

    def _make_spares(self, count: int) -> None:
        """Files made in one go, off the event loop; ``take`` may use each at once."""
        try:
            for _ in range(count):
                self._spare.append(self._create())
        except OSError:
            pass  # take() will say why

    def close(self) -> None:
        """Close and remove the spare files (each holds a descriptor)."""
        spare, self._spare = self._spare, []
        for path, file in spare:
            with contextlib.suppress(OSError, ValueError):
                file.finish(sync=False)
            path.unlink(missing_ok=True)

    def _create(self) -> tuple[Path, StreamFile]:
        path = self.directory / f"{uuid.uuid4().hex}.dcm"
        try:
            return path, StreamFile(path, digest=self.digest, direct=False)
        except FileNotFoundError:  # the folder was removed: make it again
            self.directory.mkdir(parents=True, exist_ok=True)
            return path, StreamFile(path, digest=self.digest, direct=False)
