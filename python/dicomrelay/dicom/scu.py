"""The service-class user over asyncio: associate, C-ECHO, C-STORE, release.

The Upper Layer is the sans-IO ``Association``; this module only moves its
bytes, arms its ARTIM timer, and matches responses to requests by message id.
A dataset of up to ``HELD_DATASET`` bytes is read and encoded whole (the next
one while the peer stores the last); a larger one is streamed from its file in
pieces, never held whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, TypeVar

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketStream, TaskGroup
from anyio.streams.tls import TLSStream

from dicomrelay._native import (
    AssociateRj,
    AssociateRq,
    InstanceInfo,
    PresentationContextRq,
    UserInformation,
    fragment_pdata,
    scan_file,
)
from dicomrelay.dicom.association import (
    Aborted,
    Association,
    AssociationAccepted,
    AssociationRejected,
    DataReceived,
    Indication,
    Released,
    ReleaseRequested,
)
from dicomrelay.dicom.dimse import CEchoRq, CEchoRsp, Command, CStoreRq, CStoreRsp
from dicomrelay.dicom.messages import MessageAssembler
from dicomrelay.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from dicomrelay.errors import DicomrelayError, PeerUnreachable, TlsError

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
MAX_PDU = 1 << 20  # the largest P-DATA-TF this side accepts
PIECE = 1 << 20  # bytes of a dataset read from its file at a time, when streamed
DIMSE_TIMEOUT = 120.0  # seconds a peer may take to answer a request
HELD_DATASET = 8 << 20  # datasets up to this size are read whole, ahead of sending


class AssociationError(DicomrelayError, ConnectionError):
    """The peer rejected or aborted the association, or closed the connection."""


class Readable(Protocol):
    """An instance's bytes from somewhere other than a file of its own (the
    node's store): read from its first byte, seekable, closed after use."""

    def read(self, n: int = -1, /) -> bytes: ...
    def seek(self, pos: int, whence: int = 0, /) -> int: ...
    def close(self) -> None: ...


# What C-STORE sends: a file, or an opener of the bytes.
Source = str | os.PathLike[str] | Callable[[], Readable]
S = TypeVar("S", bound=Source)


def _open_source(source: Source) -> Readable:
    if callable(source):
        return source()
    return open(source, "rb")


@dataclass(kw_only=True, slots=True)
class _StoreRequest:
    path: Source
    info: InstanceInfo
    context: int
    message_id: int
    command: bytes  # P-DATA-TF PDUs
    dataset: bytes | None = None  # P-DATA-TF PDUs, or None: streamed from the file


@dataclass(frozen=True, kw_only=True, slots=True)
class Context:
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


def contexts_for(infos: Sequence[InstanceInfo]) -> list[Context]:
    """One presentation context per SOP class and transfer syntax, each proposing
    the files' own syntax (nothing is transcoded)."""
    seen = dict.fromkeys(
        (i.sop_class_uid or "", i.transfer_syntax_uid or IMPLICIT_LE) for i in infos
    )
    return [Context(abstract_syntax=a, transfer_syntaxes=(t,)) for a, t in seen]


def _tls_reason(e: ssl.SSLError) -> str:
    return getattr(e, "verify_message", None) or e.reason or str(e)


async def _open(
    host: str, port: int, tls: ssl.SSLContext | None, timeout: float
) -> SocketStream | TLSStream:
    """A connection to ``host:port`` (TLS handshake done, if ``tls``). Raises
    PeerUnreachable or TlsError, each naming the host and port."""
    try:
        with anyio.fail_after(timeout):
            if tls is None:
                return await anyio.connect_tcp(host, port)
            return await anyio.connect_tcp(
                host, port, ssl_context=tls, tls_standard_compatible=False
            )
    except ssl.SSLError as e:
        raise TlsError(f"TLS handshake with {host}:{port} failed: {_tls_reason(e)}") from e
    except (anyio.EndOfStream, anyio.BrokenResourceError):  # a handshake cut short
        raise TlsError(f"{host}:{port} closed the connection in TLS handshake") from None
    except TimeoutError:
        raise PeerUnreachable(
            f"cannot connect to {host}:{port}: no answer within {timeout:g} s"
        ) from None
    except OSError as e:
        raise PeerUnreachable(f"cannot connect to {host}:{port}: {_why(e)}") from e


def _why(e: OSError) -> str:
    """Why a connection failed, in a few words. (anyio's "All connection
    attempts failed" carries the reason in its cause.)"""
    if isinstance(e, socket.gaierror):
        return f"unknown host ({e.strerror})" if e.errno != socket.EAI_AGAIN else str(e.strerror)
    if e.errno is None and isinstance(e.__cause__, OSError):
        e = e.__cause__
    if e.errno is None and isinstance(e.__cause__, BaseExceptionGroup):
        e = next((x for x in e.__cause__.exceptions if isinstance(x, OSError)), e)
    if e.errno is not None:
        return _ERRNO_WORDS.get(e.errno, os.strerror(e.errno).lower())
    return str(e)


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused (is anything listening there?)",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
}

# PS3.8 Table 9-21: A-ASSOCIATE-RJ reasons by source.
_REJECTED = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognized",
    (1, 7): "called AE title not recognized",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}
# PS3.8 Table 9-26: A-ABORT reasons when the source is the service provider (2).
_ABORTED = {
    0: "reason not specified",
    1: "unrecognized PDU",
    2: "unexpected PDU",
    4: "unrecognized PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}


def rejection(rj: AssociateRj) -> str:
    said = _REJECTED.get((rj.source, rj.reason), "reason unknown")
    kind = "permanently" if rj.result == 1 else "transiently"
    return (
        f"association rejected {kind}: {said} (result {rj.result}, source {rj.source},"
        f" reason {rj.reason})"
    )


def abortion(source: int, reason: int) -> str:
    """An abort in words: the peer's application's (source 0, only ever from
    the peer), or an Upper Layer's (source 2: either side's, on a bad PDU)."""
    if source == 2:
        said = _ABORTED.get(reason, "reason unknown")
        return f"association aborted by the DICOM Upper Layer: {said} (source 2, reason {reason})"
    return f"the peer aborted the association (source {source}, reason {reason})"


class Client:
    """An established association; use ``async with await Client.connect(...)``."""

    def __init__(
        self,
        stream: ByteStream,
        association: Association,
        peer_max_pdu: int,
        dimse_timeout: float = DIMSE_TIMEOUT,
    ) -> None:
        self._stream = stream
        self._dimse_timeout = dimse_timeout
        self._association = association
        self._peer_max_pdu = peer_max_pdu or MAX_PDU
        self._accepted: dict[tuple[str, str], int] = {}
        self._responses: dict[int, Command] = {}
        self._response_ready = anyio.Event()
        self._closed: BaseException | None = None
        self._message_id = 0
        self._send_lock = anyio.Lock()
        self._tg: TaskGroup | None = None
        self._assembler = MessageAssembler()

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        calling_ae_title: str = "DICOMRELAY",
        called_ae_title: str = "ANY-SCP",
        contexts: Sequence[Context] = (),
        timeout: float = 30.0,
        tls: ssl.SSLContext | None = None,
        dimse_timeout: float = DIMSE_TIMEOUT,
    ) -> Client:
        """Connect and associate within ``timeout`` seconds; a response that
        takes longer than ``dimse_timeout`` aborts the association. With ``tls`` (see
        ``dicomrelay.dicom.tls.client_context``) the connection is TLS first; a
        failed handshake or a peer that refuses our certificate raises TlsError.
        No connection raises PeerUnreachable; a rejected association, or no
        answer to ours, AssociationError (each naming the host and port)."""
        proposed = [Context(abstract_syntax=VERIFICATION, transfer_syntaxes=(IMPLICIT_LE,))]
        proposed += [c for c in contexts if c not in proposed]
        rq = AssociateRq(
            called_ae_title=called_ae_title,
            calling_ae_title=calling_ae_title,
            presentation_contexts=[
                PresentationContextRq(
                    context_id=2 * n + 1,
                    abstract_syntax=c.abstract_syntax,
                    transfer_syntaxes=list(c.transfer_syntaxes),
                )
                for n, c in enumerate(proposed)
            ],
            user_information=UserInformation(
                max_length=MAX_PDU,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION,
            ),
        )
        association = Association(requestor=True, max_pdu_length=MAX_PDU)
        association.request(rq)
        deadline = anyio.current_time() + timeout
        stream = await _open(host, port, tls, timeout)
        with anyio.move_on_after(max(deadline - anyio.current_time(), 0.0)):
            try:
                return await cls._negotiate(stream, association, proposed, dimse_timeout, tls)
            except AssociationError as e:  # rejected or aborted: before OSError, its base
                await stream.aclose()
                raise AssociationError(f"{host}:{port}: {e}") from None
            except ssl.SSLError as e:  # as a TLS 1.3 server refuses our certificate
                await stream.aclose()
                raise TlsError(f"TLS with {host}:{port} failed: {_tls_reason(e)}") from e
            except (OSError, anyio.BrokenResourceError, anyio.EndOfStream):
                await stream.aclose()
                why = " (after TLS: has it refused our certificate?)" if tls else ""
                raise AssociationError(f"{host}:{port} closed the connection{why}") from None
        await stream.aclose()
        raise AssociationError(f"{host}:{port} did not answer the association within {timeout:g} s")

    @classmethod
    async def _negotiate(
        cls,
        stream: ByteStream,
        association: Association,
        proposed: list[Context],
        dimse_timeout: float,
        tls: ssl.SSLContext | None,
    ) -> Client:
        """Send the A-ASSOCIATE-RQ and wait for the answer. Raises
        AssociationError (rejected), or what the stream raises."""
        raw = stream.extra(SocketAttribute.raw_socket)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        association.connected()
        await stream.send(association.data_to_send())
        while True:
            data = await stream.receive(1 << 20)
            for indication in association.receive(data):
                if isinstance(indication, AssociationAccepted):
                    ac = indication.ac
                    max_pdu = ac.user_information.max_length or 0
                    client = cls(stream, association, max_pdu, dimse_timeout)
                    for pc in ac.presentation_contexts:
                        if pc.result == 0 and pc.transfer_syntax is not None:
                            n = (pc.context_id - 1) // 2
                            if 0 <= n < len(proposed):
                                key = (proposed[n].abstract_syntax, pc.transfer_syntax)
                                client._accepted[key] = pc.context_id
                    return client
                if isinstance(indication, AssociationRejected):
                    raise AssociationError(rejection(indication.rj))
                if isinstance(indication, Aborted):
                    raise AssociationError(abortion(indication.source, indication.reason))
                raise AssociationError(f"association failed: {indication}")

    async def __aenter__(self) -> Self:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._read)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        try:
            if exc is None and self._closed is None:
                with anyio.fail_after(30):
                    await self.release()
            elif self._closed is None:
                self._association.abort()
                await self._flush()
        finally:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            await self._stream.aclose()
        return None

    async def _read(self) -> None:
        try:
            while not self._association.close_transport:
                try:
                    data = await self._stream.receive(1 << 20)
                except (anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError) as e:
                    before = self._closed
                    self._handle(self._association.transport_closed())
                    if isinstance(e, ssl.SSLError):
                        self._closed = TlsError(f"TLS: {_tls_reason(e)}")
                    elif before is None:  # says more than the A-P-ABORT (AA-4) it caused
                        self._closed = AssociationError("the peer closed the connection")
                    break
                self._handle(self._association.receive(data))
                await self._flush()
        finally:
            if self._closed is None:
                self._closed = AssociationError("the peer closed the connection")
            self._response_ready.set()

    def _handle(self, indications: list[Indication]) -> None:
        for indication in indications:
            if isinstance(indication, DataReceived):
                for context_id, is_command, is_last, data in indication.pdata.pdvs:
                    message = self._assembler.feed(context_id, is_command, is_last, data)
                    if message is not None:
                        command = message.command
                        if isinstance(command, CEchoRsp | CStoreRsp):
                            self._responses[command.responding_to] = command
                            self._response_ready.set()
            elif isinstance(indication, Released):
                self._closed = AssociationError("released")
            elif isinstance(indication, Aborted):
                self._closed = AssociationError(abortion(indication.source, indication.reason))
            elif isinstance(indication, ReleaseRequested):
                self._association.release_response()  # a peer releasing first: agree
            self._response_ready.set()

    async def _send(self, data: bytes) -> None:
        """Send a request's PDUs; a connection that breaks raises why the
        association ended (the reader hears the peer's A-ABORT, if any, at once)."""
        try:
            await self._stream.send(data)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as e:
            with anyio.move_on_after(1):
                while self._closed is None:
                    self._response_ready = anyio.Event()
                    await self._response_ready.wait()
            raise self._closed or AssociationError(
                f"connection lost: {e or type(e).__name__}"
            ) from e

    async def _flush(self) -> None:
        data = self._association.data_to_send()
        if data:
            async with self._send_lock:
                await self._stream.send(data)

    async def _response(self, message_id: int) -> Command:
        with anyio.move_on_after(self._dimse_timeout) as waiting:
            while message_id not in self._responses:
                if self._closed is not None:
                    raise self._closed
                self._response_ready = anyio.Event()
                await self._response_ready.wait()
            return self._responses.pop(message_id)
        # A peer that stopped answering: give up on the association (PS3.8 9.1.5).
        assert waiting.cancelled_caught
        self._closed = AssociationError(f"no response within {self._dimse_timeout:g} s")
        self._association.abort()
        with (
            anyio.move_on_after(1, shield=True),
            contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError),
        ):
            await self._flush()
        raise self._closed

    def _next_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed

    async def echo(self) -> int:
        """C-ECHO; returns the response status."""
        self._check_open()
        message_id = self._next_id()
        context = self._accepted.get((VERIFICATION, IMPLICIT_LE))
        if context is None:
            raise AssociationError("the peer did not accept Verification")
        async with self._send_lock:
            self._association.send_pdata(
                fragment_pdata(
                    context, True, CEchoRq(message_id=message_id).encode(), self._peer_max_pdu
                )
            )
            await self._send(self._association.data_to_send())
        response = await self._response(message_id)
        assert isinstance(response, CEchoRsp)
        return response.status

    async def store(self, path: str | os.PathLike[str], info: InstanceInfo | None = None) -> int:
        """C-STORE of a Part 10 file, its dataset streamed from disk; returns the status."""
        self._check_open()
        if info is None:
            info = await anyio.to_thread.run_sync(scan_file, path)
        request = self._store_request(path, info)
        await self._send_store(request)
        return await self._store_status(request)

    async def store_many(
        self, files: Iterable[tuple[S, InstanceInfo]]
    ) -> AsyncIterator[tuple[S, int | AssociationError | OSError]]:
        """C-STORE each file (or opened source) in turn, yielding its status, or
        the error that kept it from being sent. One request is outstanding at a time, as
        DICOM asks of a peer that does not negotiate more; while the peer
        handles it, the next file is read and encoded, so the peer seldom
        waits for us."""
        pending = iter(files)

        def prepare() -> tuple[S, _StoreRequest | AssociationError | OSError] | None:
            for path, info in pending:
                self._check_open()
                try:
                    return path, self._store_request(path, info)
                except (AssociationError, OSError) as e:
                    return path, e
            return None

        current = prepare()
        while current is not None:
            path, request = current
            if not isinstance(request, _StoreRequest):
                yield path, request
                current = prepare()
                continue
            await self._send_store(request)
            current = prepare()  # while the peer stores this one
            yield path, await self._store_status(request)

    def _store_request(self, path: Source, info: InstanceInfo) -> _StoreRequest:
        """A C-STORE request encoded, with its dataset read and encoded too
        unless it is too large to hold (then it is streamed when sent)."""
        key = (info.sop_class_uid or "", info.transfer_syntax_uid or IMPLICIT_LE)
        context = self._accepted.get(key)
        if context is None:
            raise AssociationError(f"no accepted presentation context for {key}")
        message_id = self._next_id()
        command = CStoreRq(
            message_id=message_id,
            sop_class_uid=key[0],
            sop_instance_uid=info.sop_instance_uid or "",
        ).encode()
        request = _StoreRequest(
            path=path if callable(path) else Path(path),
            info=info,
            context=context,
            message_id=message_id,
            command=fragment_pdata(context, True, command, self._peer_max_pdu),
        )
        if info.size - info.dataset_offset <= HELD_DATASET:
            with contextlib.closing(_open_source(request.path)) as f:
                f.seek(info.dataset_offset)
                request.dataset = self._dataset_pdata(context, f.read(), last=True)
        return request

    def _dataset_pdata(self, context: int, piece: bytes, *, last: bool) -> bytes:
        if last and len(piece) % 2 == 1:
            # Fragments are even (DCMTK insists); only a deflated stream can
            # be odd, and PS3.5 A.5 pads it with one NUL.
            piece += b"\0"
        return fragment_pdata(context, False, piece, self._peer_max_pdu, last=last)

    async def _send_store(self, request: _StoreRequest) -> None:
        async with self._send_lock:
            self._association.send_pdata(request.command)
            await self._send(self._association.data_to_send())
            if request.dataset is not None:
                self._association.send_pdata(request.dataset)
                await self._send(self._association.data_to_send())
                return
            with contextlib.closing(_open_source(request.path)) as f:
                f.seek(request.info.dataset_offset)
                left = request.info.size - request.info.dataset_offset
                while True:
                    piece = f.read(min(PIECE, left))
                    left -= len(piece)
                    last = left <= 0 or not piece
                    self._association.send_pdata(
                        self._dataset_pdata(request.context, piece, last=last)
                    )
                    await self._send(self._association.data_to_send())
                    if last:
                        break

    async def _store_status(self, request: _StoreRequest) -> int:
        response = await self._response(request.message_id)
        assert isinstance(response, CStoreRsp)
        return response.status

    async def release(self) -> None:
        async with self._send_lock:
            self._association.release()
            await self._send(self._association.data_to_send())
        while self._closed is None:
            self._response_ready = anyio.Event()
            await self._response_ready.wait()
