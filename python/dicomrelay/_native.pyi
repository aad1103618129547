import mmap
import os
from collections.abc import Iterable, Sequence
from typing import Final, Literal, TypeAlias, final

from dicomrelay.errors import DicomParseError

_Buffer: TypeAlias = bytes | bytearray | memoryview | mmap.mmap
_DigestName: TypeAlias = Literal["sha256", "blake3"]

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "Abort",
    "AssociateAc",
    "AssociateRj",
    "AssociateRq",
    "Channel",
    "DurableWriter",
    "Hasher",
    "InstanceInfo",
    "PData",
    "Payload",
    "PduDecoder",
    "PresentationContextAc",
    "PresentationContextRq",
    "ReleaseRp",
    "ReleaseRq",
    "RoleSelection",
    "ScpCommand",
    "ScpEnd",
    "ScpMessage",
    "ScpPump",
    "ScpReceiver",
    "SegmentFaults",
    "SegmentReader",
    "SegmentStore",
    "SopClassCommonExtended",
    "SopClassExtended",
    "SparePool",
    "StreamFile",
    "TlsConfig",
    "UserIdentity",
    "UserInformation",
    "__version__",
    "file_meta",
    "fragment_pdata",
    "header_values",
    "header_values_file",
    "rewrite",
    "rewrite_file",
    "scan",
    "scan_file",
    "scan_many",
    "sync_filesystem",
]

DEFAULT_CHUNK_SIZE: Final[int]
__version__: Final[str]

@final
class InstanceInfo:
    __match_args__: tuple[str, ...]
    @property
    def sop_class_uid(self) -> str | None: ...
    @property
    def sop_instance_uid(self) -> str | None: ...
    @property
    def study_instance_uid(self) -> str | None: ...
    @property
    def series_instance_uid(self) -> str | None: ...
    @property
    def patient_id(self) -> str | None: ...
    @property
    def issuer_of_patient_id(self) -> str | None: ...
    @property
    def patient_name(self) -> str | None: ...
    @property
    def accession_number(self) -> str | None: ...
    @property
    def modality(self) -> str | None: ...
    @property
    def study_date(self) -> str | None: ...
    @property
    def specific_character_set(self) -> str | None: ...
    @property
    def transfer_syntax_uid(self) -> str | None: ...
    @property
    def rows(self) -> int | None: ...
    @property
    def columns(self) -> int | None: ...
    @property
    def number_of_frames(self) -> int | None: ...
    @property
    def bits_allocated(self) -> int | None: ...
    @property
    def pixel_data_offset(self) -> int | None: ...
    @property
    def pixel_data_length(self) -> int | None: ...
    @property
    def encapsulated(self) -> bool: ...
    @property
    def fragments(self) -> int | None: ...
    @property
    def dataset_offset(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def has_meta(self) -> bool: ...
    @property
    def deflated(self) -> bool: ...
    @property
    def digest(self) -> str | None: ...
    @property
    def chunk_digests(self) -> tuple[str, ...]: ...
    def as_dict(self) -> dict[str, object]: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

def scan(
    data: _Buffer | Payload, *, digest: _DigestName | None = None, chunk_size: int | None = None
) -> InstanceInfo: ...
def scan_file(
    path: str | os.PathLike[str],
    *,
    digest: _DigestName | None = None,
    chunk_size: int | None = None,
) -> InstanceInfo: ...
def scan_many(
    sources: Iterable[_Buffer | str | os.PathLike[str]],
    *,
    digest: _DigestName | None = None,
    chunk_size: int | None = None,
    threads: int | None = None,
) -> list[InstanceInfo | DicomParseError | OSError]: ...
def header_values(
    data: _Buffer | Payload, tags: Sequence[int]
) -> tuple[dict[int, str], dict[int, str]]:
    """The top-level text of ``tags`` present with a value, and every private
    creator ((gggg,00bb) -> name), decoded and stripped of padding."""

def header_values_file(
    path: str | os.PathLike[str], tags: Sequence[int]
) -> tuple[dict[int, str], dict[int, str]]: ...

# Header rewriting (dicomrelay.rewrite wraps these): each op is an edit's
# `_op` tuple; the result is (header, pixel_offset, pixel_length, trailer,
# digest). Raises DicomParseError or dicomrelay.errors.RewriteError.
_RewriteOutput: TypeAlias = tuple[bytes, int, int, bytes, str | None]

def rewrite(
    data: _Buffer | Payload, ops: Iterable[tuple[object, ...]], *, digest: _DigestName | None = None
) -> _RewriteOutput: ...
def rewrite_file(
    path: str | os.PathLike[str],
    ops: Iterable[tuple[object, ...]],
    *,
    digest: _DigestName | None = None,
) -> _RewriteOutput: ...

@final
class TlsConfig:
    @staticmethod
    def client(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> TlsConfig: ...
    @staticmethod
    def server(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> TlsConfig: ...
    @property
    def is_server(self) -> bool: ...

@final
class Payload:
    """Bytes made in Rust, handed over without a copy: a read-only buffer."""

    def __len__(self) -> int: ...
    def write_new_file(self, path: str | os.PathLike[str], *, sync: bool = True) -> None: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...

_Frame: TypeAlias = tuple[int, int, int, int, Payload, bool | None, bytes | None]

@final
class Channel:
    def __new__(cls, tls: TlsConfig | None = None, server_name: str | None = None) -> Channel: ...
    def receive(self, data: bytes) -> list[_Frame]: ...
    def read_from(self, fd: int) -> tuple[list[_Frame], bool]:
        """Read a non-blocking socket until it would block (at most 4 MiB);
        the whole frames now available, and whether the peer closed."""
    def write_to(self, fd: int) -> bool:
        """Write queued bytes to a non-blocking socket until it would block;
        whether bytes remain."""
    def send(
        self,
        kind: int,
        payload: _Buffer,
        *,
        stream: int = 0,
        offset: int = 0,
        flags: int = 0,
        digest: bytes | None = None,
    ) -> None: ...
    def send_from_file(
        self,
        kind: int,
        fd: int,
        offset: int,
        length: int,
        *,
        stream: int = 0,
        flags: int = 0,
        digest: bytes | None = None,
        base: int = 0,
    ) -> None: ...
    def send_many_from_files(
        self,
        kind: int,
        chunks: Sequence[tuple[int, int, int, int, int, bytes | None]],
        *,
        flags: int = 0,
    ) -> None: ...
    def take_outgoing(self) -> Payload: ...
    def close(self) -> None: ...
    @property
    def handshaking(self) -> bool: ...
    @property
    def wants_write(self) -> bool: ...
    @property
    def peer_certificate(self) -> bytes | None: ...

@final
class Hasher:
    def __new__(cls, algorithm: _DigestName = "sha256") -> Hasher: ...
    def update(self, data: _Buffer) -> None: ...
    def hexdigest(self) -> str: ...
    @property
    def name(self) -> str: ...

@final
class StreamFile:
    """A new file written piece by piece (direct I/O where possible), digested on the way."""

    def __new__(
        cls,
        path: str | os.PathLike[str],
        *,
        digest: _DigestName | None = None,
        direct: bool = True,
    ) -> StreamFile: ...
    def write(self, data: _Buffer) -> None: ...
    def finish(self, *, sync: bool = True) -> tuple[int, str | None]: ...

def sync_filesystem(fd: int) -> None:
    """syncfs(2) on an open descriptor; OSError for writeback errors since it opened."""

@final
class DurableWriter:
    """Blob writes and their group commits on native threads."""

    def __new__(cls, root: str | os.PathLike[str], *, writers: int = 4) -> DurableWriter: ...
    def submit(
        self,
        token: int,
        payload: Payload,
        temp: str | os.PathLike[str],
        final_path: str | os.PathLike[str],
    ) -> None: ...
    def completed(self) -> list[tuple[int, OSError | None]]: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...

_Location: TypeAlias = tuple[int, int, int]

@final
class SegmentStore:
    """Records in large preallocated segment files, durable by rounds.

    A location is ``(segment, offset, length)``; a durable end ``(segment, end)``.
    Raises dicomrelay.errors.StorageError (CorruptRecord for a record that is
    not the one asked for) and ValueError for a request that cannot be.
    """

    def __new__(
        cls,
        root: str | os.PathLike[str],
        *,
        durable_end: tuple[int, int] | None,
        segment_size: int = 1073741824,
        buffer_size: int = 8388608,
        faults: SegmentFaults | None = None,
    ) -> SegmentStore: ...
    def append(
        self, data: _Buffer | Payload, digest: str, *, algorithm: _DigestName = "sha256"
    ) -> _Location: ...
    def append_file(
        self, path: str | os.PathLike[str], digest: str, *, algorithm: _DigestName = "sha256"
    ) -> _Location:
        """A record of the whole file, read a buffer at a time (for large instances)."""
    def append_parts(
        self,
        parts: Sequence[_Buffer | Payload],
        digest: str,
        *,
        algorithm: _DigestName = "sha256",
    ) -> _Location:
        """A record of ``parts`` one after another, not joined in memory first."""
    def append_many(
        self,
        records: Iterable[tuple[_Buffer | Payload, str]],
        *,
        algorithm: _DigestName = "sha256",
    ) -> list[_Location]: ...
    def commit(self) -> tuple[int, int]: ...
    @property
    def durable_end(self) -> tuple[int, int]: ...
    @property
    def active_segment(self) -> int: ...
    @property
    def removed_segments(self) -> list[int]: ...
    @property
    def cut_records(self) -> int: ...
    def read(self, location: _Location, digest: str, *, verify: bool = False) -> Payload: ...
    def open_record(self, location: _Location, digest: str) -> tuple[int, int, int]:
        """``(fd, offset, length)``: a new descriptor the caller closes."""
    def scan(
        self, segment: int, offset: int = 4096, *, verify: bool = False
    ) -> tuple[list[tuple[_Location, str, str]], int, str]: ...
    def compact(self, segment: int, live: Sequence[tuple[_Location, str]]) -> list[_Location]: ...
    def remove_segment(self, segment: int) -> None: ...
    def segments(self) -> list[int]: ...
    def close(self) -> None: ...
    def __enter__(self) -> SegmentStore: ...
    def __exit__(self, exc_type: object, exc: object, tb: object, /) -> None: ...

@final
class SegmentReader:
    """Reads durable records, by locations from the ledger, while another
    process appends: no lock, no recovery."""

    def __new__(cls, root: str | os.PathLike[str]) -> SegmentReader: ...
    def read(self, location: _Location, digest: str, *, verify: bool = False) -> Payload: ...

@final
class SegmentFaults:
    """Failures injected into a SegmentStore's data writes and fdatasyncs (an errno; 0: none)."""

    def __new__(cls) -> SegmentFaults: ...
    def fail_writes(self, errno: int) -> None: ...
    def fail_syncs(self, errno: int) -> None: ...
    @property
    def syncs(self) -> int: ...

# DICOM Upper Layer PDUs (PS3.8 section 9.3). Constructors are keyword-only;
# an A-ASSOCIATE PDU that cannot be encoded raises ValueError when built.
# Decoding raises dicomrelay.errors.PduError. Defaults written `...` are: empty
# sequences and bytes, protocol version 1, the DICOM application context
# "1.2.840.10008.3.1.1.1", and an empty UserInformation.

@final
class PresentationContextRq:
    def __new__(
        cls, *, context_id: int, abstract_syntax: str, transfer_syntaxes: Sequence[str]
    ) -> PresentationContextRq: ...
    @property
    def context_id(self) -> int: ...
    @property
    def abstract_syntax(self) -> str: ...
    @property
    def transfer_syntaxes(self) -> tuple[str, ...]: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class PresentationContextAc:
    """``result``: 0 acceptance, 1 user rejection, 2 no reason, 3 abstract
    syntax not supported, 4 transfer syntaxes not supported."""

    def __new__(
        cls, *, context_id: int, result: int, transfer_syntax: str | None = None
    ) -> PresentationContextAc: ...
    @property
    def context_id(self) -> int: ...
    @property
    def result(self) -> int: ...
    @property
    def transfer_syntax(self) -> str | None: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class RoleSelection:
    def __new__(cls, *, sop_class_uid: str, scu_role: bool, scp_role: bool) -> RoleSelection: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def scu_role(self) -> bool: ...
    @property
    def scp_role(self) -> bool: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class SopClassExtended:
    def __new__(
        cls, *, sop_class_uid: str, service_class_application_information: bytes
    ) -> SopClassExtended: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def service_class_application_information(self) -> bytes: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class SopClassCommonExtended:
    def __new__(
        cls,
        *,
        sop_class_uid: str,
        service_class_uid: str,
        related_general_sop_class_uids: Sequence[str] = ...,
    ) -> SopClassCommonExtended: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def service_class_uid(self) -> str: ...
    @property
    def related_general_sop_class_uids(self) -> tuple[str, ...]: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class UserIdentity:
    """``identity_type``: 1 username, 2 username and passcode, 3 Kerberos, 4 SAML, 5 JWT."""

    def __new__(
        cls,
        *,
        identity_type: int,
        primary_field: bytes,
        secondary_field: bytes = ...,
        positive_response_requested: bool = False,
    ) -> UserIdentity: ...
    @property
    def identity_type(self) -> int: ...
    @property
    def positive_response_requested(self) -> bool: ...
    @property
    def primary_field(self) -> bytes: ...
    @property
    def secondary_field(self) -> bytes: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class UserInformation:
    def __new__(
        cls,
        *,
        max_length: int | None = None,
        implementation_class_uid: str | None = None,
        implementation_version_name: str | None = None,
        async_ops_window: tuple[int, int] | None = None,
        role_selections: Sequence[RoleSelection] = ...,
        sop_class_extended: Sequence[SopClassExtended] = ...,
        sop_class_common_extended: Sequence[SopClassCommonExtended] = ...,
        user_identity: UserIdentity | None = None,
        user_identity_response: bytes | None = None,
        unknown_items: Sequence[tuple[int, bytes]] = ...,
    ) -> UserInformation: ...
    @property
    def max_length(self) -> int | None: ...
    @property
    def implementation_class_uid(self) -> str | None: ...
    @property
    def implementation_version_name(self) -> str | None: ...
    @property
    def async_ops_window(self) -> tuple[int, int] | None: ...
    @property
    def role_selections(self) -> tuple[RoleSelection, ...]: ...
    @property
    def sop_class_extended(self) -> tuple[SopClassExtended, ...]: ...
    @property
    def sop_class_common_extended(self) -> tuple[SopClassCommonExtended, ...]: ...
    @property
    def user_identity(self) -> UserIdentity | None: ...
    @property
    def user_identity_response(self) -> bytes | None: ...
    @property
    def unknown_items(self) -> tuple[tuple[int, bytes], ...]: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class AssociateRq:
    def __new__(
        cls,
        *,
        called_ae_title: str,
        calling_ae_title: str,
        presentation_contexts: Sequence[PresentationContextRq],
        user_information: UserInformation = ...,
        application_context: str = ...,
        protocol_version: int = ...,
        unknown_items: Sequence[tuple[int, bytes]] = ...,
    ) -> AssociateRq: ...
    @property
    def protocol_version(self) -> int: ...
    @property
    def called_ae_title(self) -> str: ...
    @property
    def calling_ae_title(self) -> str: ...
    @property
    def application_context(self) -> str: ...
    @property
    def presentation_contexts(self) -> tuple[PresentationContextRq, ...]: ...
    @property
    def user_information(self) -> UserInformation: ...
    @property
    def unknown_items(self) -> tuple[tuple[int, bytes], ...]: ...
    def encode(self) -> bytes: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class AssociateAc:
    """The AE titles echo the request's; PS3.8 says not to test them on receipt."""

    def __new__(
        cls,
        *,
        called_ae_title: str,
        calling_ae_title: str,
        presentation_contexts: Sequence[PresentationContextAc],
        user_information: UserInformation = ...,
        application_context: str = ...,
        protocol_version: int = ...,
        unknown_items: Sequence[tuple[int, bytes]] = ...,
    ) -> AssociateAc: ...
    @property
    def protocol_version(self) -> int: ...
    @property
    def called_ae_title(self) -> str: ...
    @property
    def calling_ae_title(self) -> str: ...
    @property
    def application_context(self) -> str: ...
    @property
    def presentation_contexts(self) -> tuple[PresentationContextAc, ...]: ...
    @property
    def user_information(self) -> UserInformation: ...
    @property
    def unknown_items(self) -> tuple[tuple[int, bytes], ...]: ...
    def encode(self) -> bytes: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class AssociateRj:
    """``result`` 1 permanent, 2 transient; ``source`` 1 service user, 2 ACSE
    provider, 3 presentation provider; ``reason`` per source (PS3.8 9.3.4)."""

    def __new__(cls, *, result: int, source: int, reason: int) -> AssociateRj: ...
    @property
    def result(self) -> int: ...
    @property
    def source(self) -> int: ...
    @property
    def reason(self) -> int: ...
    def encode(self) -> bytes: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

_Pdv: TypeAlias = tuple[int, bool, bool, bytes]

@final
class PData:
    """P-DATA-TF: PDVs as ``(context_id, is_command, is_last, data)``."""

    def __new__(cls, *, pdvs: Sequence[_Pdv]) -> PData: ...
    @property
    def pdvs(self) -> tuple[_Pdv, ...]: ...
    def encode(self) -> bytes: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class ReleaseRq:
    def __new__(cls) -> ReleaseRq: ...
    def encode(self) -> bytes: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class ReleaseRp:
    def __new__(cls) -> ReleaseRp: ...
    def encode(self) -> bytes: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class Abort:
    """``source`` 0 service user, 2 service provider (then ``reason``: 0 not
    specified, 1 unrecognized PDU, 2 unexpected PDU, 4 unrecognized PDU
    parameter, 5 unexpected PDU parameter, 6 invalid PDU parameter value)."""

    def __new__(cls, *, source: int = 0, reason: int = 0) -> Abort: ...
    @property
    def source(self) -> int: ...
    @property
    def reason(self) -> int: ...
    def encode(self) -> bytes: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

_Pdu: TypeAlias = AssociateRq | AssociateAc | AssociateRj | PData | ReleaseRq | ReleaseRp | Abort

@final
class PduDecoder:
    """Bytes from one peer, in any fragmentation, in; whole PDUs out."""

    def __new__(cls, max_pdu_length: int) -> PduDecoder: ...
    def feed(self, data: _Buffer) -> list[_Pdu]: ...
    @property
    def max_pdu_length(self) -> int: ...
    @property
    def pending(self) -> int: ...

def fragment_pdata(
    context_id: int, is_command: bool, data: _Buffer, max_pdu_length: int, *, last: bool = True
) -> bytes: ...
def file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    source_ae_title: str | None,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes: ...

@final
class SparePool:
    """Temporary files for received datasets, made ahead of need by a thread."""

    def __new__(cls, directory: str | os.PathLike[str], *, keep: int = 8) -> SparePool: ...
    def close(self) -> None: ...

@final
class ScpMessage:
    """A whole DIMSE message; for a C-STORE, its dataset in a file or, up to
    ``in_memory`` bytes, in ``data`` (not durable)."""

    @property
    def context_id(self) -> int: ...
    @property
    def command(self) -> bytes: ...
    @property
    def has_dataset(self) -> bool: ...
    @property
    def path(self) -> str | None: ...
    @property
    def data(self) -> Payload | None: ...
    @property
    def length(self) -> int: ...
    @property
    def digest(self) -> str | None: ...
    @property
    def info(self) -> InstanceInfo | None: ...
    @property
    def scan_error(self) -> DicomParseError | None: ...
    @property
    def error(self) -> OSError | None: ...
    @property
    def sequence(self) -> int: ...
    @property
    def answered(self) -> bool: ...

@final
class ScpCommand:
    """A command announcing a dataset, whole before the dataset is."""

    @property
    def sequence(self) -> int: ...
    @property
    def context_id(self) -> int: ...
    @property
    def command(self) -> bytes: ...

@final
class ScpEnd:
    """Why the data plane stopped: "handback" (``data``: a PDU other than
    P-DATA-TF and what followed it), "pdu-error" (``error``: PduError),
    "dimse-error" (``reason``), "closed", "idle", "stopped", "socket-error"."""

    @property
    def kind(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def reason(self) -> str: ...
    @property
    def error(self) -> Exception | None: ...

@final
class ScpReceiver:
    """The storage SCP's data plane on bytes the caller reads."""

    def __new__(
        cls,
        spares: SparePool,
        *,
        contexts: list[tuple[int, str]],
        calling_ae_title: str,
        implementation_class_uid: str,
        implementation_version_name: str,
        digest: _DigestName | None,
        max_pdu_length: int,
        in_memory: int = 0,
    ) -> ScpReceiver: ...
    def feed(self, data: _Buffer) -> list[ScpCommand | ScpMessage | ScpEnd]: ...

@final
class ScpPump:
    """The storage SCP's data plane on a thread reading the socket ``fd``."""

    def __new__(
        cls,
        fd: int,
        spares: SparePool,
        *,
        contexts: list[tuple[int, str]],
        calling_ae_title: str,
        implementation_class_uid: str,
        implementation_version_name: str,
        digest: _DigestName | None,
        max_pdu_length: int,
        idle_seconds: float | None = None,
        in_memory: int = 0,
    ) -> ScpPump: ...
    def fileno(self) -> int: ...
    def take(self) -> list[ScpCommand | ScpMessage | ScpEnd]: ...
    def send(self, data: bytes) -> None: ...
    def answer_when_stored(
        self, sequence: int, pdus: bytes, sop_instance_uid: str, sop_class_uid: str
    ) -> None: ...
    def stop(self) -> bytes: ...
