"""The exceptions dicomrelay raises. Defined once, here; the native module raises them too."""

from __future__ import annotations

import asyncio

import anyio


class DicomrelayError(Exception):
    """Base of every error dicomrelay raises on purpose."""


class DicomParseError(DicomrelayError, ValueError):
    """Bytes that are not a DICOM dataset dicomrelay will read.

    ``offset`` is the byte where reading failed; ``tag`` the element being read
    (as an int such as ``0x7FE00010``), or None when no element was.
    """

    offset: int
    tag: int | None

    def __init__(self, message: str, offset: int = 0, tag: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset
        self.tag = tag

    def __reduce__(self) -> tuple[type[DicomParseError], tuple[str, int, int | None]]:
        return (type(self), (str(self), self.offset, self.tag))


class RewriteError(DicomrelayError, ValueError):
    """An edit that cannot be applied to an instance: a value too long for its
    length field or not of its VR, a value set on a sequence, an item added to
    an element that is not one, the pixel data or the file meta group named.

    ``tag`` is the element the edit names (as an int such as ``0x00100020``).
    """

    tag: int | None

    def __init__(self, message: str, tag: int | None = None) -> None:
        super().__init__(message)
        self.tag = tag

    def __reduce__(self) -> tuple[type[RewriteError], tuple[str, int | None]]:
        return (type(self), (str(self), self.tag))


class ConfigurationError(DicomrelayError, ValueError):
    """A node's configuration cannot work: a bad certificate, key, peer or path."""


class PatientMappingError(ConfigurationError):
    """A patient mapping (the CSV file or ledger table an inbound rule's
    reconciliation reads) that cannot be used: a missing column, a malformed
    row, an invalid NHS number, one foreign patient mapped to two local ones.
    ``source`` names the file or table, ``line`` the row (1: the header line;
    None when the whole mapping is at fault)."""

    source: str
    line: int | None

    def __init__(self, message: str, source: str = "", line: int | None = None) -> None:
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {message}" if where else message)
        self.source = source
        self.line = line

    def __reduce__(self) -> tuple[type[PatientMappingError], tuple[str, str, int | None]]:
        message = str(self)
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        if where and message.startswith(f"{where}: "):
            message = message[len(where) + 2 :]
        return (type(self), (message, self.source, self.line))


class UsageError(DicomrelayError, ValueError):
    """A command line asks for something that cannot be: an unknown
    organisation, a path that does not exist. The CLI exits with status 2."""


class PolicyRefused(DicomrelayError, PermissionError):
    """The node's rules do not allow this study to go to (or come from) that
    organisation. Nothing was queued or stored; the decision was audited."""


class ProtocolError(DicomrelayError):
    """A peer sent bytes that are not frames of the dicomrelay wire protocol."""


class LedgerUnavailable(DicomrelayError, ConnectionError):
    """The ledger's database cannot be reached or cannot record: a PostgreSQL
    server down, restarting or failing over, or a SQLite ledger's disk full or
    failing. What it recorded before stands;
    a node that meets this stops, and work resumes from the ledger once the
    database is back (``dicomrelay serve`` starts its node again)."""


class StorageError(DicomrelayError, OSError):
    """Bytes could not be made durable or read back: a full disk, an I/O error,
    a failed fdatasync (then what the round wrote may be lost: nothing of it is
    acknowledged, and the store must be opened again at the durable end its
    owner recorded). ``errno`` and ``filename`` say which, where known."""


class CorruptRecord(StorageError):
    """A stored record is not what its location promises: a damaged header,
    data that does not hash to its digest, or another record than the one
    asked for. Never served; the message names the segment file and offset."""


class InstanceNotStored(DicomrelayError, LookupError):
    """The store holds no instance with that digest (never stored, or dropped)."""


class UnknownStudy(DicomrelayError, LookupError):
    """No committed study with that Study Instance UID in the ledger."""


class TlsError(DicomrelayError, ConnectionError):
    """The TLS layer failed: an untrusted or misnamed certificate, or a broken record."""


class PeerUnreachable(DicomrelayError, ConnectionError):
    """No connection to a peer's host and port: refused, timed out, or an
    unknown host. The message names the host, the port and why."""


def first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in a (nested) task-group failure that is not a
    cancellation: what to report, retry on, or raise in the group's place.
    Also called once the event loop has gone (a command's ``anyio.run``
    failed), where anyio cannot name its cancellation class: then asyncio's,
    the only backend dicomrelay runs on (uvloop included)."""
    try:
        cancelled = anyio.get_cancelled_exc_class()
    except RuntimeError:  # anyio's NoEventLoopError: no loop running
        cancelled = asyncio.CancelledError
    return _first_failure(group, cancelled)


def _first_failure(
    group: BaseExceptionGroup[BaseException], cancelled: type[BaseException]
) -> BaseException:
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            return _first_failure(e, cancelled)
        if not isinstance(e, cancelled):
            return e
    return group


class PduError(ProtocolError):
    """Bytes from a DICOM peer that are not a well-formed Upper Layer PDU (PS3.8 9.3).

    ``offset`` is the byte of the peer's stream where decoding failed;
    ``abort_reason`` the reason of the A-ABORT (source 2, service provider) that
    answers it: 1 unrecognized PDU, 5 unexpected PDU parameter, 6 invalid PDU
    parameter value, 0 not specified.
    """

    offset: int
    abort_reason: int

    def __init__(self, message: str, offset: int = 0, abort_reason: int = 0) -> None:
        super().__init__(message)
        self.offset = offset
        self.abort_reason = abort_reason

    def __reduce__(self) -> tuple[type[PduError], tuple[str, int, int]]:
        return (type(self), (str(self), self.offset, self.abort_reason))


class BurnedInAnnotation(DicomrelayError):
    """An instance whose pixels may show who the patient is (Burned In
    Annotation (0028,0301) YES, or a SOP class known for it without that
    attribute), refused by de-identification unless its rule allows it.
    ``reason`` says which; ``sop_class_uid`` is the instance's."""

    reason: str
    sop_class_uid: str | None

    def __init__(self, reason: str, sop_class_uid: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sop_class_uid = sop_class_uid

    def __reduce__(self) -> tuple[type[BurnedInAnnotation], tuple[str, str | None]]:
        return (type(self), (self.reason, self.sop_class_uid))


class BadRequest(DicomrelayError, ValueError):
    """A DICOMweb request that cannot be served as sent: a malformed multipart
    body, a query key or value the standard does not allow. ``status`` is the
    HTTP status that answers it (400 unless said otherwise)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class StudyHeld(DicomrelayError):
    """Every instance of a study was held in quarantine (its pixels may show
    identity, and its destination gets de-identified data only): nothing was
    queued. ``dicomrelay quarantine list`` shows them."""


class NotHeld(DicomrelayError, LookupError):
    """No held instance of that id, or it was released or deleted already."""


class CannotRelease(DicomrelayError):
    """A held instance that this command cannot release or delete: one held
    on receipt, or whose bytes are kept somewhere it does not manage."""
