"""The command line: load tests end to end, and serve / send / status on nodes
configured by TOML files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dicomrelay.receipt import Receipt

from .helpers import Pki, closed_port, make_study, source_by_sop, study_files
from .processes import Child, dicomrelay, last_json_line, node_toml, receiver_toml

SUMMARY_KEYS = {
    "images",
    "failed",
    "images_per_second",
    "megabytes_per_second",
    "p50_latency_ms",
    "p99_latency_ms",
}


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        pytest.param(
            (), {"tls": True, "processes": "two", "digest": "sha256"}, id="two-processes-tls"
        ),
        pytest.param(
            ("--in-process", "--insecure-plaintext", "--digest", "blake3"),
            {"tls": False, "processes": "one", "digest": "blake3"},
            id="in-process-plaintext-blake3",
        ),
        pytest.param(
            ("--reconcile",),
            {"processes": "two", "reconciled_studies": 4, "held_studies": 0},
            id="two-processes-reconciling",
        ),
        pytest.param(
            ("--in-process", "--reconcile"),
            {"processes": "one", "reconciled_studies": 4, "held_studies": 0},
            id="in-process-reconciling",
        ),
    ],
)
def test_loadtest(tmp_path: Path, flags: tuple[str, ...], expect: dict[str, object]) -> None:
    result = dicomrelay(
        "loadtest",
        "--count",
        "200",
        "--study-size",
        "50",
        "--profile",
        "mr",
        "--json",
        "--workdir",
        os.fspath(tmp_path),
        *flags,
        timeout=300,
    )
    summary = last_json_line(result)
    assert set(summary) >= SUMMARY_KEYS, sorted(summary)
    assert summary["images"] == 200, summary
    assert summary["failed"] == 0, summary
    assert summary["images_per_second"] > 0
    assert summary["megabytes_per_second"] > 0
    assert 0 < summary["p50_latency_ms"] <= summary["p99_latency_ms"]
    for key, value in expect.items():
        assert summary[key] == value, (key, summary)
    assert list(tmp_path.iterdir()) == [], "the load test left its temporary data"


def test_serve_send_and_status(tmp_path: Path) -> None:
    orgs = Pki(tmp_path / "pki")
    port = closed_port()
    rx_toml = receiver_toml(tmp_path, orgs.identity("RX2"), port)
    sender_toml = node_toml(
        tmp_path / "sender.toml",
        orgs.identity("RX1"),
        data_dir=tmp_path / "sender",
        peer=("RX2", port),
    )
    # A node that has never run has no ledger to report on, and reading makes none.
    never_ran = dicomrelay("status", "--json", "--config", os.fspath(sender_toml))
    assert never_ran.returncode == 1
    assert "no ledger in" in never_ran.stderr
    assert not (tmp_path / "sender").exists()

    source = make_study(tmp_path / "study", 5, seed=1)
    receiver = Child.dicomrelay("serve", "--config", os.fspath(rx_toml))
    try:
        receiver.expect(rf"serving \(port {port}\)", timeout=30)
        sent = dicomrelay(
            "send", os.fspath(source), "--to", "RX2", "--config", os.fspath(sender_toml)
        )
        assert sent.returncode == 0, sent.stderr
        assert "queued" in sent.stderr
        receipt = Receipt.from_json(sent.stdout.strip().splitlines()[-1])
        receipt.verify(orgs.cert_der("RX2"))
        sources = source_by_sop(study_files(source))
        assert {i.sop_instance_uid for i in receipt.instances} == set(sources)
        assert receiver.alive()
    finally:
        receiver.stop()

    status = last_json_line(dicomrelay("status", "--json", "--config", os.fspath(sender_toml)))
    assert status["counts"]["done"] == 1
    assert status["counts"]["dead"] == status["counts"]["queued"] == 0
    [row] = status["transfers"]
    assert row["id"] == receipt.transfer_id
    assert (row["to"], row["state"], row["acked"], row["total"]) == ("RX2", "done", 5, 5)

    received = last_json_line(dicomrelay("status", "--json", "--config", os.fspath(rx_toml)))
    assert received["counts"]["received_committed"] == 1
    assert received["counts"]["stored_instances"] == 5

    text = dicomrelay("status", "--config", os.fspath(sender_toml))
    assert text.returncode == 0
    assert receipt.transfer_id in text.stdout
    assert "done" in text.stdout


def test_commands_load_only_what_they_run() -> None:
    """The parser for every command is built without importing any command's
    machinery: ``echoscu`` and ``storescu`` start as fast as an administrator
    used to DCMTK expects, not after loading the node, the ledger and the PKI."""
    heavy = [
        "dicomrelay.node",
        "dicomrelay.ledger",
        "dicomrelay.config",
        "dicomrelay.pki",
        "dicomrelay.loadtest.run",
        "dicomrelay.dicom.scp",
    ]
    probe = (
        "import sys; from dicomrelay.cli import build_parser; build_parser(); "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
