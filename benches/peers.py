"""DICOM peers the benchmarks race: DCMTK's tools, ports, servers waited on."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

import dicomrelay

T = TypeVar("T")

DCMTK = Path("/usr/bin")
# Nagle off, as DCMTK needs on loopback; child processes import this tree's package.
ENV = {
    **os.environ,
    "TCP_NODELAY": "1",
    "PYTHONPATH": str(Path(dicomrelay.__file__).resolve().parent.parent),
}


def rounds(contenders: Sequence[T], count: int) -> list[tuple[int, T]]:
    """``count`` rounds of every contender in turn, each round starting one
    further along: no contender always runs first, or always right after the
    same other one (on this machine a round's cost depends on the round just
    before it: the files it left to write back, or just deleted)."""
    n = len(contenders)
    return [(r, contenders[(r + i) % n]) for r in range(count) for i in range(n)]


def settle_disk() -> None:
    """Write back what earlier rounds left in the page cache before timing the
    next one: DCMTK never syncs, so its writeback would otherwise land in
    whichever round comes after it."""
    os.sync()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Cpu:
    """CPU seconds, user and system."""

    user: float
    system: float

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.user - other.user, self.system - other.system)

    def per_image_ms(self, images: int) -> dict[str, float]:
        return {
            "user": round(1000 * self.user / images, 3),
            "system": round(1000 * self.system / images, 3),
        }


def children_cpu() -> Cpu:
    """CPU of this process's children that have ended (and been waited for)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Cpu(r.ru_utime, r.ru_stime)


def run_client(command: Sequence[str]) -> tuple[float, Cpu]:
    """Run a client to its end: its wall time, and its CPU (the whole process,
    its start-up included)."""
    before = children_cpu()
    t0 = time.perf_counter()
    subprocess.run(list(command), env=ENV, check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    return seconds, children_cpu() - before


@dataclass(frozen=True)
class Server:
    pid: int

    def cpu(self) -> Cpu:
        """The server's CPU so far (read between rounds of work: a difference
        of two readings is what the work between them cost, without start-up)."""
        times = psutil.Process(self.pid).cpu_times()
        return Cpu(times.user, times.system)


STOP_SECONDS = 10.0  # a server told to stop (SIGTERM) ends within this


@contextmanager
def listening(command: Sequence[str], port: int) -> Iterator[Server]:
    """Run a server until the block ends; enter once it accepts connections.
    A server that outlives SIGTERM by ``STOP_SECONDS`` is killed, and the
    failure shows the end of what it wrote."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(list(command), env=ENV, stdout=subprocess.DEVNULL, stderr=log)
        try:
            _wait_listening(port)
            yield Server(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                log.seek(0)
                tail = log.read()[-4000:].decode(errors="replace")
                raise AssertionError(
                    f"{' '.join(command[-3:])}: still running {STOP_SECONDS:g} s after"
                    f" SIGTERM; the end of its output:\n{tail}"
                ) from None


def _wait_listening(port: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port}") from None
            time.sleep(0.05)
