"""Our SCU against DCMTK's storescp: C-ECHO, and C-STORE of synthetic studies
and of every pydicom test file storescp accepts, datasets byte-identical."""

from __future__ import annotations

import glob
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom.data
import pytest

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


def test_echoscu_to_nothing_fails_cleanly() -> None:
    result = dicomrelay_cli("echoscu", "127.0.0.1", str(free_port()), "-to", "3")
    assert result.returncode == 1
    assert "echoscu:" in result.stderr


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
