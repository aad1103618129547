"""``dicomrelay serve`` told to stop (SIGTERM) while a DICOMweb download is
under way: it stops, whole, within its grace period. A stop signal once
raised ``KeyboardInterrupt`` wherever the main thread was; landing inside
anyio's cancel-scope bookkeeping of a streaming response, it left the event
loop waiting forever (one stop in twelve, with downloads running)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from dicomrelay.synth import PROFILES, write_study
from dicomrelay.web.server import SHUTDOWN_SECONDS

from .helpers import Pki, study_files
from .processes import Child
from .web_helpers import create_token, read_datasets, serving, write_config

STOPS = 3


def stalled_download(port: int, study: str, token: str) -> socket.socket:
    """A GET of the whole study whose client reads its first bytes, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        f"GET /dicomweb/studies/{study} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\n"
        'Accept: multipart/related; type="application/dicom"; transfer-syntax=*\r\n\r\n'.encode()
    )
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    return sock


def test_sigterm_stops_a_node_with_downloads_under_way(tmp_path: Path, orgs: Pki) -> None:
    config = write_config(tmp_path, orgs)
    token = create_token(config, "viewer", "write")
    files = study_files(write_study(tmp_path / "study", PROFILES["cr"], 3))  # 3 x 8 MB
    with serving(config) as s:
        s.client(token).store_instances(read_datasets(files))
    study = read_datasets(files[:1])[0].StudyInstanceUID

    for _ in range(STOPS):
        node = Child.dicomrelay("serve", "--config", os.fspath(config))
        try:
            port = int(node.expect(r"DICOMweb on port (\d+)", timeout=30)[1])
            downloads = [stalled_download(port, study, token) for _ in range(2)]
            time.sleep(0.2)
            node.popen.send_signal(signal.SIGTERM)
            began = time.monotonic()
            code = node.popen.wait(timeout=SHUTDOWN_SECONDS + 15)
            took = time.monotonic() - began
        finally:
            node.stop()
        for sock in downloads:
            sock.close()
        assert code == 0, node.output()
        assert took < SHUTDOWN_SECONDS + 5, f"{took:.1f} s to stop"
        node.expect(r"node RX1 stopped", timeout=5)
        assert "cancel scope" not in node.output(), node.output()
