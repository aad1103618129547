"""Every mistake an operator can make at the command line: one line on
stderr that names what and where, exit status 2 for usage and 1 for
failures, and never a traceback (unless ``--debug`` asks for one)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomrelay import pki, synth

USAGE, FAILURE = 2, 1


def dicomrelay(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "dicomrelay", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "DICOMRELAY_DEBUG": "", **(env or {})},
    )
    return result.returncode, result.stderr


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a CA, RX1's certificate, and configuration files right and wrong."""
    root = tmp_path_factory.mktemp("cli-errors")
    pki.make_ca(root / "ca")
    pki.issue_org(root / "ca", "RX1", root)
    tls = '[tls]\ncert = "rx1.pem"\nkey = "rx1-key.pem"\nca = "ca/ca.pem"\n'
    peer = '[[peers]]\norg = "RX2"\nhost = "127.0.0.1"\nport = 1\n'
    files = {
        "good.toml": f'[node]\norg = "RX1"\ndata_dir = "data"\n{tls}{peer}',
        "syntax.toml": '[node]\norg = "RX1"\nlisten_port = \n',
        "no-node.toml": tls,
        "no-org.toml": f'[node]\ndata_dir = "data"\n{tls}',
        "misspelt.toml": f'[node]\norg = "RX1"\ndata_dri = "data"\n{tls}',
        "wrong-type.toml": f'[node]\norg = "RX1"\nlisten_port = "7700"\n{tls}',
        "bad-port.toml": f'[node]\norg = "RX1"\nlisten_port = 70000\n{tls}',
        "no-cert.toml": '[node]\norg = "RX1"\n[tls]\ncert = "gone.pem"\nkey = "rx1-key.pem"\n'
        'ca = "ca/ca.pem"\n',
        "bad-org.toml": f'[node]\norg = "R X"\n{tls}',
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "not-a-dir").write_text("a file")
    return root


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("args", "status", "expected"),
    [
        (("status", "--config", "missing.toml"), FAILURE, "missing.toml: no such configuration"),
        (("status", "--config", "syntax.toml"), FAILURE, "syntax.toml:3:15: invalid value"),
        (("status", "--config", "no-node.toml"), FAILURE, "no-node.toml: needs 'node'"),
        (("status", "--config", "no-org.toml"), FAILURE, "no-org.toml: [node] needs 'org'"),
        (
            ("status", "--config", "misspelt.toml"),
            FAILURE,
            "misspelt.toml: [node] has no setting 'data_dri'",
        ),
        (
            ("status", "--config", "wrong-type.toml"),
            FAILURE,
            "[node] listen_port must be a whole number from 0 to 65535, not '7700'",
        ),
        (
            ("serve", "--config", "bad-port.toml"),
            FAILURE,
            "[node] listen_port must be a whole number from 0 to 65535, not 70000",
        ),
        (("serve", "--config", "no-cert.toml"), FAILURE, "[tls] cert:"),
        (("status", "--config", "bad-org.toml"), FAILURE, "organisation code 'R X' must be"),
        (("status", "--config", "good.toml"), FAILURE, "no ledger in"),
        (("send", "nowhere", "--to", "RX2", "--config", "good.toml"), USAGE, "nowhere"),
        (("send", ".", "--to", "RX9", "--config", "good.toml"), USAGE, "unknown organisation"),
        (("loadtest", "--count", "-5"), USAGE, "--count: must be at least 1, not -5"),
        (("loadtest", "--count", "0"), USAGE, "--count: must be at least 1, not 0"),
        (("loadtest", "--from", "nowhere"), USAGE, "--from nowhere: no such folder"),
        (("loadtest", "--frobnicate"), USAGE, "unrecognized arguments: --frobnicate"),
        (("loadtest", "--reconcile", "none.csv"), USAGE, "--reconcile none.csv: no such file"),
        (("reconcile", "--config", "good.toml"), USAGE, "give a STUDY_UID with --patient-id"),
        (("reconcile", "1.2", "--config", "good.toml"), USAGE, "--patient-id names the local"),
        (("reconcile", "1.2", "--patient-id", "a\\b", "--config", "good.toml"), USAGE, "backslash"),
        (("reconcile", "--list", "--config", "good.toml"), FAILURE, "no ledger in"),
        (("pki", "issue", "RX2", "--ca", "nowhere", "--out", "."), FAILURE, "no CA in nowhere"),
        (("pki", "issue", "RX1", "--ca", "ca", "--out", "."), FAILURE, "already exists"),
        (("pki", "issue", "R/X", "--ca", "ca", "--out", "."), USAGE, "organisation code"),
        (("pki", "ca", "--out", "ca"), FAILURE, "ca.pem already exists; not overwriting"),
        (("storescp", "0", "--output-dir", "not-a-dir/in"), FAILURE, "not-a-dir/in"),
    ],
    ids=lambda v: v if isinstance(v, int) else None,
)
def test_one_line_and_an_exit_status(
    site: Path, args: tuple[str, ...], status: int, expected: str
) -> None:
    code, stderr = dicomrelay(site, *args)
    line = one_line(stderr)
    assert line.startswith("dicomrelay"), line
    assert expected in line, line
    assert code == status, (code, line)


def test_status_on_a_missing_data_dir_creates_nothing(site: Path) -> None:
    toml = site / "mistyped.toml"
    toml.write_text((site / "good.toml").read_text().replace('"data"', '"dta"'))
    code, stderr = dicomrelay(site, "status", "--config", toml.name)
    assert code == FAILURE
    assert f"no ledger in {site / 'dta'}" in one_line(stderr)
    assert not (site / "dta").exists()


def test_a_busy_port_names_the_address(site: Path, busy_port: int) -> None:
    toml = site / f"busy-{busy_port}.toml"
    text = (
        (site / "good.toml")
        .read_text()
        .replace('data_dir = "data"', f'data_dir = "busy"\nlisten_port = {busy_port}')
    )
    toml.write_text(text)
    code, stderr = dicomrelay(site, "serve", "--config", toml.name)
    line = one_line(stderr)
    assert f"cannot listen on 127.0.0.1:{busy_port}: address already in use" in line, line
    assert code == FAILURE
    code, stderr = dicomrelay(site, "storescp", str(busy_port), "--output-dir", "scp-out")
    assert f"cannot listen on 0.0.0.0:{busy_port}: address already in use" in one_line(stderr)
    assert code == FAILURE


@pytest.mark.parametrize("command", ["echoscu", "storescu"])
def test_nothing_listening_names_host_port_and_refusal(site: Path, command: str) -> None:
    port = closed_port()
    study = synth.write_study(site / f"study-{port}", synth.PROFILES["mr"], 2)
    extra = (os.fspath(study),) if command == "storescu" else ()
    code, stderr = dicomrelay(site, command, "127.0.0.1", str(port), *extra)
    line = [x for x in stderr.splitlines() if x.startswith(f"dicomrelay {command}")]
    assert "Traceback" not in stderr, stderr
    assert line, stderr
    assert f"127.0.0.1:{port}" in line[-1], stderr
    assert "connection refused" in line[-1], stderr
    assert code == FAILURE


def test_debug_shows_the_traceback(site: Path) -> None:
    code, stderr = dicomrelay(site, "--debug", "status", "--config", "missing.toml")
    assert code == FAILURE
    assert "Traceback" in stderr
    assert "ConfigurationError" in stderr
    code, stderr = dicomrelay(
        site, "status", "--config", "missing.toml", env={"DICOMRELAY_DEBUG": "1"}
    )
    assert "Traceback" in stderr


def test_sigterm_ends_a_loadtest_cleanly(tmp_path: Path) -> None:
    """The temporary files go, the workers go, and the last line says why."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dicomrelay",
            "loadtest",
            "--profile",
            "mr",
            "--count",
            "20000",
            "--workdir",
            os.fspath(tmp_path),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    announced = proc.stderr.readline() + proc.stderr.readline()
    assert "temporary files: up to" in announced, announced
    assert os.fspath(tmp_path) in announced, announced
    # Wait until the studies are being written, then stop it.
    start = time.monotonic()
    while not any(tmp_path.rglob("*.dcm")) and time.monotonic() - start < 60:
        time.sleep(0.05)
    proc.terminate()
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    assert "Traceback" not in rest, rest
    assert rest.strip().splitlines()[-1] == "dicomrelay loadtest: interrupted"
    assert list(tmp_path.iterdir()) == [], "temporary files left behind"
