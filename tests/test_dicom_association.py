"""Two sans-IO associations joined in memory: the Upper Layer's whole life
(request, accept, data, release), rejection, abort, garbage and timers."""

from __future__ import annotations

from dicomrelay._native import (
    AssociateAc,
    AssociateRj,
    AssociateRq,
    PresentationContextAc,
    PresentationContextRq,
    UserInformation,
    fragment_pdata,
)
from dicomrelay.dicom.association import (
    Aborted,
    Association,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    DataReceived,
    Indication,
    Released,
    ReleaseRequested,
)
from dicomrelay.dicom.fsm import State

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


def state(association: Association) -> State:
    """Read afresh: mypy would carry a narrowed attribute across method calls."""
    return association.state


def rq(**overrides: object) -> AssociateRq:
    fields: dict[str, object] = {
        "called_ae_title": "STORESCP",
        "calling_ae_title": "ECHOSCU",
        "presentation_contexts": [
            PresentationContextRq(
                context_id=1, abstract_syntax=VERIFICATION, transfer_syntaxes=[IMPLICIT_LE]
            )
        ],
        "user_information": UserInformation(max_length=16384, implementation_class_uid="1.2.3"),
    }
    fields.update(overrides)
    return AssociateRq(**fields)  # type: ignore[arg-type]


def ac() -> AssociateAc:
    return AssociateAc(
        called_ae_title="STORESCP",
        calling_ae_title="ECHOSCU",
        presentation_contexts=[
            PresentationContextAc(context_id=1, result=0, transfer_syntax=IMPLICIT_LE)
        ],
        user_information=UserInformation(max_length=16384, implementation_class_uid="1.2.3"),
    )


def connect() -> tuple[Association, Association]:
    scu = Association(requestor=True, max_pdu_length=16384)
    scp = Association(requestor=False, max_pdu_length=16384)
    scu.request(rq())
    assert state(scu) is State.STA4
    scu.connected()
    scp.incoming_connection()
    assert scp.artim_running
    [requested] = scp.receive(scu.data_to_send())
    assert isinstance(requested, AssociationRequested)
    assert requested.rq.calling_ae_title == "ECHOSCU"
    assert not scp.artim_running
    scp.accept(ac())
    [accepted] = scu.receive(scp.data_to_send())
    assert isinstance(accepted, AssociationAccepted)
    assert scu.established
    assert scp.established
    return scu, scp


def deliver(src: Association, dst: Association) -> list[Indication]:
    return dst.receive(src.data_to_send())


def test_data_both_ways_then_release() -> None:
    scu, scp = connect()
    scu.send_pdata(fragment_pdata(1, True, b"\x01" * 40_000, 16384))
    got = deliver(scu, scp)
    assert all(isinstance(i, DataReceived) for i in got)
    assert len(got) == 3  # 40,000 bytes at 16,384 per PDU
    scu.release()
    [asked] = deliver(scu, scp)
    assert isinstance(asked, ReleaseRequested)
    scp.send_pdata(fragment_pdata(1, True, b"late", 16384))  # AR-7: allowed in Sta8
    scp.release_response()
    assert state(scp) is State.STA13
    assert scp.artim_running
    got = deliver(scp, scu)
    assert isinstance(got[0], DataReceived)  # AR-6
    assert isinstance(got[1], Released)
    assert scu.close_transport
    assert state(scu) is State.STA1
    scp.transport_closed()
    assert state(scp) is State.STA1
    assert not scp.artim_running


def test_rejection() -> None:
    scu = Association(requestor=True, max_pdu_length=16384)
    scp = Association(requestor=False, max_pdu_length=16384)
    scu.request(rq())
    scu.connected()
    scp.incoming_connection()
    deliver(scu, scp)
    scp.reject(AssociateRj(result=1, source=1, reason=3))  # calling AE title not recognized
    assert state(scp) is State.STA13
    [rejected] = deliver(scp, scu)
    assert isinstance(rejected, AssociationRejected)
    assert rejected.rj.reason == 3
    assert scu.close_transport


def test_unknown_application_context_is_rejected_by_the_provider() -> None:
    scp = Association(requestor=False, max_pdu_length=16384)
    scp.incoming_connection()
    assert scp.receive(rq(application_context="1.2.3.4").encode()) == []
    assert state(scp) is State.STA13
    assert scp.artim_running
    assert scp.data_to_send()[:1] == b"\x03"  # A-ASSOCIATE-RJ


def test_peer_abort() -> None:
    scu, scp = connect()
    scu.abort()
    assert state(scu) is State.STA13
    [aborted] = deliver(scu, scp)
    assert isinstance(aborted, Aborted)
    assert aborted.by_peer
    assert scp.close_transport


def test_garbage_is_answered_with_a_provider_abort() -> None:
    _, scp = connect()
    [aborted] = scp.receive(b"\x09\x00\x00\x00\x00\x04abcd")
    assert isinstance(aborted, Aborted)
    assert not aborted.by_peer
    assert state(scp) is State.STA13
    assert scp.data_to_send()[:1] == b"\x07"  # A-ABORT


def test_an_unexpected_pdu_aborts() -> None:
    scu, _ = connect()
    [aborted] = scu.receive(rq().encode())  # an A-ASSOCIATE-RQ mid-association
    assert isinstance(aborted, Aborted)
    assert state(scu) is State.STA13


def test_artim_expiry_closes_an_idle_connection() -> None:
    scp = Association(requestor=False, max_pdu_length=16384)
    scp.incoming_connection()
    scp.artim_expired()
    assert state(scp) is State.STA1
    assert scp.close_transport


def test_transport_loss_mid_association() -> None:
    scu, _ = connect()
    [aborted] = scu.transport_closed()
    assert isinstance(aborted, Aborted)
    assert state(scu) is State.STA1
