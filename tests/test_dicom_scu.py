"""Our SCU against DCMTK's storescp: C-ECHO, and C-STORE of synthetic studies
and of every pydicom test file storescp accepts, datasets byte-identical."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom.data
import pytest

import dicomrelay
from dicomrelay import InstanceInfo, scan_file, scan_many, synth

STORESCP = Path("/usr/bin/storescp")
pytestmark = pytest.mark.skipif(not STORESCP.exists(), reason="DCMTK is not installed")
PACKAGE_ROOT = str(Path(dicomrelay.__file__).resolve().parent.parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """storescp keeping every dataset bit for bit (+B), any syntax (+xa) and SOP class (-pm)."""
    port, out = free_port(), tmp_path / "received"
    out.mkdir()
    proc = subprocess.Popen(
        [str(STORESCP), "-od", str(out), "-aet", "STORESCP", "-pm", "+xa", "+B", str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port, out
    proc.terminate()
    proc.wait(timeout=10)


def dicomrelay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
    return subprocess.run(
        [sys.executable, "-m", "dicomrelay", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


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
