"""Our SCU against DCMTK's storescp: C-ECHO, and C-STORE of synthetic studies
and of every pydicom test file storescp accepts, datasets byte-identical."""

from __future__ import annotations

import contextlib
import glob
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom.data
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicomrelay import InstanceInfo, scan_file, scan_many, synth
from peers import DCMTK, dicomrelay_command, free_port, listening, run

STORESCP = DCMTK / "storescp"
pytestmark = pytest.mark.skipif(not STORESCP.exists(), reason="DCMTK is not installed")


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """storescp keeping every dataset bit for bit (+B), any syntax (+xa) and SOP class (-pm)."""
    port, out = free_port(), tmp_path / "received"
    out.mkdir()
    command = [str(STORESCP), "-od", str(out), "-aet", "STORESCP", "-pm", "+xa", "+B", str(port)]
    with listening(command, port):
        yield port, out


def dicomrelay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run(dicomrelay_command(*args))


def dataset_bytes(path: Path, info: InstanceInfo | None = None) -> bytes:
    info = info or scan_file(path)
    return path.read_bytes()[info.dataset_offset :]


def test_echoscu(storescp: tuple[int, Path]) -> None:
    port, _ = storescp
    result = dicomrelay_cli("echoscu", "127.0.0.1", str(port), "-aec", "STORESCP")
    assert result.returncode == 0, result.stderr
    assert "0x0000" in result.stdout


def one_line(result: subprocess.CompletedProcess[str], command: str) -> str:
    """The single line a failed command printed, without its prefix; exit status 1."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"dicomrelay {command}: "), line
    return line.removeprefix(f"dicomrelay {command}: ")


@pytest.mark.parametrize("command", ["echoscu", "storescu"])
def test_nothing_listening_is_one_line_naming_host_port_and_refusal(
    command: str, tmp_path: Path
) -> None:
    port = free_port()
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 2)
    paths = [str(study)] if command == "storescu" else []
    line = one_line(dicomrelay_cli(command, "127.0.0.1", str(port), *paths), command)
    assert line.startswith(f"cannot connect to 127.0.0.1:{port}: connection refused"), line


def test_a_connection_never_accepted_times_out_in_one_line() -> None:
    """A listener whose backlog is full drops the SYN: the connect hangs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        waiting = []
        for _ in range(3):  # fill the accept queue, never accepted
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            waiting.append(s)
        try:
            result = dicomrelay_cli("echoscu", "127.0.0.1", str(port), "-to", "1")
        finally:
            for s in waiting:
                s.close()
    line = one_line(result, "echoscu")
    assert line == f"cannot connect to 127.0.0.1:{port}: no answer within 1 s"


def test_an_unknown_host_is_named() -> None:
    line = one_line(dicomrelay_cli("echoscu", "no-such-host.invalid", "104"), "echoscu")
    assert line.startswith("cannot connect to no-such-host.invalid:104: "), line


def test_a_listener_that_never_answers_the_association_times_out(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        result = dicomrelay_cli("echoscu", "127.0.0.1", str(port), "-to", "1")
    line = one_line(result, "echoscu")
    assert line == f"127.0.0.1:{port} did not answer the association within 1 s"


def received_by_sop(out: Path) -> dict[str, Path]:
    return {scan_file(p).sop_instance_uid or "": p for p in out.iterdir()}


def test_storescu_delivers_a_study_intact(storescp: tuple[int, Path], tmp_path: Path) -> None:
    port, out = storescp
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 60)
    result = dicomrelay_cli("storescu", "127.0.0.1", str(port), str(study), "-aec", "STORESCP")
    assert result.returncode == 0, result.stderr
    received = received_by_sop(out)
    assert len(received) == 60
    for path in study.iterdir():
        info = scan_file(path)
        assert dataset_bytes(received[info.sop_instance_uid or ""]) == dataset_bytes(path, info)


def test_storescu_sends_every_pydicom_file_storescp_takes(
    storescp: tuple[int, Path],
) -> None:
    port, out = storescp
    folder = os.path.dirname(pydicom.data.get_testdata_file("CT_small.dcm") or "")
    candidates = sorted(glob.glob(os.path.join(folder, "*.dcm")))
    infos = scan_many(candidates)
    sendable = {
        p: i
        for p, i in zip(candidates, infos, strict=True)
        if isinstance(i, InstanceInfo) and i.has_meta and i.sop_class_uid and i.sop_instance_uid
    }
    assert len(sendable) > 40
    result = dicomrelay_cli("storescu", "127.0.0.1", str(port), *sendable, "-aec", "STORESCP")
    assert result.returncode == 0, result.stderr
    received = received_by_sop(out)
    by_uid = {i.sop_instance_uid: (p, i) for p, i in sendable.items()}
    assert set(received) == set(by_uid)
    for uid, (path, info) in by_uid.items():
        sent = dataset_bytes(Path(path), info)
        sent += b"\0" * (len(sent) % 2)  # an odd (deflated) stream travels padded
        assert dataset_bytes(received[uid or ""]) == sent, path


@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("abort", "the peer aborted the association (source 0, reason 0)"),
        ("close", "the peer closed the connection"),
    ],
)
def test_storescu_says_where_an_aborted_batch_stopped(how: str, said: str, tmp_path: Path) -> None:
    """A peer (pynetdicom) that aborts the association, or closes the
    connection, at the fourth C-STORE: storescu names that file, how many were
    sent (and refused) and how many not, and exits 1."""
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 10)
    stores: list[str] = []

    def on_store(event: evt.Event) -> int:
        stores.append(str(event.dataset.SOPInstanceUID))
        if len(stores) == 4:
            if how == "abort":
                event.assoc.abort()
            else:
                assert event.assoc.dul.socket is not None
                event.assoc.dul.socket.close()
        return 0xA700 if len(stores) == 2 else 0x0000  # the second: out of resources

    ae = AE(ae_title="ABORTING")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    try:
        result = dicomrelay_cli("storescu", "127.0.0.1", str(port), str(study))
    finally:
        server.shutdown()
    second, _, fourth = sorted(study.iterdir())[1:4]
    assert scan_file(fourth).sop_instance_uid == stores[3]
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"dicomrelay storescu: {second}: status 0xa700",
        f"dicomrelay storescu: {said} while sending {fourth}: 3 of 10 sent (1 refused), 7 not sent",
    ]


def test_storescu_with_nothing_to_send_says_so_in_one_line(tmp_path: Path) -> None:
    port = str(free_port())
    missing = dicomrelay_cli("storescu", "127.0.0.1", port, str(tmp_path / "absent"))
    assert missing.returncode == 2
    assert (
        missing.stderr == f"dicomrelay storescu: {tmp_path / 'absent'}: no such file or directory\n"
    )
    (tmp_path / "notes.txt").write_text("not DICOM\n")
    nothing = dicomrelay_cli("storescu", "127.0.0.1", port, str(tmp_path / "notes.txt"))
    assert nothing.returncode == 1
    skipped, last = nothing.stderr.splitlines()
    assert skipped.startswith(f"dicomrelay storescu: skipping {tmp_path / 'notes.txt'}: ")
    assert (
        last
        == f"dicomrelay storescu: nothing to send: no DICOM instance in {tmp_path / 'notes.txt'}"
    )
    no_tls = dicomrelay_cli("echoscu", "127.0.0.1", port, "+cf", str(tmp_path / "ca.pem"))
    assert (no_tls.returncode, no_tls.stderr) == (
        2,
        "dicomrelay echoscu: +cf and --check-hostname need +tls or +tla\n",
    )
