"""A C-STORE dataset on its way to a temporary Part 10 file, for the storage SCP."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from dicomrelay._native import StreamFile
from dicomrelay.dicom.dimse import CStoreRq
from dicomrelay.dicom.part10 import file_meta
from dicomrelay.dicom.spare_files import SpareFiles


class Incoming:
    """A C-STORE dataset being written to a temporary Part 10 file as it arrives
    (through the page cache, for the group commit to flush; digested on the way)."""

    def __init__(self, spares: SpareFiles, command: CStoreRq, syntax: str, calling: str) -> None:
        self.command = command
        self.error: OSError | None = None
        self.file: StreamFile | None
        try:
            self.path, self.file = spares.take()
        except OSError as e:
            self.path, self.file, self.error = Path(os.devnull), None, e
        self.write(
            file_meta(
                sop_class_uid=command.sop_class_uid,
                sop_instance_uid=command.sop_instance_uid,
                transfer_syntax_uid=syntax,
                source_ae_title=calling,
            )
        )

    def write(self, data: bytes) -> None:
        if self.file is not None and self.error is None:
            try:
                self.file.write(data)
            except OSError as e:
                self.error = e

    def finish(self) -> str | None:
        """Write the rest (not yet durable); returns the digest. Raises OSError."""
        if self.error is not None:
            raise self.error
        assert self.file is not None
        _, digest = self.file.finish(sync=False)
        return digest

    def discard(self) -> None:
        if self.file is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.file.finish(sync=False)
        with contextlib.suppress(OSError):
            self.path.unlink()
