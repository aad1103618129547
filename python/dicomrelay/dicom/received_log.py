"""The record a standalone storescp keeps: one JSON line per instance it made
durable, with its digest, so what arrived can be proven and reconciled later."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio.to_thread
import orjson

from dicomrelay.config import DigestName
from dicomrelay.dicom.scp import StoredInstance

RECEIVED_LOG = "received.jsonl"


class ReceivedLog:
    def __init__(self, path: Path, digest: DigestName) -> None:
        self.path = path
        self.digest: DigestName = digest  # the SCP's, named in each line

    async def append(self, instances: list[StoredInstance]) -> None:
        """Record an association's durable instances (appended, then fsynced)."""
        at = time.time()
        lines = b"".join(
            orjson.dumps(
                {
                    "sop_instance_uid": s.info.sop_instance_uid,
                    "sop_class_uid": s.info.sop_class_uid,
                    "study_instance_uid": s.info.study_instance_uid,
                    "size": s.info.size,
                    "digest": s.digest,
                    "digest_algorithm": self.digest,
                    "path": s.path.name,
                    "calling_ae_title": s.calling_ae_title,
                    "called_ae_title": s.called_ae_title,
                    "at": at,
                },
                option=orjson.OPT_APPEND_NEWLINE,
            )
            for s in instances
        )
        await anyio.to_thread.run_sync(self._write, lines)

    def _write(self, lines: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(lines)
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        finally:
            os.close(fd)
