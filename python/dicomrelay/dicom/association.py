"""One association's Upper Layer, sans-IO (PS3.8 section 9).

Local primitives (``request``, ``accept``, ``send_pdata``, ``release`` ...) and
transport events (``receive``, ``transport_closed``, ``artim_expired``) go in;
indications come back, bytes to send wait in ``data_to_send()``, and the flags
``artim_running`` and ``close_transport`` say what the I/O layer must do. Every
step is a transition of the table in ``fsm``; nothing here touches a socket.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomrelay._native import (
    Abort,
    AssociateAc,
    AssociateRj,
    AssociateRq,
    PData,
    PduDecoder,
    ReleaseRp,
    ReleaseRq,
)
from dicomrelay.dicom.fsm import Event, State, action_for, next_state
from dicomrelay.errors import PduError

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


@dataclass(frozen=True, slots=True)
class AssociationRequested:
    """Acceptor: a peer asks for an association; answer with accept() or reject()."""

    rq: AssociateRq


@dataclass(frozen=True, slots=True)
class AssociationAccepted:
    ac: AssociateAc


@dataclass(frozen=True, slots=True)
class AssociationRejected:
    rj: AssociateRj


@dataclass(frozen=True, slots=True)
class DataReceived:
    pdata: PData


@dataclass(frozen=True, slots=True)
class ReleaseRequested:
    """The peer asks to release; answer with release_response()."""


@dataclass(frozen=True, slots=True)
class Released:
    """The release completed: the association is over."""


@dataclass(frozen=True, slots=True)
class Aborted:
    """A-ABORT (from the peer, ``by_peer``) or A-P-ABORT (by either provider)."""

    source: int
    reason: int
    by_peer: bool


Indication = (
    AssociationRequested
    | AssociationAccepted
    | AssociationRejected
    | DataReceived
    | ReleaseRequested
    | Released
    | Aborted
)

_Sent = AssociateRq | AssociateAc | AssociateRj | ReleaseRq | ReleaseRp | Abort
_Received = _Sent | PData

_PDU_EVENTS: dict[type, Event] = {
    AssociateAc: Event.EVT3,
    AssociateRj: Event.EVT4,
    AssociateRq: Event.EVT6,
    PData: Event.EVT10,
    ReleaseRq: Event.EVT12,
    ReleaseRp: Event.EVT13,
    Abort: Event.EVT16,
}


class Association:
    def __init__(self, *, requestor: bool, max_pdu_length: int) -> None:
        """``max_pdu_length``: the largest P-DATA-TF this side accepts."""
        self.requestor = requestor
        self.state = State.STA1
        self.artim_running = False
        self.close_transport = False
        self._decoder = PduDecoder(max_pdu_length)
        self._out: list[bytes] = []  # PDUs to send, joined only when there are several
        self._rq: AssociateRq | None = None
        self._reply: AssociateAc | AssociateRj | None = None
        self._pdata: bytes = b""
        self._pdu: _Received | None = None  # the PDU being handled
        self._abort_reason = 2  # of an invalid PDU: "unexpected PDU" unless the decoder says
        self._indications: list[Indication] = []

    # Local primitives and transport events.
    def request(self, rq: AssociateRq) -> None:
        """Requestor: ask for an association (the I/O layer then connects)."""
        self._rq = rq
        self._step(Event.EVT1)

    def connected(self) -> None:
        """Requestor: the transport connection is open."""
        self._step(Event.EVT2)

    def incoming_connection(self) -> None:
        """Acceptor: a transport connection arrived."""
        self._step(Event.EVT5)

    def accept(self, ac: AssociateAc) -> None:
        self._reply = ac
        self._step(Event.EVT7)

    def reject(self, rj: AssociateRj) -> None:
        self._reply = rj
        self._step(Event.EVT8)

    def send_pdata(self, encoded: bytes) -> None:
        """Queue P-DATA-TF PDUs, already encoded (by ``fragment_pdata``)."""
        self._pdata = encoded
        self._step(Event.EVT9)

    def release(self) -> None:
        self._step(Event.EVT11)

    def release_response(self) -> None:
        self._step(Event.EVT14)

    def abort(self) -> None:
        self._step(Event.EVT15)

    def receive(self, data: bytes) -> list[Indication]:
        """Bytes from the peer: every whole PDU they complete, as indications."""
        try:
            pdus = self._decoder.feed(data)
        except PduError as e:
            self._abort_reason = e.abort_reason
            self._step(Event.EVT19)
            return self._take()
        for pdu in pdus:
            self._pdu = pdu
            self._step(_PDU_EVENTS[type(pdu)])
            if self.close_transport:
                break
        return self._take()

    def protocol_error(self, abort_reason: int) -> list[Indication]:
        """Bytes that are not PDUs, found by a decoder outside this machine
        (the storage SCP's data plane): A-ABORT with ``abort_reason``."""
        self._abort_reason = abort_reason
        self._step(Event.EVT19)
        return self._take()

    def transport_closed(self) -> list[Indication]:
        self._step(Event.EVT17)
        return self._take()

    def artim_expired(self) -> list[Indication]:
        self._step(Event.EVT18)
        return self._take()

    def data_to_send(self) -> bytes:
        out, self._out = self._out, []
        if len(out) == 1:
            return out[0]  # a dataset's P-DATA is already one buffer: no copy
        return b"".join(out)

    @property
    def established(self) -> bool:
        return self.state is State.STA6

    # The machine.
    def _take(self) -> list[Indication]:
        out, self._indications = self._indications, []
        return out

    def _step(self, event: Event) -> None:
        """Perform the action Table 9-10 names; its method says (for AE-6) whether
        the request was acceptable, which picks the next state."""
        action = action_for(self.state, event)
        acceptable = getattr(self, f"_{action.name.lower()}")()
        self.state = next_state(action, acceptable=acceptable, requestor=self.requestor)

    def _send(
        self, pdu: AssociateRq | AssociateAc | AssociateRj | ReleaseRq | ReleaseRp | Abort
    ) -> None:
        self._out.append(pdu.encode())

    def _indicate(self, indication: Indication) -> None:
        self._indications.append(indication)

    def _close(self) -> None:
        self.artim_running = False
        self.close_transport = True

    def _ae1(self) -> bool:  # the I/O layer opens the transport connection
        return True

    def _ae2(self) -> bool:
        assert self._rq is not None
        self._send(self._rq)
        return True

    def _ae3(self) -> bool:
        assert isinstance(self._pdu, AssociateAc)
        self._indicate(AssociationAccepted(self._pdu))
        return True

    def _ae4(self) -> bool:
        assert isinstance(self._pdu, AssociateRj)
        self._indicate(AssociationRejected(self._pdu))
        self._close()
        return True

    def _ae5(self) -> bool:
        self.artim_running = True
        return True

    def _ae6(self) -> bool:
        """Stop ARTIM; the provider accepts requests it can serve at all."""
        self.artim_running = False
        rq = self._pdu
        assert isinstance(rq, AssociateRq)
        if not rq.protocol_version & 1:
            self._send(AssociateRj(result=1, source=2, reason=2))  # protocol version
        elif rq.application_context != APPLICATION_CONTEXT:
            self._send(AssociateRj(result=1, source=1, reason=2))  # application context
        else:
            self._indicate(AssociationRequested(rq))
            return True
        self.artim_running = True
        return False

    def _ae7(self) -> bool:
        assert isinstance(self._reply, AssociateAc)
        self._send(self._reply)
        return True

    def _ae8(self) -> bool:
        assert isinstance(self._reply, AssociateRj)
        self._send(self._reply)
        self.artim_running = True
        return True

    def _dt1(self) -> bool:
        self._out.append(self._pdata)
        return True

    def _dt2(self) -> bool:
        assert isinstance(self._pdu, PData)
        self._indicate(DataReceived(self._pdu))
        return True

    _ar7 = _dt1
    _ar6 = _dt2

    def _ar1(self) -> bool:
        self._send(ReleaseRq())
        return True

    def _ar2(self) -> bool:
        self._indicate(ReleaseRequested())
        return True

    def _ar3(self) -> bool:
        self._indicate(Released())
        self._close()
        return True

    def _ar4(self) -> bool:
        self._send(ReleaseRp())
        self.artim_running = True
        return True

    def _ar5(self) -> bool:
        self.artim_running = False
        return True

    def _ar8(self) -> bool:
        self._indicate(ReleaseRequested())
        return True

    def _ar9(self) -> bool:
        self._send(ReleaseRp())
        return True

    def _ar10(self) -> bool:
        self._indicate(Released())
        return True

    def _aa1(self) -> bool:
        self._send(Abort(source=0, reason=0))
        self.artim_running = True
        return True

    def _aa2(self) -> bool:
        self._close()
        return True

    def _aa3(self) -> bool:
        assert isinstance(self._pdu, Abort)
        by_user = self._pdu.source == 0
        self._indicate(Aborted(source=self._pdu.source, reason=self._pdu.reason, by_peer=by_user))
        self._close()
        return True

    def _aa4(self) -> bool:
        self._indicate(Aborted(source=2, reason=0, by_peer=False))
        self.artim_running = False
        return True

    def _aa5(self) -> bool:
        self.artim_running = False
        return True

    def _aa6(self) -> bool:  # ignore the PDU
        return True

    def _aa7(self) -> bool:
        self._send(Abort(source=2, reason=2))
        return True

    def _aa8(self) -> bool:
        reason = self._abort_reason
        self._send(Abort(source=2, reason=reason))
        self._indicate(Aborted(source=2, reason=reason, by_peer=False))
        self.artim_running = True
        return True
