"""The audit trail read back: records, queries, and their export as DICOM
audit messages (PS3.15 A.5, the ATNA format) framed for syslog (RFC 5424).

A node writes one row per event (``Ledger.audit``): who (an organisation
code, or a caller), what (the action), which study and patient where known,
from where, when, and how it ended. ``dicomrelay audit`` reads them by
patient, study, organisation and time, and exports them.
"""

from __future__ import annotations

import datetime
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple
from xml.sax.saxutils import escape, quoteattr

from dicomrelay.errors import DicomrelayError


class Outcome(IntEnum):
    """EventOutcomeIndicator (PS3.15 A.5.3)."""

    SUCCESS = 0
    MINOR_FAILURE = 4  # refused, to be retried, or an operator's matter
    SERIOUS_FAILURE = 8  # given up: a dead letter


_FAILED = ("dead-letter", "delivery-dead", "route-failed")


def outcome_of(action: str) -> Outcome:
    """The outcome an action's name implies (rows written before outcomes were kept)."""
    if action in _FAILED:
        return Outcome.SERIOUS_FAILURE
    if action.endswith("-refused") or action in ("refused", "unrouted", "reconcile-held"):
        return Outcome.MINOR_FAILURE
    return Outcome.SUCCESS


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditRecord:
    id: int
    at: float  # seconds since the epoch
    org: str  # the organisation (or caller) the event is about
    action: str
    transfer_id: str | None
    detail: str
    study_uid: str | None
    patient_id: str | None
    remote: str | None  # from where: an address, or None
    outcome: Outcome

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "at": _iso(self.at),
            "org": self.org,
            "action": self.action,
            "transfer_id": self.transfer_id,
            "study_uid": self.study_uid,
            "patient_id": self.patient_id,
            "remote": self.remote,
            "outcome": self.outcome.name.lower(),
            "detail": self.detail,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditQuery:
    """Each condition optional; a study matches rows that name it and rows of
    the transfers that carried it; a patient, rows of the studies any row
    names the patient with."""

    patient_id: str | None = None
    study_uid: str | None = None
    org: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 1000


class AuditExportError(DicomrelayError, OSError):
    """The audit messages could not be delivered to the syslog collector."""


# PS3.15 A.5 / PS3.16 CID 400-403: what each action is, as an audit event.
class _Event(NamedTuple):
    code: str
    meaning: str
    action_code: str  # C create, R read, U update, D delete, E execute
    type_code: tuple[str, str] | None = None


_TRANSFERRED = ("110104", "DICOM Instances Transferred")
_SECURITY = ("110113", "Security Alert")
_NODE_AUTHENTICATION = ("110126", "Node Authentication")
_PATIENT_RECORD = ("110110", "Patient Record")
EVENTS: dict[str, _Event] = {
    "sent": _Event(*_TRANSFERRED, "R"),
    "received": _Event(*_TRANSFERRED, "C"),
    "delivered": _Event(*_TRANSFERRED, "R"),
    "delivery-dead": _Event(*_TRANSFERRED, "R"),
    "dead-letter": _Event(*_TRANSFERRED, "R"),
    "routed": _Event("110107", "Import", "C"),
    "unrouted": _Event("110107", "Import", "C"),
    "route-failed": _Event("110107", "Import", "C"),
    "policy-allowed": _Event("110106", "Export", "R"),
    "policy-refused": _Event("110106", "Export", "R"),
    "requeued": _Event("110100", "Application Activity", "E"),
    "deidentified": _Event("110106", "Export", "R"),
    "quarantined": _Event("110103", "DICOM Instances Accessed", "C"),
    "quarantine-released": _Event("110106", "Export", "R"),
    "quarantine-deleted": _Event("110103", "DICOM Instances Accessed", "D"),
    "refused": _Event(*_SECURITY, "E", _NODE_AUTHENTICATION),
    "tls-refused": _Event(*_SECURITY, "E", _NODE_AUTHENTICATION),
    "dicom-tls-refused": _Event(*_SECURITY, "E", _NODE_AUTHENTICATION),
    "dicom-association-refused": _Event(*_SECURITY, "E", _NODE_AUTHENTICATION),
    "dicom-dataset-refused": _Event(*_TRANSFERRED, "C"),
    # Patient-ID reconciliation: the study's patient record coerced, held, resolved.
    "reconciled": _Event(*_PATIENT_RECORD, "U"),
    "reconcile-held": _Event(*_PATIENT_RECORD, "R"),
    "reconcile-resolved": _Event(*_PATIENT_RECORD, "U"),
}
_OTHER = _Event("110100", "Application Activity", "E")


def atna_message(record: AuditRecord, *, source: str) -> str:
    """One DICOM audit message (XML) for ``record``, from audit source ``source``."""
    event = EVENTS.get(record.action, _OTHER)
    a = quoteattr
    type_code = ""
    if event.type_code is not None:
        code, meaning = event.type_code
        type_code = f"<EventTypeCode {_code(code, 'DCM', meaning)}/>"
    parts = [
        "<AuditMessage>",
        f"<EventIdentification EventActionCode={a(event.action_code)}"
        f" EventDateTime={a(_iso(record.at))}"
        f" EventOutcomeIndicator={a(str(int(record.outcome)))}>",
        f"<EventID {_code(event.code, 'DCM', event.meaning)}/>",
        type_code,
        f"<EventOutcomeDescription>{escape(record.detail)}</EventOutcomeDescription>",
        "</EventIdentification>",
        # The node itself, and the organisation (or caller) the event is about.
        f'<ActiveParticipant UserID={a(source)} UserIsRequestor="false"/>',
        f"<ActiveParticipant UserID={a(record.org)}"
        f' UserIsRequestor="true"{_access_point(record)}/>',
        f"<AuditSourceIdentification AuditSourceID={a(source)}>",
        f"<AuditSourceTypeCode {_code('4', 'DCM', 'Application Server Process')}/>",
        "</AuditSourceIdentification>",
    ]
    if record.study_uid:
        parts += [
            f"<ParticipantObjectIdentification ParticipantObjectID={a(record.study_uid)}"
            ' ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3">',
            f"<ParticipantObjectIDTypeCode {_code('110180', 'DCM', 'Study Instance UID')}/>",
            "</ParticipantObjectIdentification>",
        ]
    if record.patient_id:
        parts += [
            f"<ParticipantObjectIdentification ParticipantObjectID={a(record.patient_id)}"
            ' ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">',
            f"<ParticipantObjectIDTypeCode {_code('2', 'RFC-3881', 'Patient Number')}/>",
            "</ParticipantObjectIdentification>",
        ]
    parts.append("</AuditMessage>")
    return "".join(parts)


def _code(code: str, system: str, meaning: str) -> str:
    q = quoteattr
    return f"csd-code={q(code)} codeSystemName={q(system)} originalText={q(meaning)}"


def _access_point(record: AuditRecord) -> str:
    if not record.remote:
        return ""
    host = record.remote.rsplit(":", 1)[0].strip("[]")
    kind = "2" if _is_ip(host) else "1"  # 2: IP address, 1: machine name
    return f" NetworkAccessPointID={quoteattr(host)} NetworkAccessPointTypeCode={quoteattr(kind)}"


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    return False


def _iso(at: float) -> str:
    stamp = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# RFC 5424: facility 10 (security/authorization), severity 5 (notice); the
# MSGID IHE's ATNA profile gives audit messages; a BOM before UTF-8 content.
_PRI = 10 * 8 + 5
_MSGID = "IHE+RFC-3881"
_BOM = "\ufeff"


def syslog_line(message: str, *, at: float, hostname: str, app: str = "dicomrelay") -> bytes:
    """One RFC 5424 syslog message carrying ``message``."""
    host = "".join(c for c in hostname if 33 <= ord(c) <= 126)[:255] or "-"
    header = f"<{_PRI}>1 {_iso(at)} {host} {app} - {_MSGID} - "
    return (header + _BOM + message).encode()


def send_syslog(
    messages: Iterable[bytes],
    url: str,
    *,
    ca: str | None = None,
    timeout: float = 10.0,
) -> int:
    """Deliver syslog messages to ``udp://host:port`` (RFC 5426, one datagram
    each), ``tcp://host:port`` (RFC 6587 octet counting) or ``tls://host:port``
    (RFC 5425, verified against ``ca`` or the system's CAs); the count sent."""
    scheme, _, rest = url.partition("://")
    host, _, port_text = rest.rpartition(":")
    if scheme not in ("udp", "tcp", "tls") or not host or not port_text.isdigit():
        raise AuditExportError(f"syslog must be udp://, tcp:// or tls://HOST:PORT, not {url!r}")
    address = (host.strip("[]"), int(port_text))
    sent = 0
    try:
        if scheme == "udp":
            with socket.socket(_family(address[0]), socket.SOCK_DGRAM) as udp:
                udp.connect(address)
                for message in messages:
                    udp.send(message)
                    sent += 1
            return sent
        with socket.create_connection(address, timeout=timeout) as tcp:
            stream: socket.socket = tcp
            if scheme == "tls":
                context = ssl.create_default_context(cafile=ca)
                stream = context.wrap_socket(tcp, server_hostname=address[0])
            for message in messages:
                stream.sendall(b"%d " % len(message) + message)
                sent += 1
            if scheme == "tls":
                stream.close()
    except (OSError, ssl.SSLError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise AuditExportError(f"syslog at {host}:{port_text}: {reason} ({sent} sent)") from None
    return sent


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
