"""Real DICOM peers for tests: free ports, and processes waited on until they listen."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import dicomrelay

DCMTK = Path("/usr/bin")
# Child processes import this tree's package, whatever is installed.
PACKAGE_ROOT = str(Path(dicomrelay.__file__).resolve().parent.parent)
ENV = {**os.environ, "TCP_NODELAY": "1", "PYTHONPATH": PACKAGE_ROOT}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


@contextmanager
def listening(command: Sequence[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process until the block ends; yields once it listens."""
    proc = subprocess.Popen(
        list(command), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port)
        yield proc
    finally:
        proc.terminate()
        # A loaded machine can take seconds to start Python's shutdown; a hang
        # is still a failure, after a minute.
        proc.wait(timeout=60)


def run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), env=ENV, capture_output=True, text=True, timeout=300)


def dicomrelay_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dicomrelay", *args]
