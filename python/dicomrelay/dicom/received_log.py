"""The records a standalone storescp keeps: one JSON line per instance it made
durable, with its digest, so what arrived can be proven and reconciled later;
and one per caller it turned away, so every access is accounted for."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio.to_thread
import orjson

from dicomrelay.config import DigestName
from dicomrelay.dicom.scp import Refusal, StoredInstance

RECEIVED_LOG = "received.jsonl"
REFUSED_LOG = "refused.jsonl"


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
        await anyio.to_thread.run_sync(append_durably, self.path, lines)


class RefusedLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def append(self, refused: Refusal) -> None:
        """Record a failed TLS handshake, a rejected association or a
        quarantined dataset (appended, then fsynced)."""
        record = {
            "what": refused.what,
            "peer": refused.peer,
            "reason": refused.reason,
            "calling_ae_title": refused.calling_ae_title,
            "called_ae_title": refused.called_ae_title,
            "sop_instance_uid": refused.sop_instance_uid,
            "at": time.time(),
        }
        line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        await anyio.to_thread.run_sync(append_durably, self.path, line)


def append_durably(path: Path, lines: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(lines)
        while view:
            view = view[os.write(fd, view) :]
        os.fdatasync(fd)
    finally:
        os.close(fd)
