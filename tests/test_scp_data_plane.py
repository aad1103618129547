"""The storage SCP's native data plane: file meta against a reference
encoding, the receiver fed in any pieces (datasets in their files, digested
and scanned; hand-back of other PDUs; broken framing), and a live SCP
answering bytes that are not PDUs, or PDVs it never accepted, with A-ABORT
while it goes on serving."""

from __future__ import annotations

import hashlib
import random
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from dicomrelay._native import (
    AssociateRq,
    PresentationContextRq,
    ReleaseRq,
    ScpCommand,
    ScpEnd,
    ScpMessage,
    ScpReceiver,
    SparePool,
    UserInformation,
    fragment_pdata,
)
from dicomrelay.dicom.association import Aborted, Association, AssociationAccepted
from dicomrelay.dicom.dimse import CEchoRq, CStoreRq
from dicomrelay.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, file_meta
from dicomrelay.dicom.scp import StoreScp
from dicomrelay.dicom.scu import Client
from dicomrelay.errors import PduError

pytestmark = pytest.mark.anyio

EXPLICIT_LE = "1.2.840.10008.1.2.1"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


def anyio_backend() -> str:
    return "asyncio"


def reference_meta(sop_class: str, sop_instance: str, syntax: str, ae: str | None) -> bytes:
    """PS3.10 7.1 written out by hand, as the SCP wrote it in Python before."""

    def element(number: int, vr: bytes, value: bytes) -> bytes:
        if vr == b"OB":
            return struct.pack("<HH2sHI", 2, number, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 2, number, vr, len(value)) + value

    def uid(v: str) -> bytes:
        return v.encode() + b"\0" * (len(v) % 2)

    def text(v: str) -> bytes:
        return v.encode() + b" " * (len(v) % 2)

    body = b"".join(
        [
            element(0x0001, b"OB", b"\x00\x01"),
            element(0x0002, b"UI", uid(sop_class)),
            element(0x0003, b"UI", uid(sop_instance)),
            element(0x0010, b"UI", uid(syntax)),
            element(0x0012, b"UI", uid(IMPLEMENTATION_CLASS_UID)),
            element(0x0013, b"SH", text(IMPLEMENTATION_VERSION)),
            *([element(0x0016, b"AE", text(ae))] if ae else []),
        ]
    )
    return b"\0" * 128 + b"DICM" + element(0x0000, b"UL", struct.pack("<I", len(body))) + body


@pytest.mark.parametrize("ae", [None, "SCU", "EVEN"])
@pytest.mark.parametrize("instance", ["1.2.3", "1.2.34"])
def test_file_meta_matches_the_standard_layout(ae: str | None, instance: str) -> None:
    made = file_meta(
        sop_class_uid=SC_STORAGE,
        sop_instance_uid=instance,
        transfer_syntax_uid=EXPLICIT_LE,
        source_ae_title=ae,
    )
    assert made == reference_meta(SC_STORAGE, instance, EXPLICIT_LE, ae)


def dataset(uid: str, pixels: int) -> bytes:
    """Explicit VR little endian: SOP Class and Instance UID, Study Instance
    UID, then ``pixels`` bytes of pixel data."""
    out = b""
    for group, element, value in [
        (0x0008, 0x0016, SC_STORAGE),
        (0x0008, 0x0018, uid),
        (0x0020, 0x000D, "1.2.9"),
    ]:
        raw = value.encode() + b"\0" * (len(value) % 2)
        out += struct.pack("<HH2sH", group, element, b"UI", len(raw)) + raw
    data = bytes(i % 251 for i in range(pixels))
    return out + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, len(data)) + data


@pytest.fixture
def spares(tmp_path: Path) -> Iterator[SparePool]:
    pool = SparePool(tmp_path / "incoming", keep=2)
    yield pool
    pool.close()


def left_in(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def receiver(spares: SparePool) -> ScpReceiver:
    return ScpReceiver(
        spares,
        contexts=[(1, EXPLICIT_LE)],
        calling_ae_title="SCU",
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION,
        digest="sha256",
        max_pdu_length=16384,
    )


def test_stores_arrive_in_their_files_whatever_the_pieces(spares: SparePool) -> None:
    sets = {f"1.2.3.{n}": dataset(f"1.2.3.{n}", 20_000 * n) for n in range(1, 4)}
    stream = b""
    for n, (uid, data) in enumerate(sets.items(), 1):
        rq = CStoreRq(message_id=n, sop_class_uid=SC_STORAGE, sop_instance_uid=uid)
        stream += fragment_pdata(1, True, rq.encode(), 16384)
        stream += fragment_pdata(1, False, data, 16384)
    stream += fragment_pdata(1, True, CEchoRq(message_id=9).encode(), 16384)
    release = ReleaseRq().encode()
    stream += release + b"after"
    rng = random.Random(11)
    for _ in range(3):
        r = receiver(spares)
        events: list[ScpCommand | ScpMessage | ScpEnd] = []
        at = 0
        while at < len(stream):
            step = rng.randint(1, 40_000)
            events += r.feed(stream[at : at + step])
            at += step
            if events and isinstance(events[-1], ScpEnd):
                break
        # Each dataset's command comes ahead of it, numbered.
        commands = [e for e in events if isinstance(e, ScpCommand)]
        assert [(c.sequence, c.context_id) for c in commands] == [(1, 1), (2, 1), (3, 1)]
        *messages, end = [e for e in events if not isinstance(e, ScpCommand)]
        assert isinstance(end, ScpEnd)
        assert end.kind == "handback"
        assert [m.sequence for m in messages if isinstance(m, ScpMessage)][:3] == [1, 2, 3]
        # The release request, and what came after it in the same piece.
        assert end.data.startswith(release)
        assert (release + b"after").startswith(end.data)
        assert [m.has_dataset for m in messages if isinstance(m, ScpMessage)] == [
            True,
            True,
            True,
            False,
        ]
        for message, (uid, data) in zip(messages, sets.items(), strict=False):
            assert isinstance(message, ScpMessage)
            assert message.path is not None
            stored = Path(message.path).read_bytes()
            meta = file_meta(
                sop_class_uid=SC_STORAGE,
                sop_instance_uid=uid,
                transfer_syntax_uid=EXPLICIT_LE,
                source_ae_title="SCU",
            )
            assert stored == meta + data
            assert message.digest == hashlib.sha256(stored).hexdigest()
            assert message.length == len(stored)
            assert message.info is not None
            assert message.info.sop_instance_uid == uid
            assert message.error is None
            assert message.scan_error is None
            Path(message.path).unlink()


def test_broken_streams_end_the_data_plane_with_a_reason(spares: SparePool, tmp_path: Path) -> None:
    r = receiver(spares)
    [end] = r.feed(b"\x42" + bytes(9))
    assert isinstance(end, ScpEnd)
    assert end.kind == "pdu-error"
    assert isinstance(end.error, PduError)
    assert end.error.abort_reason == 1
    assert r.feed(b"more") == []  # nothing after the end
    r = receiver(spares)
    [end] = r.feed(fragment_pdata(3, True, CEchoRq(message_id=1).encode(), 16384))
    assert isinstance(end, ScpEnd)
    assert end.kind == "dimse-error"
    assert "presentation context 3" in end.reason
    # Two PDUs of a dataset, then the association ends: no file of it is left.
    r = receiver(spares)
    rq = CStoreRq(message_id=1, sop_class_uid=SC_STORAGE, sop_instance_uid="1.2.5")
    pdus = fragment_pdata(1, False, dataset("1.2.5", 60_000), 16384)
    [command] = r.feed(fragment_pdata(1, True, rq.encode(), 16384) + pdus[: 2 * (16384 + 6)])
    assert isinstance(command, ScpCommand)
    assert command.command == rq.encode()
    [end] = r.feed(ReleaseRq().encode())
    assert isinstance(end, ScpEnd)
    assert end.kind == "handback"
    spares.close()  # and the spare files with it
    assert left_in(tmp_path / "incoming") == []


def associate(port: int) -> tuple[socket.socket, Association]:
    """An association proposing SC storage in explicit VR little endian, by hand."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    association = Association(requestor=True, max_pdu_length=16384)
    association.request(
        AssociateRq(
            called_ae_title="RELAY",
            calling_ae_title="ROGUE",
            presentation_contexts=[
                PresentationContextRq(
                    context_id=1, abstract_syntax=SC_STORAGE, transfer_syntaxes=[EXPLICIT_LE]
                )
            ],
            user_information=UserInformation(max_length=16384),
        )
    )
    association.connected()
    sock.sendall(association.data_to_send())
    indications = association.receive(sock.recv(1 << 16))
    assert any(isinstance(i, AssociationAccepted) for i in indications), indications
    return sock, association


def answer_to(sock: socket.socket, association: Association, rogue: bytes) -> list[object]:
    """What the SCP answers ``rogue`` with: up to an A-ABORT (after which it
    waits for this side to close, PS3.8 Sta13), or its closing the connection."""
    sock.sendall(rogue)
    indications: list[object] = []
    while not any(isinstance(i, Aborted) for i in indications) and (data := sock.recv(1 << 16)):
        indications += association.receive(data)
    return indications


async def test_the_live_scp_aborts_rogue_bytes_and_goes_on(tmp_path: Path) -> None:
    scp = StoreScp(ae_title="RELAY", output_dir=tmp_path / "out", quarantine_dir=tmp_path / "q")
    ports: list[int] = []
    up = anyio.Event()

    def ready(port: int) -> None:
        ports.append(port)
        up.set()

    rq = CStoreRq(message_id=1, sop_class_uid=SC_STORAGE, sop_instance_uid="1.2.6")
    rogues = {
        "not a PDU": b"\x42" + bytes(9),
        "an unaccepted context": fragment_pdata(5, True, rq.encode(), 16384),
        "a command inside a dataset": fragment_pdata(1, True, rq.encode(), 16384)
        + fragment_pdata(1, False, dataset("1.2.6", 40_000), 16384)[: 16384 + 6]
        + fragment_pdata(1, True, rq.encode(), 16384),
    }
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: scp.serve("127.0.0.1", 0, ready=ready))
        await up.wait()
        for what, rogue in rogues.items():
            sock, association = await anyio.to_thread.run_sync(associate, ports[0])
            with sock:
                answer = await anyio.to_thread.run_sync(answer_to, sock, association, rogue)
            assert [type(i) for i in answer] == [Aborted], what
        async with await Client.connect("127.0.0.1", ports[0], called_ae_title="RELAY") as client:
            assert await client.echo() == 0x0000
        tg.cancel_scope.cancel()
    assert list((tmp_path / "out").glob("*.dcm")) == []
    assert len(list((tmp_path / "out" / ".incoming").iterdir())) == 0
