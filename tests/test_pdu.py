"""The DICOM Upper Layer PDU codec through its Python API: real DCMTK and
pynetdicom bytes decoded, every PDU class round-tripped, malformed input
refused with PduError, and live associations with DCMTK's storescp."""

from __future__ import annotations

import contextlib
import pickle
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomrelay._native import (
    Abort,
    AssociateAc,
    AssociateRj,
    AssociateRq,
    PData,
    PduDecoder,
    PresentationContextAc,
    PresentationContextRq,
    ReleaseRp,
    ReleaseRq,
    RoleSelection,
    SopClassCommonExtended,
    SopClassExtended,
    UserIdentity,
    UserInformation,
    fragment_pdata,
)
from dicomrelay.errors import PduError, ProtocolError

Pdu = AssociateRq | AssociateAc | AssociateRj | PData | ReleaseRq | ReleaseRp | Abort

FIXTURES = Path(__file__).resolve().parents[1] / "rust" / "core" / "tests" / "fixtures"
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
STORESCP = Path("/usr/bin/storescp")  # DCMTK's, not the pyenv shim of pynetdicom's


def decode(name: str, max_pdu_length: int = 16384) -> list[Pdu]:
    return PduDecoder(max_pdu_length).feed((FIXTURES / name).read_bytes())


def pdvs(pdus: list[Pdu]) -> list[tuple[int, bool, bool, bytes]]:
    return [pdv for pdu in pdus if isinstance(pdu, PData) for pdv in pdu.pdvs]


def message(pdus: list[Pdu], *, command: bool) -> bytes:
    """The command or data set carried by the P-DATA-TF PDUs of a stream."""
    return b"".join(data for _, is_command, _, data in pdvs(pdus) if is_command == command)


def test_echoscu_request() -> None:
    rq, command, release = decode("echo.scu.bin")
    assert isinstance(rq, AssociateRq)
    assert (rq.called_ae_title, rq.calling_ae_title) == ("STORESCP", "ECHOSCU")
    assert rq.application_context == "1.2.840.10008.3.1.1.1"
    assert rq.protocol_version == 1
    assert rq.presentation_contexts == (
        PresentationContextRq(
            context_id=1, abstract_syntax=VERIFICATION, transfer_syntaxes=[IMPLICIT_LE]
        ),
    )
    ui = rq.user_information
    assert ui.max_length == 16384
    assert ui.implementation_class_uid == "1.2.276.0.7230010.3.0.3.6.7"
    assert ui.implementation_version_name == "OFFIS_DCMTK_367"
    assert ui.user_identity is None
    assert ui.role_selections == ()
    assert isinstance(command, PData)
    [(context_id, is_command, is_last, data)] = command.pdvs
    assert (context_id, is_command, is_last) == (1, True, True)
    assert VERIFICATION.encode() in data
    assert release == ReleaseRq()


def test_storescp_answers() -> None:
    ac, response, release = decode("echo.scp.bin")
    assert isinstance(ac, AssociateAc)
    assert ac.presentation_contexts == (
        PresentationContextAc(context_id=1, result=0, transfer_syntax=IMPLICIT_LE),
    )
    assert isinstance(response, PData)
    assert response.pdvs[0][1:3] == (True, True)
    assert release == ReleaseRp()
    assert decode("refuse.scp.bin") == [AssociateRj(result=1, source=1, reason=1)]
    assert decode("abort.scu.bin")[-1] == Abort(source=0, reason=0)


def test_storescu_store() -> None:
    pdus = decode("store.scu.bin")
    rq = pdus[0]
    assert isinstance(rq, AssociateRq)
    assert len(rq.presentation_contexts) == 128
    assert rq.user_information.user_identity == UserIdentity(
        identity_type=2, primary_field=b"alice", secondary_field=b"secret"
    )
    fragments = [pdv for pdv in pdvs(pdus) if not pdv[1]]
    assert [pdv[2] for pdv in fragments] == [False] * (len(fragments) - 1) + [True]
    # The peer's limit (4096) bounds every P-DATA-TF variable field.
    assert all(len(data) + 6 <= 4096 for *_, data in fragments)
    assert 38_000 < len(message(pdus, command=False)) < 39_206


def test_pynetdicom_negotiation() -> None:
    [rq] = decode("pynetdicom.rq.bin")
    assert isinstance(rq, AssociateRq)
    ui = rq.user_information
    assert ui.async_ops_window == (5, 3)
    assert ui.role_selections == (
        RoleSelection(sop_class_uid=CT_IMAGE_STORAGE, scu_role=True, scp_role=False),
    )
    assert ui.sop_class_extended == (
        SopClassExtended(
            sop_class_uid=CT_IMAGE_STORAGE, service_class_application_information=b"\x01\x00\x01"
        ),
    )
    assert ui.sop_class_common_extended == (
        SopClassCommonExtended(
            sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
            service_class_uid="1.2.840.10008.4.2",
            related_general_sop_class_uids=[CT_IMAGE_STORAGE],
        ),
    )
    identity = ui.user_identity
    assert identity is not None
    assert identity.positive_response_requested
    assert "secret" not in repr(identity)
    [ac] = decode("pynetdicom.ac.bin")
    assert isinstance(ac, AssociateAc)
    assert ac.presentation_contexts[1].result == 3
    assert ac.user_information.user_identity_response == b"token-for-alice"


@pytest.mark.parametrize(
    "name", ["echo.scp.bin", "store.scp.bin", "pynetdicom.rq.bin", "pynetdicom.ac.bin"]
)
def test_captures_reencode_to_their_bytes(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    assert b"".join(pdu.encode() for pdu in decode(name)) == data


def pdu_ends(data: bytes) -> list[int]:
    ends = [0]
    while ends[-1] < len(data):
        ends.append(ends[-1] + 6 + struct.unpack(">I", data[ends[-1] + 2 : ends[-1] + 6])[0])
    return ends


@pytest.mark.parametrize("name", ["echo.scu.bin", "store.scu.bin", "abort.scp.bin"])
def test_any_fragmentation(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    ends = pdu_ends(data)
    decoder = PduDecoder(16384)
    pieces: list[Pdu] = []
    for i in range(0, len(data), 7):
        pieces += decoder.feed(memoryview(data)[i : i + 7])
        fed = min(i + 7, len(data))
        # Everything fed since the last PDU boundary is pending.
        assert decoder.pending == fed - max(end for end in ends if end <= fed)
        assert len(pieces) == sum(1 for end in ends[1:] if end <= fed)
    assert pieces == decode(name)


def user_information() -> UserInformation:
    return UserInformation(
        max_length=32768,
        implementation_class_uid="1.2.3.4",
        implementation_version_name="DICOMRELAY",
        async_ops_window=(1, 1),
        role_selections=[RoleSelection(sop_class_uid="1.2", scu_role=False, scp_role=True)],
        sop_class_extended=[
            SopClassExtended(sop_class_uid="1.2", service_class_application_information=b"\x01")
        ],
        sop_class_common_extended=[
            SopClassCommonExtended(sop_class_uid="1.2", service_class_uid="1.3")
        ],
        user_identity=UserIdentity(identity_type=1, primary_field=b"bob"),
        unknown_items=[(0x77, b"kept")],
    )


def every_pdu() -> list[Pdu]:
    contexts_rq = [
        PresentationContextRq(
            context_id=1, abstract_syntax=VERIFICATION, transfer_syntaxes=(IMPLICIT_LE,)
        ),
        PresentationContextRq(
            context_id=3,
            abstract_syntax=CT_IMAGE_STORAGE,
            transfer_syntaxes=[EXPLICIT_LE, IMPLICIT_LE],
        ),
    ]
    contexts_ac = [
        PresentationContextAc(context_id=1, result=0, transfer_syntax=IMPLICIT_LE),
        PresentationContextAc(context_id=3, result=4),
    ]
    return [
        AssociateRq(
            called_ae_title="ANY-SCP",
            calling_ae_title="RELAY",
            presentation_contexts=contexts_rq,
            user_information=user_information(),
            unknown_items=[(0x60, b"?")],
        ),
        AssociateAc(
            called_ae_title="ANY-SCP",
            calling_ae_title="RELAY",
            presentation_contexts=contexts_ac,
            user_information=UserInformation(max_length=0, user_identity_response=b"ok"),
        ),
        AssociateRj(result=2, source=3, reason=1),
        PData(pdvs=[(1, True, False, b"cmd"), (1, False, True, b"")]),
        ReleaseRq(),
        ReleaseRp(),
        Abort(source=2, reason=6),
    ]


def test_every_pdu_round_trips() -> None:
    pdus = every_pdu()
    stream = b"".join(pdu.encode() for pdu in pdus)
    assert PduDecoder(0).feed(stream) == pdus
    for pdu in pdus:
        assert PduDecoder(0).feed(pdu.encode()) == [pdu]
        assert hash(pdu) == hash(PduDecoder(0).feed(pdu.encode())[0])
        assert type(pdu).__name__ in repr(pdu)
    rq = pdus[0]
    assert isinstance(rq, AssociateRq)
    assert rq.user_information.unknown_items == ((0x77, b"kept"),)
    assert rq.unknown_items == ((0x60, b"?"),)


def test_constructors_check_what_they_build() -> None:
    context = PresentationContextRq(
        context_id=1, abstract_syntax=VERIFICATION, transfer_syntaxes=[IMPLICIT_LE]
    )
    with pytest.raises(ValueError, match="16 printable"):
        AssociateRq(called_ae_title="A" * 17, calling_ae_title="B", presentation_contexts=[context])
    with pytest.raises(ValueError, match="empty"):
        AssociateRq(called_ae_title="  ", calling_ae_title="B", presentation_contexts=[context])
    with pytest.raises(ValueError, match="presentation context"):
        AssociateRq(called_ae_title="A", calling_ae_title="B", presentation_contexts=[])
    bad_uid = PresentationContextRq(
        context_id=1, abstract_syntax="1.2.\u00e9", transfer_syntaxes=[IMPLICIT_LE]
    )
    with pytest.raises(ValueError, match="ASCII"):
        AssociateRq(called_ae_title="A", calling_ae_title="B", presentation_contexts=[bad_uid])
    with pytest.raises(ValueError, match="known type"):
        AssociateAc(
            called_ae_title="A",
            calling_ae_title="B",
            presentation_contexts=[PresentationContextAc(context_id=1, result=0)],
            unknown_items=[(0x50, b"")],
        )
    with pytest.raises(ValueError, match="at least one PDV"):
        PData(pdvs=[])
    with pytest.raises(OverflowError):
        PresentationContextAc(context_id=256, result=0)
    with pytest.raises(TypeError):
        PresentationContextRq(context_id=1, abstract_syntax="1.2", transfer_syntaxes="1.2")
    # AE titles lose their padding, as they would on the wire.
    rq = AssociateRq(called_ae_title=" A ", calling_ae_title="B", presentation_contexts=[context])
    assert rq.called_ae_title == "A"


def test_malformed_bytes_raise_pdu_error() -> None:
    decoder = PduDecoder(16384)
    assert decoder.feed(ReleaseRq().encode()) == [ReleaseRq()]
    with pytest.raises(PduError) as caught:
        decoder.feed(b"\x09\x00\x00\x00\x00\x04")
    err = caught.value
    assert isinstance(err, ProtocolError)
    assert (err.offset, err.abort_reason) == (10, 1)
    assert "unrecognised PDU type" in str(err)
    # The decoder stays failed: the association must be aborted.
    with pytest.raises(PduError):
        decoder.feed(ReleaseRq().encode())
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), str(copy), copy.offset, copy.abort_reason) == (
        PduError,
        str(err),
        10,
        1,
    )


@pytest.mark.parametrize(
    ("data", "offset", "abort_reason"),
    [
        # A P-DATA-TF longer than this side accepts: refused at its header.
        (b"\x04\x00\x00\x00\x40\x01", 2, 6),
        # A-RELEASE-RQ with a length other than 4.
        (b"\x05\x00\x00\x00\x00\x05", 2, 6),
        # A PDV running past its PDU.
        (b"\x04\x00\x00\x00\x00\x07\x00\x00\x00\x04\x01\x03\x00", 6, 6),
    ],
)
def test_malformed_pdus(data: bytes, offset: int, abort_reason: int) -> None:
    with pytest.raises(PduError) as caught:
        PduDecoder(16384).feed(data)
    assert (caught.value.offset, caught.value.abort_reason) == (offset, abort_reason)


def test_truncated_request_waits() -> None:
    data = (FIXTURES / "echo.scu.bin").read_bytes()
    decoder = PduDecoder(16384)
    assert decoder.feed(data[:100]) == []
    assert decoder.pending == 100
    assert decoder.max_pdu_length == 16384


@pytest.mark.parametrize("max_pdu_length", [0, 7, 4096, 16384])
@pytest.mark.parametrize("size", [0, 1, 4090, 4091, 100_000])
def test_fragment_pdata(max_pdu_length: int, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    pdus = PduDecoder(max_pdu_length).feed(
        fragment_pdata(5, False, bytearray(data), max_pdu_length)
    )
    parts = pdvs(pdus)
    assert b"".join(part[3] for part in parts) == data
    assert [part[2] for part in parts] == [False] * (len(parts) - 1) + [True]
    assert {part[:2] for part in parts} == {(5, False)}
    if max_pdu_length:
        assert all(len(part[3]) + 6 <= max_pdu_length for part in parts)


def test_fragment_pdata_streams_a_message() -> None:
    head = fragment_pdata(1, False, b"a" * 10, 12, last=False)
    tail = fragment_pdata(1, False, b"b" * 3, 12)
    parts = pdvs(PduDecoder(12).feed(head + tail))
    assert [(len(p[3]), p[2]) for p in parts] == [(6, False), (4, False), (3, True)]
    assert fragment_pdata(1, True, b"", 100, last=False) == b""
    with pytest.raises(ValueError, match="no room"):
        fragment_pdata(1, True, b"x", 6)


uids = st.from_regex(r"[0-9]{1,8}(\.[0-9]{1,8}){0,6}", fullmatch=True)
ae_titles = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=16)
pdv_lists = st.lists(
    st.tuples(st.integers(0, 255), st.booleans(), st.booleans(), st.binary(max_size=600)),
    min_size=1,
    max_size=4,
)


@given(
    called=ae_titles,
    calling=ae_titles,
    contexts=st.lists(
        st.tuples(st.integers(0, 255), uids, st.lists(uids, min_size=1, max_size=4)),
        min_size=1,
        max_size=5,
    ),
    max_length=st.none() | st.integers(0, 2**32 - 1),
    pdv_list=pdv_lists,
    piece=st.integers(1, 50),
)
def test_random_pdus_round_trip(
    called: str,
    calling: str,
    contexts: list[tuple[int, str, list[str]]],
    max_length: int | None,
    pdv_list: list[tuple[int, bool, bool, bytes]],
    piece: int,
) -> None:
    rq = AssociateRq(
        called_ae_title=called,
        calling_ae_title=calling,
        presentation_contexts=[
            PresentationContextRq(context_id=i, abstract_syntax=a, transfer_syntaxes=ts)
            for i, a, ts in contexts
        ],
        user_information=UserInformation(max_length=max_length),
    )
    pdata = PData(pdvs=pdv_list)
    stream = rq.encode() + pdata.encode()
    decoder = PduDecoder(0)
    out: list[Pdu] = []
    for i in range(0, len(stream), piece):
        out += decoder.feed(stream[i : i + piece])
    assert out == [rq, pdata]
    assert out[1].pdvs == tuple(pdv_list)  # type: ignore[union-attr]


# Live associations with DCMTK's storescp.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def storescp(directory: Path, *args: str) -> Iterator[int]:
    if not STORESCP.exists():
        pytest.skip("DCMTK storescp is not installed")
    port = free_port()
    process = subprocess.Popen(
        [str(STORESCP), "-aet", "STORESCP", "-od", str(directory), *args, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


class Peer:
    """A blocking socket speaking PDUs through the codec."""

    def __init__(self, port: int, max_pdu_length: int = 16384) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = PduDecoder(max_pdu_length)
        self.received: list[Pdu] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> Pdu:
        while not self.received:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the peer closed the connection")
            self.received += self.decoder.feed(chunk)
        return self.received.pop(0)

    def close(self) -> None:
        self.sock.close()


def associate(peer: Peer, abstract_syntax: str, transfer_syntax: str) -> AssociateAc:
    rq = AssociateRq(
        called_ae_title="STORESCP",
        calling_ae_title="DICOMRELAY",
        presentation_contexts=[
            PresentationContextRq(
                context_id=1, abstract_syntax=abstract_syntax, transfer_syntaxes=[transfer_syntax]
            )
        ],
        user_information=UserInformation(
            max_length=peer.decoder.max_pdu_length,
            implementation_class_uid="1.2.826.0.1.3680043.10.1",
            implementation_version_name="DICOMRELAY",
        ),
    )
    peer.send(rq.encode())
    ac = peer.receive()
    assert isinstance(ac, AssociateAc), ac
    assert ac.presentation_contexts == (
        PresentationContextAc(context_id=1, result=0, transfer_syntax=transfer_syntax),
    )
    return ac


def receive_command(peer: Peer) -> bytes:
    data = b""
    while True:
        pdu = peer.receive()
        assert isinstance(pdu, PData), pdu
        for context_id, is_command, is_last, part in pdu.pdvs:
            assert (context_id, is_command) == (1, True)
            data += part
            if is_last:
                return data


def command_status(command: bytes) -> int:
    """The Status (0000,0900) of a command set (implicit VR little endian)."""
    at = 0
    while at + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHI", command, at)
        if (group, element) == (0x0000, 0x0900):
            return int(struct.unpack_from("<H", command, at + 8)[0])
        at += 8 + length
    raise AssertionError("no status in the command")


def release(peer: Peer) -> None:
    peer.send(ReleaseRq().encode())
    assert peer.receive() == ReleaseRp()
    assert peer.decoder.pending == 0
    peer.close()


def test_c_echo_with_storescp(tmp_path: Path) -> None:
    c_echo_rq = message(decode("echo.scu.bin"), command=True)
    with storescp(tmp_path) as port:
        peer = Peer(port)
        ac = associate(peer, VERIFICATION, IMPLICIT_LE)
        assert ac.user_information.implementation_version_name == "OFFIS_DCMTK_367"
        peer.send(fragment_pdata(1, True, c_echo_rq, ac.user_information.max_length or 0))
        assert command_status(receive_command(peer)) == 0x0000
        release(peer)


def test_c_store_with_storescp_at_its_exact_limit(tmp_path: Path) -> None:
    """A data set fragmented by fragment_pdata into P-DATA-TF PDUs whose
    variable field is exactly the peer's maximum length: storescp stores it."""
    captured = decode("store.scu.bin")
    command, dataset = message(captured, command=True), message(captured, command=False)
    [ac_captured] = [p for p in decode("store.scp.bin") if isinstance(p, AssociateAc)]
    rq_captured = captured[0]
    assert isinstance(rq_captured, AssociateRq)
    [context] = [
        pc for pc in ac_captured.presentation_contexts if pc.context_id == pdvs(captured)[0][0]
    ]
    assert context.transfer_syntax is not None
    with storescp(tmp_path, "-pdu", "4096") as port:
        peer = Peer(port)
        ac = associate(peer, CT_IMAGE_STORAGE, context.transfer_syntax)
        assert ac.user_information.max_length == 4096
        peer.send(fragment_pdata(1, True, command, 4096))
        fragments = fragment_pdata(1, False, dataset, 4096)
        assert struct.unpack(">I", fragments[2:6])[0] == 4096
        peer.send(fragments)
        assert command_status(receive_command(peer)) == 0x0000
        release(peer)
    [stored] = list(tmp_path.iterdir())
    assert stored.stat().st_size > len(dataset)
