"""Run Python in a fresh interpreter, so that a crash (a segfault, a Rust abort,
a stack overflow) is a test result and not the end of the test run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

TESTS_DIR = Path(__file__).parent


@dataclass(frozen=True)
class ChildResult:
    returncode: int
    stdout: str
    stderr: str


def run_child(code: str, *, timeout: float = 60.0) -> ChildResult:
    """Run `code` with tests/ as the working directory (its modules importable)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=TESTS_DIR,
        check=False,
    )
    return ChildResult(proc.returncode, proc.stdout, proc.stderr)


def scan_in_child(data: bytes, tmp_path: Path, *, timeout: float = 60.0) -> ChildResult:
    """Scan `data` in a child; stdout is `ok`, or `DicomParseError: <message>`,
    then a line with the growth of peak RSS in KiB over the baseline."""
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    return run_child(
        f"""
        import dicomrelay
        from mutation_worker import peak_rss_kib, rss_baseline_kib
        data = open({str(path)!r}, "rb").read()
        base = rss_baseline_kib()
        try:
            dicomrelay.scan(data)
            print("ok")
        except dicomrelay.DicomParseError as e:
            print(f"DicomParseError: {{e}}")
        print(peak_rss_kib() - base)
        """,
        timeout=timeout,
    )
