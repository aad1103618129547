"""The storage service-class provider over asyncio: C-ECHO and C-STORE.

Each association is one task driving a sans-IO ``Association``. A C-STORE
dataset is written to a temporary Part 10 file fragment by fragment as it
arrives (never whole in memory), digested on the way, then its header is
checked against the command. A sound instance is answered with Success and
handed to a group commit, which renames it into the output folder once it is
durable; a malformed one goes to quarantine with its reason and is answered
with an error status. Nothing a peer sends can stop the server.

When is an instance safe? By default, before the A-RELEASE response: the
association's release waits for every instance it stored to be durable, and is
aborted instead if any was lost, so a sender that sees the release complete
knows the whole association is on disk (and DICOM's storage commitment, not
C-STORE success, is what promises more). ``sync_each_instance`` makes each
C-STORE response wait for its own instance instead, at a cost in throughput on
one association; concurrent associations still share the flushes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import ByteStream, Listener, SocketAttribute, SocketStream
from anyio.streams.tls import TLSStream

from dicomrelay import sockets
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
from dicomrelay.dicom.incoming import Incoming
from dicomrelay.dicom.messages import Message, MessageAssembler
from dicomrelay.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from dicomrelay.dicom.spare_files import SpareFiles
from dicomrelay.errors import DicomParseError
from dicomrelay.groupcommit import Commits, GroupCommit

log = logging.getLogger("dicomrelay.scp")

MAX_PDU = 1 << 20
ARTIM_SECONDS = 30.0
FLUSH_INTERVAL = 0.05  # seconds between the flushes of data still arriving
TLS_HANDSHAKE_SECONDS = 30.0
_SAFE_UID = re.compile(r"^[0-9.]{1,64}$")


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredInstance:
    path: Path
    info: InstanceInfo
    digest: str | None
    calling_ae_title: str
    called_ae_title: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Refusal:
    """Something the SCP turned away, for an audit trail: a TLS handshake that
    failed (``tls``), an association it rejected (``association``), or a
    dataset it quarantined (``dataset``)."""

    what: Literal["tls", "association", "dataset"]
    peer: str  # the caller's address
    reason: str
    calling_ae_title: str | None = None
    called_ae_title: str | None = None
    sop_instance_uid: str | None = None


@dataclass(frozen=True, kw_only=True)
class StoreScp:
    """``allowed_calling``: calling AE titles accepted (None: any). Any called
    AE title is accepted, as by DCMTK's storescp, unless
    ``require_called_ae_title`` (then only ``ae_title``). Received instances
    go to ``output_dir``; refused ones to ``quarantine_dir``. With ``tls``
    (see ``dicomrelay.dicom.tls.server_context``) every connection must first
    complete a TLS handshake; one that fails is logged and closed.

    ``serve`` and ``serve_on`` close what the SCP holds open when they end: an
    SCP serves once."""

    ae_title: str
    output_dir: Path
    quarantine_dir: Path
    allowed_calling: frozenset[str] | None = None
    require_called_ae_title: bool = False
    # Called with the instances an association stored, durable, before its
    # release is answered (or when it ends otherwise): routing works study by
    # study, and C-STORE says nothing of when a study is whole.
    on_association_end: Callable[[list[StoredInstance]], Awaitable[None]] | None = None
    # Called with each refusal, after it is logged (a node audits it).
    on_refusal: Callable[[Refusal], Awaitable[None]] | None = None
    digest: DigestName | None = "sha256"
    sync_each_instance: bool = False
    tls: ssl.SSLContext | None = None
    idle_seconds: float = 300.0  # an association silent this long is aborted
    # Where received files are made durable: by default one file per instance
    # in output_dir (a GroupCommit); a node gives its instance store's.
    commits: Commits | None = None
    spares: SpareFiles = field(init=False)

    def __post_init__(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        spares = SpareFiles(self.output_dir / ".incoming", self.digest)
        object.__setattr__(self, "spares", spares)
        if self.commits is None:
            # Last: it holds a descriptor, which a failure after it would leak.
            object.__setattr__(self, "commits", GroupCommit(self.output_dir))

    @property
    def committer(self) -> Commits:
        assert self.commits is not None
        return self.commits

    async def serve(
        self, host: str, port: int, *, ready: Callable[[int], None] | None = None
    ) -> None:
        try:
            listener = await sockets.tcp_listener(host, port)
        except BaseException:
            self.close()
            raise
        if ready is not None:
            ready(listener.extra(SocketAttribute.local_port))
        await self.serve_on(listener)

    async def serve_on(self, listener: Listener[SocketStream]) -> None:
        """Serve on ``listener`` until cancelled; then close it and the SCP."""
        try:
            async with listener:
                await listener.serve(self.handle)
        finally:
            self.close()  # every association has ended: nothing flushes any more

    def close(self) -> None:
        """Close the output folder's descriptor and the spare files; again: nothing."""
        self.committer.close()
        self.spares.close()

    async def handle(self, stream: SocketStream) -> None:
        """One association; never raises."""
        session: ByteStream = stream
        try:
            stream.extra(SocketAttribute.raw_socket).setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
            peer = _address(stream)
            if self.tls is not None:
                secured = await self._handshake(stream, self.tls, peer)
                if secured is None:
                    return
                session = secured
            await _Session(self, session, peer).run()
        except Exception:
            log.exception("association failed")
        finally:
            await session.aclose()

    async def _handshake(
        self, stream: SocketStream, tls: ssl.SSLContext, peer: str
    ) -> TLSStream | None:
        """The stream secured, or None (logged and reported) if the handshake
        failed. (The peer then sees the connection close: anyio drops the
        alert, such as unknown_ca, that OpenSSL had ready for it.)"""
        try:
            with anyio.fail_after(TLS_HANDSHAKE_SECONDS):
                return await TLSStream.wrap(
                    stream, server_side=True, ssl_context=tls, standard_compatible=False
                )
        except anyio.EndOfStream:
            # Connected and closed without a word (a port probe, a load
            # balancer's health check): no access was attempted.
            log.debug("%s closed before the TLS handshake", peer)
            return None
        except (ssl.SSLError, OSError, anyio.BrokenResourceError) as e:
            # TimeoutError is an OSError. A plaintext caller lands here too.
            log.warning("TLS handshake with %s failed: %s", peer, _reason(e))
            await self.refused(Refusal(what="tls", peer=peer, reason=_reason(e)))
            return None

    async def refused(self, refusal: Refusal) -> None:
        """Report a refusal (already logged) to ``on_refusal``, if any."""
        if self.on_refusal is not None:
            await self.on_refusal(refusal)

    def answer(self, rq: AssociateRq) -> AssociateAc | AssociateRj:
        """Accept or reject a request: a known caller (addressing our AE title,
        if required), contexts we serve."""
        if self.require_called_ae_title and rq.called_ae_title != self.ae_title:
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


def _address(stream: SocketStream) -> str:
    """``host:port`` of the caller, for logs and audits."""
    address = stream.extra(SocketAttribute.remote_address, None)
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


_REJECT_REASONS = {3: "calling AE title not recognized", 7: "called AE title not recognized"}


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError):
        return getattr(e, "verify_message", None) or e.reason or str(e)
    if isinstance(e, TimeoutError):
        return f"no handshake within {TLS_HANDSHAKE_SECONDS:.0f} s"
    return str(e) or type(e).__name__


class _Session:
    def __init__(self, scp: StoreScp, stream: ByteStream, peer: str) -> None:
        self.scp = scp
        self.stream = stream
        self.peer = peer
        self.association = Association(requestor=False, max_pdu_length=MAX_PDU)
        self.assembler = MessageAssembler(sink=self._fragment)
        self.contexts: dict[int, str] = {}  # accepted context id -> transfer syntax
        self.peer_max_pdu = MAX_PDU
        self.rq: AssociateRq | None = None
        self.incoming: Incoming | None = None
        # By final path, with its commit ticket: an instance stored again in the
        # same association replaces the earlier (its file does too).
        self.stored: dict[Path, tuple[int, StoredInstance]] = {}
        self.background: anyio.abc.TaskGroup | None = None
        self.last_heard = anyio.current_time()

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as self.background:
                self.background.start_soon(self._watch_idle)
                await self._serve()
                self.background.cancel_scope.cancel()
        finally:
            if self.incoming is not None:
                self.incoming.discard()
            with anyio.CancelScope(shield=True):
                await self._hand_over(await self._settle())

    async def _hand_over(self, durable: list[StoredInstance]) -> None:
        """Give what the association stored to ``on_association_end``, once."""
        self.stored = {}
        if durable and self.scp.on_association_end is not None:
            await self.scp.on_association_end(durable)

    async def _watch_idle(self) -> None:
        """Abort an association on which nothing has arrived for the SCP's
        ``idle_seconds``: a peer that went away without a word must not hold
        its files and its memory for ever."""
        idle = self.scp.idle_seconds
        while True:
            await anyio.sleep(max(idle - (anyio.current_time() - self.last_heard), 0.01))
            if anyio.current_time() - self.last_heard >= idle:
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
            # A data set's bytes go from the decoder straight into its file;
            # the decoder pauses after each command, for the file to be made.
            view = memoryview(data)
            while view:
                indications, used = self.association.receive_streaming(view, self._sink())
                view = view[used:]
                for indication in indications:
                    await self._indication(indication)
            await self._flush()

    def _sink(self) -> StreamFile | None:
        """The file of the C-STORE data set now arriving, if any."""
        pending = self.assembler.pending
        if pending is None or self.association.close_transport:
            return None
        if self.incoming is None:
            self._start_incoming(pending.context_id)
        assert self.incoming is not None
        return self.incoming.file

    async def _flush(self) -> None:
        data = self.association.data_to_send()
        if data:
            await self.stream.send(data)

    async def _indication(self, indication: Indication) -> None:
        if isinstance(indication, AssociationRequested):
            self.rq = indication.rq
            answer = self.scp.answer(indication.rq)
            if isinstance(answer, AssociateRj):
                reason = _REJECT_REASONS.get(answer.reason, f"reason {answer.reason}")
                log.warning(
                    "refused association from %r at %s to %r: %s",
                    indication.rq.calling_ae_title,
                    self.peer,
                    indication.rq.called_ae_title,
                    reason,
                )
                self.association.reject(answer)
                await self._flush()  # the rejection goes out before anything is audited
                await self.scp.refused(
                    Refusal(
                        what="association",
                        peer=self.peer,
                        reason=reason,
                        calling_ae_title=indication.rq.calling_ae_title,
                        called_ae_title=indication.rq.called_ae_title,
                    )
                )
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

    def _fragment(self, context_id: int, data: bytes) -> None:
        """A data-set fragment the decoder did not write to the file itself."""
        if self.incoming is None:
            self._start_incoming(context_id)
        assert self.incoming is not None
        if data:
            self.incoming.write(data)

    def _start_incoming(self, context_id: int) -> None:
        pending = self.assembler.pending
        assert pending is not None
        assert isinstance(pending.command, CStoreRq)
        assert self.rq is not None
        self.incoming = Incoming(
            self.scp.spares, pending.command, self.contexts[context_id], self.rq.calling_ae_title
        )
        if self.background is not None and self.scp.spares.low:
            self.background.start_soon(self.scp.spares.refill)

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
            # Inline: what is left to write and the header scan take less
            # than a hand-over to a thread would.
            status, comment, outcome = self._check(incoming)
            if isinstance(outcome, StoredInstance):
                status, comment = await self._commit(incoming, outcome)
            elif outcome is not None:
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

    async def _commit(self, incoming: Incoming, instance: StoredInstance) -> tuple[int, str | None]:
        commits = self.scp.committer
        ticket = commits.add(incoming.path, instance.path, instance.digest)
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

    def _check(self, incoming: Incoming) -> tuple[int, str | None, StoredInstance | Refusal | None]:
        """Close and check the instance: the one to keep, or the status that
        refuses it (with the Refusal to report when it went to quarantine)."""
        command = incoming.command
        try:
            digest = incoming.finish()
        except OSError as e:
            incoming.discard()
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            return Status.OUT_OF_RESOURCES, "out of storage" if full else str(e)[:64], None
        try:
            info = scan_file(incoming.path)  # the header only: the digest is already made
        except DicomParseError as e:
            return self._quarantine(
                incoming, Status.CANNOT_UNDERSTAND, str(e)[:64], f"malformed dataset: {e}"
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
            return self._quarantine(incoming, Status.CANNOT_UNDERSTAND, comment, comment)
        if info.sop_instance_uid != command.sop_instance_uid or not _SAFE_UID.match(
            command.sop_instance_uid
        ):
            return self._quarantine(
                incoming,
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOP Instance UID mismatch",
                "SOP Instance UID differs from the command's",
            )
        if not info.study_instance_uid:  # type 1 in every composite IOD; routing needs it
            return self._quarantine(
                incoming,
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "no Study Instance UID",
                "no Study Instance UID",
            )
        if info.sop_class_uid not in (None, command.sop_class_uid):
            return self._quarantine(
                incoming,
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOP Class UID mismatch",
                "SOP Class UID differs from the command's",
            )
        assert self.rq is not None
        kept = StoredInstance(
            path=self.scp.output_dir / f"{command.sop_instance_uid}.dcm",
            info=info,
            digest=digest,
            calling_ae_title=self.rq.calling_ae_title,
            called_ae_title=self.rq.called_ae_title,
        )
        return Status.SUCCESS, None, kept

    def _quarantine(
        self, incoming: Incoming, status: int, comment: str, reason: str
    ) -> tuple[int, str, Refusal]:
        """Move the instance to quarantine with its reason: ``status`` and
        ``comment`` answer the C-STORE, and the Refusal is to report."""
        path = incoming.path
        target = self.scp.quarantine_dir / path.name.lstrip(".")
        try:
            os.replace(path, target)
            target.with_suffix(".reason").write_text(reason + "\n")
        except OSError:
            log.exception("cannot quarantine %s", path)
        log.warning("quarantined %s: %s", target, reason)
        assert self.rq is not None
        return (
            status,
            comment,
            Refusal(
                what="dataset",
                peer=self.peer,
                reason=f"{reason}; kept as {path.name}",
                calling_ae_title=self.rq.calling_ae_title,
                called_ae_title=self.rq.called_ae_title,
                sop_instance_uid=incoming.command.sop_instance_uid,
            ),
        )
