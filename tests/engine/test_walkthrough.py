"""The README's walk-through, as a person would follow it: two organisations
from nothing, with the command line alone (``pki``, the README's own TOML,
``serve``, ``send``, ``status``), a study delivered byte for byte, and a
``send`` killed mid-transfer finished by the running ``serve``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from dicomrelay import scan_file
from dicomrelay.receipt import Receipt

from .helpers import closed_port, make_study, source_by_sop, study_files
from .processes import Child, dicomrelay, last_json_line

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Two organisations, from nothing to a delivered study"


def readme_section() -> str:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return text[start:end]


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", readme_section(), flags=re.S)


def run(cwd: Path, line: str) -> str:
    """One of the README's shell lines (its comment dropped), as the shell would run it."""
    words = line.split("#", 1)[0].split()
    assert words[0] == "dicomrelay", line
    result = subprocess.run(
        [sys.executable, "-m", "dicomrelay", *words[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{line}\n{result.stderr}"
    return result.stdout


def serve(toml: Path) -> Child:
    child = Child.dicomrelay("serve", "--config", os.fspath(toml))
    child.expect(r"serving \(port \d+\)", timeout=30)
    return child


def test_two_organisations_from_nothing(tmp_path: Path) -> None:
    pki_lines, run_lines = (block.strip().splitlines() for block in readme_blocks("sh"))
    for line in pki_lines:
        run(tmp_path, line)
    assert sorted(p.name for p in (tmp_path / "exchange-ca").iterdir()) == [
        "ca-key.pem",
        "ca.pem",
    ]
    assert (tmp_path / "rx1" / "rx1-key.pem").stat().st_mode & 0o077 == 0

    # rx1.toml as the README gives it; rx2.toml with the two organisations swapped.
    [rx1_text] = readme_blocks("toml")
    ports = {"7701": str(closed_port()), "7702": str(closed_port())}
    rx1_text = re.sub(r"770[12]", lambda m: ports[m.group(0)], rx1_text)
    swap = {"RX1": "RX2", "RX2": "RX1", "rx1": "rx2", "rx2": "rx1"}
    swap |= {ports["7701"]: ports["7702"], ports["7702"]: ports["7701"]}
    pattern = "|".join(re.escape(k) for k in swap)
    rx2_text = re.sub(pattern, lambda m: swap[m.group(0)], rx1_text)
    (tmp_path / "rx1.toml").write_text(rx1_text)
    (tmp_path / "rx2.toml").write_text(rx2_text)

    source = make_study(tmp_path / "study", 12, seed=7)
    serve_lines = [line for line in run_lines if " serve " in line]
    assert len(serve_lines) == 2
    rx2 = serve(tmp_path / "rx2.toml")
    rx1 = serve(tmp_path / "rx1.toml")
    try:
        [send_line] = [line for line in run_lines if " send " in line]
        receipt = Receipt.from_json(run(tmp_path, send_line).strip().splitlines()[-1].encode())
        assert (receipt.sender, receipt.receiver) == ("RX1", "RX2")
        assert len(receipt.instances) == 12

        # A second study, its send killed once the serving node has started it.
        second = make_study(tmp_path / "second", 40, seed=8)
        send = Child.dicomrelay(
            "send", os.fspath(second), "--to", "RX2", "--config", os.fspath(tmp_path / "rx1.toml")
        )
        send.expect(r"started", timeout=30)
        assert send.kill()
        done = None
        for _ in range(600):
            status = last_json_line(
                dicomrelay("status", "--json", "--config", os.fspath(tmp_path / "rx1.toml"))
            )
            done = [t for t in status["transfers"] if t["state"] == "done"]
            if len(done) == 2:
                break
            time.sleep(0.1)
        assert done is not None
        assert len(done) == 2, status
        assert rx1.alive()
        assert rx2.alive()
    finally:
        rx1.stop()
        rx2.stop()

    [status_line] = [line for line in run_lines if " status " in line]
    assert "received_committed: 2" in run(tmp_path, status_line)
    # Byte for byte: what RX2 stored is what RX1 read.
    # Byte for byte, out of RX2's store as Part 10 files.
    sent = source_by_sop([*study_files(source), *study_files(second)])
    out = tmp_path / "exported"
    studies = {
        scan_file(p).study_instance_uid for p in [*study_files(source), *study_files(second)]
    }
    for study in studies:
        run(tmp_path, f"dicomrelay export {study} exported --config rx2.toml")
    stored = source_by_sop(study_files(out))
    assert stored == sent
