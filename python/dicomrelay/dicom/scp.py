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

import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.streams.tls import TLSStream

from dicomrelay import sockets
from dicomrelay._native import (
    AssociateAc,
    AssociateRj,
    AssociateRq,
    PresentationContextAc,
    SparePool,
    UserInformation,
)
from dicomrelay.config import DigestName
from dicomrelay.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from dicomrelay.dicom.scp_records import Refusal, StoredInstance
from dicomrelay.dicom.scp_session import MAX_PDU, Session
from dicomrelay.dicom.socket_stream import DrainingTLSStream, SocketByteStream
from dicomrelay.groupcommit import Commits, GroupCommit

__all__ = ["Refusal", "StoreScp", "StoredInstance"]

log = logging.getLogger("dicomrelay.scp")

TLS_HANDSHAKE_SECONDS = 30.0


@dataclass(frozen=True, kw_only=True)
class StoreScp:
    """``allowed_calling``: calling AE titles accepted (None: any). Any called
    AE title is accepted, as by DCMTK's storescp, unless
    ``require_called_ae_title`` (then only ``ae_title``). Received instances
    go to ``output_dir``; refused ones to ``quarantine_dir`` (see ``reason_files``). With ``tls``
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
    # A refused dataset stays in quarantine_dir under its own name with a
    # ``.reason`` file beside it, as DCMTK's storescp keeps things; a node
    # turns this off and records each as a hold in its ledger instead (the
    # file named by the hold id, found through ``Refusal.kept``).
    reason_files: bool = True
    digest: DigestName | None = "sha256"
    sync_each_instance: bool = False
    tls: ssl.SSLContext | None = None
    idle_seconds: float = 300.0  # an association silent this long is aborted
    # Where received files are made durable: by default one file per instance
    # in output_dir (a GroupCommit); a node gives its instance store's.
    commits: Commits | None = None
    # A dataset up to this many bytes is held in memory and handed to the
    # commits as bytes, with no temporary file (0: a file each, which
    # ``GroupCommit`` renames into place). A node's store takes bytes.
    in_memory: int = 0
    # Temporary files the data plane writes datasets into, made ahead of need.
    spares: SparePool = field(init=False)

    def __post_init__(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        object.__setattr__(self, "spares", SparePool(self.output_dir / ".incoming"))
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
            listener = await sockets.Listener.bind(host, port)
        except BaseException:
            self.close()
            raise
        if ready is not None:
            ready(listener.port)
        await self.serve_on(listener)

    async def serve_on(self, listener: sockets.Listener) -> None:
        """Serve on ``listener`` until cancelled; then close it and the SCP."""
        try:
            await listener.serve(self.handle)
        finally:
            self.close()  # every association has ended: nothing flushes any more

    def close(self) -> None:
        """Close the output folder's descriptor and the spare files; again: nothing."""
        self.committer.close()
        self.spares.close()

    async def handle(self, sock: socket.socket) -> None:
        """One association on ``sock`` (non-blocking, TCP_NODELAY); never
        raises. Without TLS its data plane reads the socket itself."""
        stream = SocketByteStream(sock)
        try:
            peer = _address(sock)
            if self.tls is None:
                await Session(self, stream, peer, sock=sock).run()
                return
            secured = await self._handshake(stream, self.tls, peer)
            if secured is not None:
                try:
                    await Session(self, secured, peer).run()
                finally:
                    await secured.aclose()
        except Exception:
            log.exception("association failed")
        finally:
            await stream.aclose()

    async def _handshake(
        self, stream: SocketByteStream, tls: ssl.SSLContext, peer: str
    ) -> TLSStream | None:
        """The stream secured, or None (logged and reported) if the handshake
        failed. (The peer then sees the connection close: anyio drops the
        alert, such as unknown_ca, that OpenSSL had ready for it.)"""
        try:
            with anyio.fail_after(TLS_HANDSHAKE_SECONDS):
                return await DrainingTLSStream.wrap(
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


def _address(sock: socket.socket) -> str:
    """``host:port`` of the caller, for logs and audits."""
    try:
        address = sock.getpeername()
    except OSError:
        return "?"
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError):
        return getattr(e, "verify_message", None) or e.reason or str(e)
    if isinstance(e, TimeoutError):
        return f"no handshake within {TLS_HANDSHAKE_SECONDS:.0f} s"
    return str(e) or type(e).__name__
