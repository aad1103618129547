"""One association of the storage SCP: the decisions, over a native data plane.

The sans-IO ``Association`` negotiates. Once it is established, the bytes go
to the native data plane, which reassembles P-DATA, writes each C-STORE
dataset (file meta in front) into a spare file as it arrives (or, up to the
SCP's ``in_memory`` bytes, into memory: no file at all), digests and
scans it, and hands over whole messages: without TLS a thread of its own
reads the socket (``ScpPump``), and the event loop hears from it only when
messages are complete; with TLS the session reads the stream and feeds the
same work (``ScpReceiver``). Here each message is judged (command, header
against command), answered, and handed to the commits. A PDU other than
P-DATA ends the data plane's part: it goes back to the ``Association``.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import ByteStream, TaskGroup

from dicomrelay._native import (
    AssociateRj,
    AssociateRq,
    Payload,
    ScpCommand,
    ScpEnd,
    ScpMessage,
    ScpPump,
    ScpReceiver,
    fragment_pdata,
)
from dicomrelay.dicom.association import (
    Aborted,
    Association,
    AssociationRequested,
    DataReceived,
    Indication,
    Released,
    ReleaseRequested,
)
from dicomrelay.dicom.dimse import (
    CEchoRq,
    CEchoRsp,
    CStoreRq,
    CStoreRsp,
    DimseError,
    Status,
    parse_command,
)
from dicomrelay.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from dicomrelay.dicom.scp_records import Refusal, StoredInstance
from dicomrelay.errors import PduError

if TYPE_CHECKING:
    from dicomrelay.dicom.scp import StoreScp

log = logging.getLogger("dicomrelay.scp")

MAX_PDU = 1 << 20
ARTIM_SECONDS = 30.0
FLUSH_INTERVAL = 0.05  # seconds between the flushes of data still arriving
_SAFE_UID = re.compile(r"^[0-9.]{1,64}$")
_REJECT_REASONS = {3: "calling AE title not recognized", 7: "called AE title not recognized"}

Outcome = tuple[int, str | None, StoredInstance | Refusal | None]


class Session:
    def __init__(
        self, scp: StoreScp, stream: ByteStream, peer: str, *, sock: socket.socket | None = None
    ) -> None:
        """``sock``: the plain socket under ``stream``, for the pump to read
        (None over TLS: the session reads and feeds the data plane)."""
        self.scp = scp
        self.stream = stream
        self.sock = sock
        self.peer = peer
        self.association = Association(requestor=False, max_pdu_length=MAX_PDU)
        self.contexts: dict[int, str] = {}  # accepted context id -> transfer syntax
        self.peer_max_pdu = MAX_PDU
        self.rq: AssociateRq | None = None
        self.data_plane: ScpPump | ScpReceiver | None = None
        # C-STORE commands answered ahead, by sequence: parsed once.
        self.ahead: dict[int, CStoreRq] = {}
        # By final path, with its commit ticket: an instance stored again in the
        # same association replaces the earlier (its file does too).
        self.stored: dict[Path, tuple[int, StoredInstance]] = {}
        self.background: TaskGroup | None = None
        self.last_heard = anyio.current_time()

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as self.background:
                self.background.start_soon(self._watch_idle)
                await self._serve()
                self.background.cancel_scope.cancel()
        finally:
            self._stop_data_plane()
            with anyio.CancelScope(shield=True):
                await self._hand_over(await self._settle())

    def _stop_data_plane(self) -> bytes:
        """The pump's thread ends before the socket can close (the files of
        messages it read but nobody took are removed); what it had yet to
        write is returned, for the stream to send."""
        plane, self.data_plane = self.data_plane, None
        if isinstance(plane, ScpPump):
            return plane.stop()
        return b""

    async def _end_data_plane(self) -> None:
        """The socket is the session's again, reads and writes."""
        unsent = self._stop_data_plane()
        if unsent:
            await self.stream.send(unsent)

    async def _hand_over(self, durable: list[StoredInstance]) -> None:
        """Give what the association stored to ``on_association_end``, once."""
        self.stored = {}
        if durable and self.scp.on_association_end is not None:
            await self.scp.on_association_end(durable)

    async def _watch_idle(self) -> None:
        """Abort an association on which nothing has arrived for the SCP's
        ``idle_seconds``: a peer that went away without a word must not hold
        its files and its memory for ever. (The pump watches its own reads.)"""
        idle = self.scp.idle_seconds
        while True:
            await anyio.sleep(max(idle - (anyio.current_time() - self.last_heard), 0.01))
            if isinstance(self.data_plane, ScpPump):
                self.last_heard = anyio.current_time()
            elif anyio.current_time() - self.last_heard >= idle:
                log.warning("aborting an association idle for %g s", idle)
                self.association.abort()
                with contextlib.suppress(OSError, anyio.BrokenResourceError):
                    await self._flush()
                await self.stream.aclose()  # ends the receive the session waits in
                return

    async def _settle(self) -> list[StoredInstance]:
        """Wait for every instance this association stored to be durable; the
        ones that are (the others are logged and forgotten: their files are gone)."""
        durable = []
        for ticket, instance in self.stored.values():
            try:
                await self.scp.committer.wait(ticket)
            except OSError as e:
                log.error("lost %s after answering Success: %s", instance.path.name, e)
                continue
            durable.append(instance)
        self.stored = {i.path: (0, i) for i in durable}  # settled: ticket 0 is always durable
        return durable

    async def _serve(self) -> None:
        self.association.incoming_connection()
        while not self.association.close_transport:
            if isinstance(self.data_plane, ScpPump):
                await self._pump(self.data_plane)
                continue
            try:
                if self.association.artim_running:
                    with anyio.move_on_after(ARTIM_SECONDS) as t:
                        data = await self.stream.receive(1 << 20)
                    if t.cancelled_caught:
                        self.association.artim_expired()
                        continue
                else:
                    data = await self.stream.receive(1 << 20)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.association.transport_closed()
                return
            self.last_heard = anyio.current_time()
            if isinstance(self.data_plane, ScpReceiver):
                for event in self.data_plane.feed(data):
                    await self._event(event)
            else:
                for indication in self.association.receive(data):
                    await self._indication(indication)
            await self._flush()

    async def _pump(self, pump: ScpPump) -> None:
        """Answer what the pump completes until it stops reading."""
        while self.data_plane is pump:
            await anyio.wait_readable(pump.fileno())
            events = pump.take()
            # Decisions ahead first: the datasets they are for are arriving.
            for event in events:
                if isinstance(event, ScpCommand):
                    self._decide_ahead(event)
            for event in events:
                if not isinstance(event, ScpCommand):
                    await self._event(event)
            await self._flush()

    async def _flush(self) -> None:
        data = self.association.data_to_send()
        if not data:
            return
        if isinstance(self.data_plane, ScpPump):
            try:
                self.data_plane.send(data)  # behind any answer it is sending
            except OSError as e:
                raise anyio.BrokenResourceError from e
        else:
            await self.stream.send(data)

    async def _event(self, event: ScpCommand | ScpMessage | ScpEnd) -> None:
        if isinstance(event, ScpCommand):
            self._decide_ahead(event)
            return
        if isinstance(event, ScpMessage):
            if self.association.established:
                await self._message(event)
            else:
                _discard(event)  # read ahead of an abort
            return
        await self._end_data_plane()
        if event.kind == "handback":
            for indication in self.association.receive(event.data):
                await self._indication(indication)
        elif event.kind == "pdu-error":
            assert isinstance(event.error, PduError)
            log.warning("aborting the association from %s: %s", self.peer, event.error)
            self.association.protocol_error(event.error.abort_reason)
        elif event.kind == "dimse-error":
            log.warning("aborting the association from %s: %s", self.peer, event.reason)
            self.association.abort()
        elif event.kind == "idle":
            log.warning("aborting an association idle for %g s", self.scp.idle_seconds)
            self.association.abort()
            with contextlib.suppress(OSError, anyio.BrokenResourceError):
                await self._flush()
            self.association.transport_closed()
        elif event.kind in ("closed", "socket-error"):
            self.association.transport_closed()

    async def _indication(self, indication: Indication) -> None:
        if isinstance(indication, AssociationRequested):
            await self._requested(indication.rq)
        elif isinstance(indication, DataReceived):
            # P-DATA outside the data plane's part (after a release request
            # crossed it): nothing may be stored any more.
            self.association.abort()
        elif isinstance(indication, ReleaseRequested):
            # The release promises the peer that everything it stored is safe:
            # durable, and handed over (a node has routed it in its ledger).
            stored = len(self.stored)
            durable = await self._settle()
            with anyio.CancelScope(shield=True):
                await self._hand_over(durable)
            if len(durable) == stored:
                self.association.release_response()
            else:
                self.association.abort()
        elif isinstance(indication, Aborted | Released):
            pass

    async def _requested(self, rq: AssociateRq) -> None:
        self.rq = rq
        answer = self.scp.answer(rq)
        if isinstance(answer, AssociateRj):
            reason = _REJECT_REASONS.get(answer.reason, f"reason {answer.reason}")
            log.warning(
                "refused association from %r at %s to %r: %s",
                rq.calling_ae_title,
                self.peer,
                rq.called_ae_title,
                reason,
            )
            self.association.reject(answer)
            await self._flush()  # the rejection goes out before anything is audited
            await self.scp.refused(
                Refusal(
                    what="association",
                    peer=self.peer,
                    reason=reason,
                    calling_ae_title=rq.calling_ae_title,
                    called_ae_title=rq.called_ae_title,
                )
            )
            return
        self.contexts = {
            pc.context_id: pc.transfer_syntax
            for pc in answer.presentation_contexts
            if pc.result == 0 and pc.transfer_syntax is not None
        }
        self.peer_max_pdu = rq.user_information.max_length or MAX_PDU
        self.association.accept(answer)
        if not self.association.established:
            return
        # The same receiver either way: fed by the session (TLS), or by a pump.
        receiver: dict[str, Any] = {
            "contexts": list(self.contexts.items()),
            "calling_ae_title": rq.calling_ae_title,
            "implementation_class_uid": IMPLEMENTATION_CLASS_UID,
            "implementation_version_name": IMPLEMENTATION_VERSION,
            "digest": self.scp.digest,
            "max_pdu_length": MAX_PDU,
            "in_memory": self.scp.in_memory,
        }
        if self.sock is None:
            self.data_plane = ScpReceiver(self.scp.spares, **receiver)
            return
        await self._flush()  # the acceptance goes out before the pump owns the socket
        self.data_plane = ScpPump(
            self.sock.fileno(), self.scp.spares, idle_seconds=self.scp.idle_seconds, **receiver
        )

    def _decide_ahead(self, event: ScpCommand) -> None:
        """Answer Success now to a C-STORE whose dataset is still arriving,
        for the pump to send the moment it is stored, if its header then names
        the command's instance and class and a study (what ``_check`` asks of
        it): the peer's next request need not wait for this task to wake.
        Not when each instance must be durable before its answer."""
        pump = self.data_plane
        if not isinstance(pump, ScpPump) or self.scp.sync_each_instance:
            return
        try:
            command = parse_command(event.command)
        except DimseError:
            return  # the message itself will be refused
        if not isinstance(command, CStoreRq) or not _SAFE_UID.match(command.sop_instance_uid):
            return
        success = CStoreRsp(
            responding_to=command.message_id,
            sop_class_uid=command.sop_class_uid,
            sop_instance_uid=command.sop_instance_uid,
        )
        pdus = fragment_pdata(event.context_id, True, success.encode(), self.peer_max_pdu)
        pump.answer_when_stored(
            event.sequence, pdus, command.sop_instance_uid, command.sop_class_uid
        )
        self.ahead[event.sequence] = command

    async def _respond(self, context_id: int, response: CEchoRsp | CStoreRsp) -> None:
        pdus = fragment_pdata(context_id, True, response.encode(), self.peer_max_pdu)
        self.association.send_pdata(pdus)

    async def _message(self, message: ScpMessage) -> None:
        try:
            command = self.ahead.pop(message.sequence, None) or parse_command(message.command)
        except DimseError as e:
            _discard(message)
            log.warning("aborting the association from %s: %s", self.peer, e)
            await self._end_data_plane()  # nothing more is answered ahead
            self.association.abort()
            return
        if isinstance(command, CEchoRq):
            _discard(message)
            await self._respond(message.context_id, CEchoRsp(responding_to=command.message_id))
            return
        if not isinstance(command, CStoreRq):
            _discard(message)
            return  # responses, or services this SCP does not offer
        received = _received(message)
        status, comment, outcome = self._check(message, received, command)
        if message.answered:
            # Sent by the pump, as decided when the command came: the check
            # it made is this one's.
            if not isinstance(outcome, StoredInstance):
                log.error("answered Success ahead, but the check says %#06x", status)
                if isinstance(outcome, Refusal):
                    await self.scp.refused(outcome)
                return
            await self._commit(received, outcome)
            return
        if isinstance(outcome, StoredInstance):
            status, comment = await self._commit(received, outcome)
        elif isinstance(outcome, Refusal):
            await self.scp.refused(outcome)
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

    async def _commit(
        self, received: Path | Payload | None, instance: StoredInstance
    ) -> tuple[int, str | None]:
        assert received is not None
        commits = self.scp.committer
        ticket = commits.add(received, instance.path, instance.digest)
        if self.scp.sync_each_instance:
            try:
                await commits.wait(ticket)
            except OSError as e:
                return Status.OUT_OF_RESOURCES, str(e)[:64]
            self.stored[instance.path] = (0, instance)
        else:
            self.stored[instance.path] = (ticket, instance)
            if self.background is not None and not commits.flushing:
                # Let the disk start on what has arrived (at most every so often).
                self.background.start_soon(commits.flush_soon, FLUSH_INTERVAL)
        return Status.SUCCESS, None

    def _check(
        self, message: ScpMessage, path: Path | Payload | None, command: CStoreRq
    ) -> Outcome:
        """The instance to keep (received in ``path``, a file or bytes), or the
        status that refuses it (with the Refusal to report when it went to
        quarantine)."""
        if message.error is not None or path is None:
            e = message.error
            full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
            comment = "out of storage" if full or e is None else str(e)[:64]
            return Status.OUT_OF_RESOURCES, comment, None
        info = message.info
        if info is None:
            reason = str(message.scan_error)
            return self._quarantine(
                message,
                path,
                command,
                Status.CANNOT_UNDERSTAND,
                reason[:64],
                f"malformed dataset: {reason}",
            )
        if not info.sop_instance_uid:
            # No SOP Instance UID at all (an empty dataset has none): the SCP
            # "cannot understand the Data Set", C000 (PS3.4 Table B.2-1), as
            # DCMTK's storescp answers a dataset without SOP Class or Instance
            # UID; A900 is for one naming another instance. (DCMTK answers an
            # empty one A700, Out of Resources, as its writer fails on it: a
            # transient refusal, which a sender would retry.)
            empty = info.size == info.dataset_offset
            comment = "empty dataset" if empty else "no SOP Instance UID"
            return self._quarantine(
                message, path, command, Status.CANNOT_UNDERSTAND, comment, comment
            )
        mismatch = Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
        if info.sop_instance_uid != command.sop_instance_uid or not _SAFE_UID.match(
            command.sop_instance_uid
        ):
            return self._quarantine(
                message,
                path,
                command,
                mismatch,
                "SOP Instance UID mismatch",
                "SOP Instance UID differs from the command's",
            )
        if not info.study_instance_uid:  # type 1 in every composite IOD; routing needs it
            reason = "no Study Instance UID"
            return self._quarantine(message, path, command, mismatch, reason, reason)
        if info.sop_class_uid not in (None, command.sop_class_uid):
            return self._quarantine(
                message,
                path,
                command,
                mismatch,
                "SOP Class UID mismatch",
                "SOP Class UID differs from the command's",
            )
        assert self.rq is not None
        kept = StoredInstance(
            path=self.scp.output_dir / f"{command.sop_instance_uid}.dcm",
            info=info,
            digest=message.digest,
            calling_ae_title=self.rq.calling_ae_title,
            called_ae_title=self.rq.called_ae_title,
        )
        return Status.SUCCESS, None, kept

    def _quarantine(
        self,
        message: ScpMessage,
        received: Path | Payload,
        command: CStoreRq,
        status: int,
        comment: str,
        reason: str,
    ) -> Outcome:
        """Move (or write, if held in memory) the instance to quarantine:
        ``status`` and ``comment`` answer the C-STORE, and the Refusal is to
        report. With ``reason_files`` (the standalone SCP) the file keeps its
        name and a ``.reason`` file beside it says why; otherwise it is named
        by a new hold id, and the Refusal says where it was kept, for the
        owner to record the hold."""
        if isinstance(received, Path):
            path = received
        else:  # held in memory: named as a spare file would be
            path = Path(f"{os.getpid():x}-{time.time_ns():x}-{next(_held):x}.dcm")
        if self.scp.reason_files:
            target = self.scp.quarantine_dir / path.name.lstrip(".")
        else:
            target = self.scp.quarantine_dir / f"{uuid.uuid4().hex[:12]}.dcm"
        kept: Path | None = target
        try:
            if isinstance(received, Path):
                os.replace(received, target)
            else:
                received.write_new_file(target)
            if self.scp.reason_files:
                target.with_suffix(".reason").write_text(reason + "\n")
        except OSError:
            log.exception("cannot quarantine %s", path)
            kept = None
        log.warning("quarantined %s: %s", target, reason)
        assert self.rq is not None
        return (
            status,
            comment,
            Refusal(
                what="dataset",
                peer=self.peer,
                reason=f"{reason}; kept as {path.name}" if self.scp.reason_files else reason,
                calling_ae_title=self.rq.calling_ae_title,
                called_ae_title=self.rq.called_ae_title,
                sop_instance_uid=command.sop_instance_uid,
                kept=None if self.scp.reason_files else kept,
                info=message.info,
                digest=message.digest,
            ),
        )


_held = itertools.count()


def _received(message: ScpMessage) -> Path | Payload | None:
    """Where the message's data set is: its bytes, or its file."""
    if message.data is not None:
        return message.data
    return None if message.path is None else Path(message.path)


def _discard(message: ScpMessage) -> None:
    """Remove the file of a message that is not kept."""
    if message.path is not None:
        with contextlib.suppress(OSError):
            Path(message.path).unlink()
