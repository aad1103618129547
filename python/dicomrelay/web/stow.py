"""STOW-RS (PS3.18 10.5): a multipart/related body of Part 10 instances,
stored the way the node's storage SCP stores a C-STORE: each part streamed
to a temporary file as it arrives (digested on the way, never whole in
memory), its header checked by the scanner, a refused one held in the
node's quarantine (its bytes in ``data_dir/quarantine``, its row in the
ledger: ``dicomrelay quarantine`` lists and deletes it) and reported, the
sound ones made durable together (one syncfs), moved into the
content-addressed store and recorded in the ledger (the store's rows and
their attributes in one transaction) before the answer."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread

from dicomrelay._native import InstanceInfo, StreamFile, scan_file
from dicomrelay.config import DigestName
from dicomrelay.errors import BadRequest, DicomParseError, DicomrelayError
from dicomrelay.instance_store import InstanceStore, Record
from dicomrelay.ledger import Ledger
from dicomrelay.ledger.archive import StoredAttributes
from dicomrelay.ledger.quarantine import HeldInstance
from dicomrelay.web import media
from dicomrelay.web.multipart import MultipartParser, PartData, PartEnd, PartStart

# Failure reasons (PS3.18 Table 10.5.3-3, from PS3.4's C-STORE statuses).
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900  # the dataset does not match its SOP class, or the study asked
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
NOT_AUTHORIZED = 0x0124  # PS3.7 C.5.x: refused, not authorised (the node's inbound rules)
_SAFE_UID = re.compile(r"^[0-9.]{1,64}$")


@dataclass(frozen=True, slots=True)
class Failure:
    sop_class_uid: str
    sop_instance_uid: str
    reason: int
    why: str
    kept: HeldInstance | None = None  # the refused bytes, held in quarantine


@dataclass(slots=True)
class StowResult:
    stored: list[StoredAttributes] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)


def judge(info: InstanceInfo, study_uid: str | None) -> tuple[int, str] | None:
    """Why an instance (as scanned) is refused, or None if it is sound: the
    checks the storage SCP makes of a C-STORE dataset, and that it belongs
    to the study the request names, if any."""
    if not info.has_meta:
        return CANNOT_UNDERSTAND, "not a Part 10 file (no file meta information)"
    if not info.sop_instance_uid or not _SAFE_UID.match(info.sop_instance_uid):
        return CANNOT_UNDERSTAND, "no valid SOP Instance UID"
    if not info.sop_class_uid:
        return DOES_NOT_MATCH, "no SOP Class UID"
    if not info.study_instance_uid:
        return DOES_NOT_MATCH, "no Study Instance UID"
    if not info.series_instance_uid:
        return DOES_NOT_MATCH, "no Series Instance UID"
    if study_uid is not None and info.study_instance_uid != study_uid:
        return DOES_NOT_MATCH, f"belongs to study {info.study_instance_uid}, not {study_uid}"
    return None


def check_content_type(value: str | None) -> str:
    """The boundary of a STOW-RS body; 415 unless multipart/related of
    application/dicom, 400 without a boundary."""
    if value is None:
        raise BadRequest("a STOW-RS request needs a Content-Type", 415)
    kind = media.parse(value)
    if kind.type != "multipart/related" or kind.params.get("type", "").lower() not in (
        "application/dicom",
        "",
    ):
        raise BadRequest(
            'STOW-RS takes multipart/related; type="application/dicom", not ' + value[:80], 415
        )
    boundary = kind.params.get("boundary")
    if not boundary:
        raise BadRequest("a multipart Content-Type needs a boundary")
    return boundary


class _Part:
    def __init__(self, directory: Path, digest: DigestName, dicom: bool) -> None:
        self.path = directory / f"stow.{uuid.uuid4().hex}.tmp"
        self.file: StreamFile | None = StreamFile(self.path, digest=digest, direct=False)
        self.dicom = dicom
        self.error: OSError | None = None

    def write(self, data: bytes) -> None:
        if self.file is not None and self.error is None:
            try:
                self.file.write(data)
            except OSError as e:
                self.error = e

    def finish(self) -> str | None:
        assert self.file is not None
        file, self.file = self.file, None
        _size, digest = file.finish(sync=False)
        if self.error is not None:
            raise self.error
        return digest

    def discard(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError, ValueError):
                self.file.finish(sync=False)
            self.file = None
        with contextlib.suppress(OSError):
            self.path.unlink()


Refuse = Callable[[Failure], Awaitable[None]]
# The node's inbound rules on one scanned instance: None to store it, else why not.
Inbound = Callable[[InstanceInfo], Awaitable[Failure | None]]


async def receive(
    body: AsyncIterator[bytes],
    boundary: str,
    *,
    store: InstanceStore,
    incoming: Path,
    ledger: Ledger,
    quarantine: Path,
    digest: DigestName,
    sender: str,
    study_uid: str | None,
    refused: Refuse,
    inbound: Inbound | None = None,
) -> StowResult:
    """Store what ``body`` holds; what was stored and what failed, and why.
    ``refused`` hears each failure; ``inbound``, when another organisation
    stores, judges each sound instance before it is kept.
    Raises BadRequest for a body that is not a well-formed multipart (then
    nothing is stored)."""
    parser = MultipartParser(boundary)
    result = StowResult()
    accepted: list[tuple[Path, StoredAttributes]] = []
    part: _Part | None = None
    try:
        async for chunk in body:
            for event in parser.feed(chunk):
                if isinstance(event, PartStart):
                    kind = media.parse(event.headers.get("content-type", "application/dicom"))
                    part = _Part(incoming, digest, kind.type == "application/dicom")
                elif isinstance(event, PartData):
                    assert part is not None
                    if part.dicom:
                        part.write(event.data)
                elif isinstance(event, PartEnd):
                    assert part is not None
                    done, part = part, None
                    outcome = await _check(done, study_uid, quarantine, inbound, sender)
                    if isinstance(outcome, Failure):
                        if outcome.kept is not None:
                            await ledger.hold([outcome.kept])
                        result.failed.append(outcome)
                        await refused(outcome)
                    else:
                        accepted.append((done.path, outcome))
        parser.close()
    except BaseException:
        if part is not None:
            part.discard()
        for path, _ in accepted:
            path.unlink(missing_ok=True)
        raise
    if accepted:
        await _keep(accepted, store, digest, ledger, sender, result)
    return result


async def _check(
    part: _Part, study_uid: str | None, quarantine: Path, inbound: Inbound | None, sender: str
) -> StoredAttributes | Failure:
    if not part.dicom:
        part.discard()
        return Failure("", "", CANNOT_UNDERSTAND, "a part that is not application/dicom")
    try:
        digest = part.finish()
    except OSError as e:
        part.discard()
        return Failure("", "", OUT_OF_RESOURCES, f"cannot write it: {e.strerror or e}")
    assert digest is not None
    try:
        info = await anyio.to_thread.run_sync(scan_file, part.path)
    except DicomParseError as e:
        failure = Failure("", "", CANNOT_UNDERSTAND, f"malformed: {e}")
        return _quarantine(part, quarantine, failure, None, digest, sender)
    verdict = judge(info, study_uid)
    if verdict is not None:
        failure = Failure(
            info.sop_class_uid or "", info.sop_instance_uid or "", verdict[0], verdict[1]
        )
        return _quarantine(part, quarantine, failure, info, digest, sender)
    if inbound is not None and (refusal := await inbound(info)) is not None:
        part.discard()  # refused by rule, as the receiver refuses a transfer: not kept
        return refusal
    return StoredAttributes.of(info, digest)


def _quarantine(
    part: _Part,
    quarantine: Path,
    failure: Failure,
    info: InstanceInfo | None,
    digest: str,
    sender: str,
) -> Failure:
    """Keep the refused bytes, for the hold the caller records (as the SCP
    keeps what it refuses); if they cannot be kept, the failure alone."""
    hold_id = uuid.uuid4().hex[:12]
    target = quarantine / f"{hold_id}.dcm"
    try:
        quarantine.mkdir(parents=True, exist_ok=True)
        size = part.path.stat().st_size
        os.replace(part.path, target)
    except OSError:
        part.discard()
        return failure
    kept = HeldInstance(
        id=hold_id,
        kind="unreadable" if failure.reason == CANNOT_UNDERSTAND else "not-storable",
        direction="receive",
        org=sender,
        study_uid=(info.study_instance_uid if info else None) or "",
        sop_uid=(info.sop_instance_uid if info else None) or "",
        patient_id=info.patient_id if info else None,
        digest=digest,
        size=size,
        location=os.fspath(target),
        reason=failure.why,
        context={"via": "stow-rs"},
        held=time.time(),
    )
    return dataclasses.replace(failure, kept=kept)


async def _keep(
    accepted: list[tuple[Path, StoredAttributes]],
    store: InstanceStore,
    algorithm: DigestName,
    ledger: Ledger,
    sender: str,
    result: StowResult,
) -> None:
    """Appended to the store in one durable round (as the SCP's rounds are),
    then recorded: in that order, before the answer."""
    records = [Record(path, a.digest, algorithm) for path, a in accepted]
    try:
        await store.write_round(records, [])
    except (OSError, DicomrelayError) as e:
        reason = f"not stored: {e}"
        result.failed += [
            Failure(a.sop_class_uid, a.sop_uid, OUT_OF_RESOURCES, reason) for _, a in accepted
        ]
        return
    finally:
        await anyio.to_thread.run_sync(_remove, [path for path, _ in accepted])
    instances = [a for _, a in accepted]
    await ledger.store_instances(sender, f"stow-{uuid.uuid4().hex}", instances, time.time())
    result.stored += instances


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
