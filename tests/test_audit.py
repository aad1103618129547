"""The audit trail: queried by patient, study, organisation and time on both
ledger backends; exported as DICOM audit messages over real syslog sockets."""

from __future__ import annotations

import socket
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from dicomrelay.audit import (
    AuditExportError,
    AuditQuery,
    AuditRecord,
    Outcome,
    atna_message,
    outcome_of,
    send_syslog,
    syslog_line,
)
from dicomrelay.ledger import Ledger
from test_ledger import TID, Backend, backend, instances, received, transfer  # noqa: F401

pytestmark = pytest.mark.anyio


async def trail(ledger: Ledger, **conditions: object) -> list[tuple[str, str]]:
    rows = await ledger.audit_trail(AuditQuery(**conditions))  # type: ignore[arg-type]
    return [(r.action, r.detail) for r in rows]


async def test_the_trail_is_found_by_patient_study_organisation_and_time(
    backend: Backend,  # noqa: F811
) -> None:
    ledger = await backend.open()
    # Sending study 1.2.3 (patient P1) to RX2: the policy row names the patient;
    # the transfer's own rows name only the transfer.
    await ledger.add_outgoing(transfer(), instances())
    await ledger.audit("RX1", "policy-allowed", None, "allowed", study_uid="1.2.3", patient_id="P1")
    await ledger.audit("RX2", "sent", TID, "3 instances")
    # Receiving study 4.5.6 from RX3 (patient P2), then a refused peer.
    other = "e" * 32
    await ledger.note_incoming("RX3", other, "4.5.6", 1, "sha256")
    await ledger.record_received("RX3", other, received([("u9", f"{9:064x}")]))
    await ledger.commit_incoming("RX3", other, "4.5.6", b"r", 2.0)
    await ledger.audit("RX3", "received", other, "1 instance", patient_id="P2")
    cut = time.time()
    await ledger.audit("EVIL", "refused", None, "not a peer", remote="192.0.2.7:4242")

    assert await trail(ledger, patient_id="P1") == [
        ("policy-allowed", "allowed"),
        ("sent", "3 instances"),
    ]
    assert await trail(ledger, study_uid="4.5.6") == [("received", "1 instance")]
    assert await trail(ledger, patient_id="P2") == [("received", "1 instance")]
    assert await trail(ledger, org="RX2") == [("sent", "3 instances")]
    assert await trail(ledger, since=cut) == [("refused", "not a peer")]
    assert len(await trail(ledger, until=cut)) == 3
    assert await trail(ledger, patient_id="P1", org="RX3") == []
    assert len(await trail(ledger, limit=2)) == 2

    rows = await ledger.audit_trail(AuditQuery())
    by_action = {r.action: r for r in rows}
    # A transfer's row knows its study through the transfer.
    assert by_action["sent"].study_uid == "1.2.3"
    assert by_action["received"].study_uid == "4.5.6"
    assert by_action["refused"].outcome is Outcome.MINOR_FAILURE
    assert by_action["refused"].remote == "192.0.2.7:4242"
    assert by_action["sent"].outcome is Outcome.SUCCESS
    await ledger.close()


def test_outcomes_follow_the_action_unless_given() -> None:
    assert outcome_of("dead-letter") is Outcome.SERIOUS_FAILURE
    assert outcome_of("dicom-association-refused") is Outcome.MINOR_FAILURE
    assert outcome_of("tls-refused") is Outcome.MINOR_FAILURE
    assert outcome_of("delivered") is Outcome.SUCCESS


RECORD = AuditRecord(
    id=7,
    at=1_800_000_000.25,
    org="RX2",
    action="sent",
    transfer_id=TID,
    detail="3 instances of 1.2.3 to RX2 <&>",
    study_uid="1.2.3",
    patient_id="P1",
    remote="[2001:db8::1]:7700",
    outcome=Outcome.SUCCESS,
)


def test_an_audit_message_carries_event_participants_and_objects() -> None:
    root = ET.fromstring(atna_message(RECORD, source="RX1"))
    assert root.tag == "AuditMessage"
    event = root.find("EventIdentification")
    assert event is not None
    assert event.attrib == {
        "EventActionCode": "R",
        "EventDateTime": "2027-01-15T08:00:00.250Z",
        "EventOutcomeIndicator": "0",
    }
    event_id = event.find("EventID")
    assert event_id is not None
    assert (event_id.get("csd-code"), event_id.get("codeSystemName")) == ("110104", "DCM")
    assert event.findtext("EventOutcomeDescription") == RECORD.detail
    users = {p.get("UserID"): p.attrib for p in root.findall("ActiveParticipant")}
    assert users["RX2"]["NetworkAccessPointID"] == "2001:db8::1"
    assert users["RX2"]["NetworkAccessPointTypeCode"] == "2"
    assert users["RX1"]["UserIsRequestor"] == "false"
    source = root.find("AuditSourceIdentification")
    assert source is not None
    assert source.get("AuditSourceID") == "RX1"
    objects = {
        o.get("ParticipantObjectTypeCode"): o.get("ParticipantObjectID")
        for o in root.findall("ParticipantObjectIdentification")
    }
    assert objects == {"2": "1.2.3", "1": "P1"}


def test_security_events_name_node_authentication() -> None:
    refused = AuditRecord(
        id=1,
        at=0.0,
        org="EVIL",
        action="tls-refused",
        transfer_id=None,
        detail="bad certificate",
        study_uid=None,
        patient_id=None,
        remote="host.example:1",
        outcome=Outcome.MINOR_FAILURE,
    )
    root = ET.fromstring(atna_message(refused, source="RX1"))
    assert root.find("EventIdentification/EventID").get("csd-code") == "110113"  # type: ignore[union-attr]
    assert root.find("EventIdentification/EventTypeCode").get("csd-code") == "110126"  # type: ignore[union-attr]
    assert root.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]
    [caller] = [p for p in root.findall("ActiveParticipant") if p.get("UserID") == "EVIL"]
    assert caller.get("NetworkAccessPointTypeCode") == "1"  # a machine name
    assert root.findall("ParticipantObjectIdentification") == []


def test_a_syslog_line_is_rfc_5424() -> None:
    line = syslog_line("<AuditMessage/>", at=RECORD.at, hostname="node one")
    header, _, body = line.partition(b" - \xef\xbb\xbf")
    assert header == b"<85>1 2027-01-15T08:00:00.250Z nodeone dicomrelay - IHE+RFC-3881"
    assert body == b"<AuditMessage/>"


def test_messages_reach_a_udp_collector() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(5)
        port = collector.getsockname()[1]
        lines = [syslog_line(f"<m{n}/>", at=0.0, hostname="h") for n in range(3)]
        assert send_syslog(lines, f"udp://127.0.0.1:{port}") == 3
        assert [collector.recv(65536) for _ in range(3)] == lines


def test_messages_reach_a_tcp_collector_octet_counted() -> None:
    got = bytearray()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def collect() -> None:
            conn, _ = server.accept()
            with conn:
                while chunk := conn.recv(65536):
                    got.extend(chunk)

        reader = threading.Thread(target=collect)
        reader.start()
        lines = [syslog_line("<AuditMessage>é</AuditMessage>", at=0.0, hostname="h")] * 2
        assert send_syslog(lines, f"tcp://127.0.0.1:{port}") == 2
        reader.join(5)
    frames = []
    rest = bytes(got)
    while rest:
        length, _, rest = rest.partition(b" ")
        frames.append(rest[: int(length)])
        rest = rest[int(length) :]
    assert frames == lines


def test_an_unreachable_or_malformed_collector_is_one_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
    with pytest.raises(AuditExportError, match=rf"syslog at 127.0.0.1:{port}: .*\(0 sent\)"):
        send_syslog([b"x"], f"tcp://127.0.0.1:{port}", timeout=2)
    with pytest.raises(AuditExportError, match="udp://, tcp:// or tls://HOST:PORT"):
        send_syslog([b"x"], "http://collector:514")
