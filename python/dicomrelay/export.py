"""A committed study read back out of a node's store as Part 10 files.

Reads beside a serving node: the ledger says where each instance is, a
``SegmentReader`` reads it (no lock, no recovery) and checks it against its
digest. Each file is written under a temporary name, fsynced, then renamed
(and the folder fsynced): a file under its final name is whole. An instance
stored without a file meta group (a bare dataset) gets one, from its own
header, so that every file written is Part 10.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from dicomrelay._native import Payload, SegmentReader, scan
from dicomrelay.dicom.part10 import file_meta
from dicomrelay.errors import CorruptRecord, StorageError, UnknownStudy
from dicomrelay.folders import sync_folder
from dicomrelay.instance_store import STORE_NAME_FILE
from dicomrelay.ledger import Ledger, Location

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
IMPLICIT_LE = "1.2.840.10008.1.2"


@dataclass(frozen=True, slots=True)
class Exported:
    written: list[Path]
    missing: list[str]  # SOP Instance UIDs the store no longer holds


def file_name(sop_instance_uid: str, digest: str) -> str:
    """``<SOP Instance UID>.dcm``, or the digest for a UID that is not one
    (nothing a sender wrote may name a path)."""
    if len(sop_instance_uid) <= 64 and _UID.fullmatch(sop_instance_uid):
        return f"{sop_instance_uid}.dcm"
    return f"{digest}.dcm"


def as_part10(data: Payload | bytes) -> bytes | Payload:
    """The instance as a Part 10 file: as stored, or with a meta group added."""
    info = scan(data)
    if info.has_meta:
        return data
    meta = file_meta(
        sop_class_uid=info.sop_class_uid or "",
        sop_instance_uid=info.sop_instance_uid or "",
        transfer_syntax_uid=info.transfer_syntax_uid or IMPLICIT_LE,
    )
    return meta + bytes(data)


def _write_durably(path: Path, data: bytes | Payload) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


async def _read(ledger: Ledger, reader: SegmentReader, name: str, digest: str) -> Payload | None:
    """The instance, checked; None if the store no longer holds it."""
    import anyio.to_thread

    for attempt in range(3):
        where: Location | None = (await ledger.locations(name, [digest])).get(digest)
        if where is None:
            return None
        try:
            return await anyio.to_thread.run_sync(
                functools.partial(reader.read, verify=True), where, digest
            )
        except CorruptRecord:
            raise
        except StorageError:
            if attempt == 2:  # not compaction moving it: its segment is gone
                raise
    return None


async def export_study(
    ledger: Ledger, store_root: Path, study_instance_uid: str, out_dir: Path
) -> Exported:
    """Write the committed study's instances into ``out_dir`` (created)."""
    import anyio.to_thread  # the command's own import: the module stays cheap

    rows = await ledger.study(study_instance_uid)
    if not rows:
        raise UnknownStudy(f"no committed study {study_instance_uid} in the ledger")
    try:
        name = (store_root / STORE_NAME_FILE).read_text().strip()
    except FileNotFoundError:
        raise StorageError(f"no instance store in {store_root}") from None
    reader = SegmentReader(store_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    missing: list[str] = []
    for uid, digest, _size in rows:
        data = await _read(ledger, reader, name, digest)
        if data is None:
            missing.append(uid)
            continue
        path = out_dir / file_name(uid, digest)
        part10 = await anyio.to_thread.run_sync(as_part10, data)
        await anyio.to_thread.run_sync(_write_durably, path, part10)
        written.append(path)
    await anyio.to_thread.run_sync(sync_folder, out_dir)
    return Exported(written=written, missing=missing)
