"""Real node processes for the CLI and kill tests: TOML configurations, and
children whose output is read line by line on a thread (so waits can time out)."""

from __future__ import annotations

import collections
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from dicomrelay.pki import Identity

from .helpers import LOCALHOST


def node_toml(
    path: Path,
    identity: Identity,
    *,
    data_dir: Path,
    peer: tuple[str, int],
    listen_port: int | None = None,
    limits: dict[str, float] | None = None,
    node: dict[str, str] | None = None,
    store: dict[str, float] | None = None,
) -> Path:
    """Write a node's configuration file (the format ``dicomrelay serve`` reads);
    ``node``: more string settings under ``[node]`` (ledger, worker, ...)."""
    code, port = peer
    lines = [
        "[node]",
        f'org = "{identity.code}"',
        f'data_dir = "{data_dir}"',
        *([f"listen_port = {listen_port}"] if listen_port is not None else []),
        *(f'{k} = "{v}"' for k, v in (node or {}).items()),
        "",
        "[tls]",
        f'cert = "{identity.cert}"',
        f'key = "{identity.key}"',
        f'ca = "{identity.ca}"',
        "",
        "[[peers]]",
        f'org = "{code}"',
        f'host = "{LOCALHOST}"',
        f"port = {port}",
        "",
        *(["[store]", *(f"{k} = {v}" for k, v in store.items()), ""] if store else []),
    ]
    if limits:
        lines += ["[limits]", *(f"{k} = {v!r}" for k, v in limits.items()), ""]
    path.write_text("\n".join(lines))
    return path


def receiver_toml(root: Path, identity: Identity, port: int) -> Path:
    """``root/receiver.toml``: a node listening on ``port`` (data in
    ``root/receiver``), sending nowhere (its one peer is a placeholder)."""
    return node_toml(
        root / "receiver.toml",
        identity,
        data_dir=root / "receiver",
        listen_port=port,
        peer=("RX1", 1),
        # Small segments: a run rolls over into many (and preallocates little).
        store={"segment_mb": 2},
    )


class Child:
    """A child process; stdout and stderr merged and read into a queue of lines."""

    def __init__(self, args: list[str], *, stdin: bool = False) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.tail: collections.deque[str] = collections.deque(maxlen=60)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def dicomrelay(cls, *args: str) -> Child:
        return cls([sys.executable, "-m", "dicomrelay", *args])

    @classmethod
    def script(cls, path: Path, *args: str, stdin: bool = False) -> Child:
        return cls([sys.executable, os.fspath(path), *args], stdin=stdin)

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.tail.append(line.rstrip("\n"))
            self.lines.put(line)
        self.lines.put(None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return "\n".join(self.tail)

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait for a line matching ``pattern``; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no line matching {pattern!r} in {timeout}s:\n{self.output()}"
                )
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.popen.wait()
                raise AssertionError(
                    f"{self.args[1:4]} exited ({self.popen.returncode}) before {pattern!r}:\n"
                    f"{self.output()}"
                )
            match = regex.search(line)
            if match:
                return match

    def send_line(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def kill(self) -> bool:
        """SIGKILL; True if this killed it (it was still running)."""
        if self.popen.poll() is not None:
            return False
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self._reader.join(5)
        return self.popen.returncode == -signal.SIGKILL

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(5)
        if self.popen.stdin is not None:
            self.popen.stdin.close()


def dicomrelay(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomrelay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def last_json_line(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output\n{result.stderr}"
    summary = orjson.loads(lines[-1])
    assert isinstance(summary, dict)
    return summary
