"""Headless Chromium (Debian's ``chromium``, which ``make deps`` installs),
driven from the command line: the DOM a page makes, and a screenshot at a
given window size. Each run has a profile of its own and a virtual time
budget, so the page's images have loaded before the shot."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

DESKTOP = (1280, 800)
PHONE = (390, 844)  # a current phone's CSS pixels
ARTIFACTS_ENV = "DICOMRELAY_ARTIFACTS"  # CI keeps what lands under it


def chromium() -> str:
    """The browser's path; skipped where it is not installed (failed in CI)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    why = "headless Chromium is not installed: `make deps` installs Debian's chromium"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"in CI the browser tests must run: {why}")
    pytest.skip(why)


def screenshots_dir(fallback: Path) -> Path:
    """``$DICOMRELAY_ARTIFACTS/screenshots`` when set, else ``fallback``."""
    root = os.environ.get(ARTIFACTS_ENV)
    out = Path(root) / "screenshots" if root else fallback
    out.mkdir(parents=True, exist_ok=True)
    return out


def _run(url: str, size: tuple[int, int], *extra: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        command = [
            chromium(),
            "--headless",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            "--virtual-time-budget=5000",
            *extra,
            url,
        ]
        if os.geteuid() == 0:  # Chromium's sandbox refuses to run as root
            command.insert(2, "--no-sandbox")
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=profile)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def dump_dom(url: str, size: tuple[int, int] = DESKTOP) -> str:
    return _run(url, size, "--dump-dom").stdout


def screenshot(url: str, path: Path, size: tuple[int, int]) -> Path:
    _run(url, size, f"--screenshot={path}")
    assert path.is_file(), f"no screenshot of {url}"
    return path
