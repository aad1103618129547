"""The storage service-class provider over asyncio: C-ECHO and C-STORE.

Each association is one task driving a sans-IO ``Association``. A C-STORE
dataset is written to a temporary Part 10 file fragment by fragment as it
arrives (never whole in memory), then scanned and digested; a sound instance is
fsynced and renamed into the output folder and answered with Success, a
malformed one goes to quarantine with its reason and is answered with an error
status. Nothing a peer sends can stop the server.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from anyio.abc import SocketAttribute, SocketStream

from dicomrelay._native import (
    AssociateAc,
    AssociateRj,
    AssociateRq,
    InstanceInfo,
    PresentationContextAc,
    StreamFile,
    UserInformation,
    fragment_pdata,
    scan_file,
)
from dicomrelay.config import DigestName
from dicomrelay.dicom.association import (
    Aborted,
    Association,
    AssociationRequested,
    DataReceived,
    Indication,
    Released,
    ReleaseRequested,
)
from dicomrelay.dicom.dimse import CEchoRq, CEchoRsp, CStoreRq, CStoreRsp, Status
from dicomrelay.dicom.messages import Message, MessageAssembler
from dicomrelay.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, file_meta
from dicomrelay.errors import DicomParseError

log = logging.getLogger("dicomrelay.scp")

MAX_PDU = 1 << 20
ARTIM_SECONDS = 30.0
_SAFE_UID = re.compile(r"^[0-9.]{1,64}$")


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredInstance:
    path: Path
    info: InstanceInfo
    digest: str | None
    calling_ae_title: str
    called_ae_title: str


@dataclass(frozen=True, kw_only=True)
class StoreScp:
    """``allowed_calling``: calling AE titles accepted (None: any). Received
    instances go to ``output_dir``; refused ones to ``quarantine_dir``."""

    ae_title: str
    output_dir: Path
    quarantine_dir: Path
    allowed_calling: frozenset[str] | None = None
    # Called when an association ends, with the instances it stored (routing
    # works study by study, and C-STORE says nothing of when a study is whole).
    on_association_end: Callable[[list[StoredInstance]], Awaitable[None]] | None = None
    digest: DigestName | None = "sha256"

    def __post_init__(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)

    async def serve(
        self, host: str, port: int, *, ready: Callable[[int], None] | None = None
    ) -> None:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        async with listener:
            if ready is not None:
                ready(listener.extra(SocketAttribute.local_port))
            await listener.serve(self.handle)

    async def handle(self, stream: SocketStream) -> None:
        """One association; never raises."""
        try:
            stream.extra(SocketAttribute.raw_socket).setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
            await _Session(self, stream).run()
        except Exception:
            log.exception("association failed")
        finally:
            await stream.aclose()

    def answer(self, rq: AssociateRq) -> AssociateAc | AssociateRj:
        """Accept or reject a request: our AE title, a known caller, contexts we serve."""
        if rq.called_ae_title != self.ae_title:
            return AssociateRj(result=1, source=1, reason=7)  # called AE title not recognized
        if self.allowed_calling is not None and rq.calling_ae_title not in self.allowed_calling:
            return AssociateRj(result=1, source=1, reason=3)  # calling AE title not recognized
        contexts = [
            # Any SOP class, in the first syntax proposed: the dataset is kept as it came.
            PresentationContextAc(
                context_id=pc.context_id, result=0, transfer_syntax=pc.transfer_syntaxes[0]
            )
            if pc.transfer_syntaxes
            else PresentationContextAc(context_id=pc.context_id, result=4)
            for pc in rq.presentation_contexts
        ]
        return AssociateAc(
            called_ae_title=rq.called_ae_title,
            calling_ae_title=rq.calling_ae_title,
            presentation_contexts=contexts,
            user_information=UserInformation(
                max_length=MAX_PDU,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION,
            ),
        )


class _Incoming:
    """A C-STORE dataset being written to a temporary Part 10 file as it arrives
    (direct I/O, digested on the way)."""

    def __init__(self, scp: StoreScp, command: CStoreRq, syntax: str, calling: str) -> None:
        self.command = command
        self.path = scp.output_dir / f".incoming-{uuid.uuid4().hex}.dcm"
        self.file = StreamFile(self.path, digest=scp.digest)
        self.error: OSError | None = None
        self.write(
            file_meta(
                sop_class_uid=command.sop_class_uid,
                sop_instance_uid=command.sop_instance_uid,
                transfer_syntax_uid=syntax,
                source_ae_title=calling,
            )
        )

    def write(self, data: bytes) -> None:
        if self.error is None:
            try:
                self.file.write(data)
            except OSError as e:
                self.error = e

    def finish(self) -> str | None:
        """Write the rest (not yet durable: see ``_keep``); returns the digest.
        Raises OSError."""
        if self.error is not None:
            raise self.error
        _, digest = self.file.finish(sync=False)
        return digest

    def discard(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.file.finish(sync=False)
        with contextlib.suppress(OSError):
            self.path.unlink()


def _keep(path: Path) -> None:
    """Make a renamed file durable: its data and the rename. The file's
    fdatasync, after the rename, commits the journal that holds both; the
    directory's fsync then finds nothing left to do (on ext4, XFS), but is
    what POSIX asks for."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Session:
    def __init__(self, scp: StoreScp, stream: SocketStream) -> None:
        self.scp = scp
        self.stream = stream
        self.association = Association(requestor=False, max_pdu_length=MAX_PDU)
        self.assembler = MessageAssembler(sink=self._fragment)
        self.contexts: dict[int, str] = {}  # accepted context id -> transfer syntax
        self.peer_max_pdu = MAX_PDU
        self.rq: AssociateRq | None = None
        self.incoming: _Incoming | None = None
        self.stored: list[StoredInstance] = []

    async def run(self) -> None:
        self.association.incoming_connection()
        try:
            while not self.association.close_transport:
                with anyio.move_on_after(
                    ARTIM_SECONDS if self.association.artim_running else None
                ) as t:
                    try:
                        data = await self.stream.receive(1 << 20)
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        self.association.transport_closed()
                        return
                if t.cancelled_caught:
                    self.association.artim_expired()
                    continue
                for indication in self.association.receive(data):
                    await self._indication(indication)
                await self._flush()
        finally:
            if self.incoming is not None:
                self.incoming.discard()
            if self.stored and self.scp.on_association_end is not None:
                with anyio.CancelScope(shield=True):
                    await self.scp.on_association_end(self.stored)

    async def _flush(self) -> None:
        data = self.association.data_to_send()
        if data:
            await self.stream.send(data)

    async def _indication(self, indication: Indication) -> None:
        if isinstance(indication, AssociationRequested):
            self.rq = indication.rq
            answer = self.scp.answer(indication.rq)
            if isinstance(answer, AssociateRj):
                log.warning(
                    "refused association from %r to %r (reason %d)",
                    indication.rq.calling_ae_title,
                    indication.rq.called_ae_title,
                    answer.reason,
                )
                self.association.reject(answer)
                return
            self.contexts = {
                pc.context_id: pc.transfer_syntax
                for pc in answer.presentation_contexts
                if pc.result == 0 and pc.transfer_syntax is not None
            }
            self.peer_max_pdu = indication.rq.user_information.max_length or MAX_PDU
            self.association.accept(answer)
        elif isinstance(indication, DataReceived):
            for context_id, is_command, is_last, data in indication.pdata.pdvs:
                if context_id not in self.contexts:
                    self.association.abort()
                    return
                message = self.assembler.feed(context_id, is_command, is_last, data)
                if message is not None:
                    await self._message(message)
        elif isinstance(indication, ReleaseRequested):
            self.association.release_response()
        elif isinstance(indication, Aborted | Released):
            pass

    def _fragment(self, context_id: int, data: bytes) -> None:
        if self.incoming is None:
            pending = self.assembler.pending
            assert pending is not None
            assert isinstance(pending.command, CStoreRq)
            assert self.rq is not None
            self.incoming = _Incoming(
                self.scp, pending.command, self.contexts[context_id], self.rq.calling_ae_title
            )
        self.incoming.write(data)

    async def _respond(self, context_id: int, response: CEchoRsp | CStoreRsp) -> None:
        pdus = fragment_pdata(context_id, True, response.encode(), self.peer_max_pdu)
        self.association.send_pdata(pdus)
        await self._flush()

    async def _message(self, message: Message) -> None:
        command = message.command
        if isinstance(command, CEchoRq):
            await self._respond(message.context_id, CEchoRsp(responding_to=command.message_id))
            return
        if not isinstance(command, CStoreRq):
            return  # responses, or services this SCP does not offer
        incoming, self.incoming = self.incoming, None
        status: int
        comment: str | None
        if incoming is None:  # an empty dataset: nothing to keep
            status, comment = Status.CANNOT_UNDERSTAND, "empty dataset"
        else:
            status, comment = await anyio.to_thread.run_sync(self._finish, incoming)
        await self._respond(
            message.context_id,
            CStoreRsp(
                responding_to=command.message_id,
                sop_class_uid=command.sop_class_uid,
                sop_instance_uid=command.sop_instance_uid,
                status=status,
                error_comment=comment,
            ),
        )

    def _finish(self, incoming: _Incoming) -> tuple[int, str | None]:
        """Close, check, and keep the instance (blocking: a worker thread)."""
        command = incoming.command
        try:
            digest = incoming.finish()
        except OSError as e:
            incoming.discard()
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            return Status.OUT_OF_RESOURCES, "out of storage" if full else str(e)[:64]
        try:
            info = scan_file(incoming.path)  # the header only: the digest is already made
        except DicomParseError as e:
            self._quarantine(incoming.path, f"malformed dataset: {e}")
            return Status.CANNOT_UNDERSTAND, str(e)[:64]
        if info.sop_instance_uid != command.sop_instance_uid or not _SAFE_UID.match(
            command.sop_instance_uid
        ):
            self._quarantine(incoming.path, "SOP Instance UID differs from the command's")
            return Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Instance UID mismatch"
        if info.sop_class_uid not in (None, command.sop_class_uid):
            self._quarantine(incoming.path, "SOP Class UID differs from the command's")
            return Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class UID mismatch"
        final = self.scp.output_dir / f"{command.sop_instance_uid}.dcm"
        try:
            os.replace(incoming.path, final)
            _keep(final)
        except OSError as e:
            incoming.discard()
            final.unlink(missing_ok=True)
            return Status.OUT_OF_RESOURCES, str(e)[:64]
        assert self.rq is not None
        self.stored.append(
            StoredInstance(
                path=final,
                info=info,
                digest=digest,
                calling_ae_title=self.rq.calling_ae_title,
                called_ae_title=self.rq.called_ae_title,
            )
        )
        return Status.SUCCESS, None

    def _quarantine(self, path: Path, reason: str) -> None:
        target = self.scp.quarantine_dir / path.name.lstrip(".")
        try:
            os.replace(path, target)
            target.with_suffix(".reason").write_text(reason + "\n")
        except OSError:
            log.exception("cannot quarantine %s", path)
        log.warning("quarantined %s: %s", target, reason)
