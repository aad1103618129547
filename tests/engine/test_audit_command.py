"""``dicomrelay audit`` on a node's ledger: by patient, study, organisation and
time; as JSON, as DICOM audit messages in a file and sent to syslog."""

from __future__ import annotations

import os
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson

from dicomrelay import scan_file

from .helpers import Pki, make_study, study_files
from .processes import dicomrelay
from .test_policy_send import write_config


def test_the_audit_trail_is_queried_and_exported(tmp_path: Path) -> None:
    config = os.fspath(write_config(tmp_path, Pki(tmp_path / "pki")))
    study = make_study(tmp_path / "mr", 2, profile="mr", seed=3)
    info = scan_file(study_files(study)[0])
    refused = dicomrelay("send", os.fspath(study), "--to", "RX2", "--config", config)
    assert refused.returncode == 1

    def rows(*conditions: str) -> list[dict[str, object]]:
        done = dicomrelay("audit", "--config", config, "--json", *conditions)
        assert done.returncode == 0, done.stderr
        return [orjson.loads(line) for line in done.stdout.splitlines()]

    [row] = rows("--patient", info.patient_id or "")
    assert (row["action"], row["org"], row["outcome"]) == ("policy-refused", "RX2", "minor_failure")
    assert row["study_uid"] == info.study_instance_uid
    assert rows("--study", info.study_instance_uid or "") == [row]
    assert rows("--org", "rx2", "--since", "1h") == [row]
    assert rows("--patient", "nobody") == []
    assert rows("--until", "2000-01-01") == []

    table = dicomrelay("audit", "--config", config)
    assert "policy-refused" in table.stdout
    assert "no rule allows MR" in table.stdout

    atna = tmp_path / "audit.xml"
    written = dicomrelay("audit", "--config", config, "--atna", os.fspath(atna))
    assert written.returncode == 0, written.stderr
    [message] = atna.read_text().splitlines()
    root = ET.fromstring(message)
    assert root.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]
    ids = {o.get("ParticipantObjectID") for o in root.findall("ParticipantObjectIdentification")}
    assert ids == {info.study_instance_uid, info.patient_id}

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(10)
        url = f"udp://127.0.0.1:{collector.getsockname()[1]}"
        sent = dicomrelay("audit", "--config", config, "--syslog", url)
        assert sent.returncode == 0, sent.stderr
        assert f"1 audit messages sent to {url}" in sent.stderr
        datagram = collector.recv(65536)
    assert datagram.startswith(b"<85>1 ")
    assert datagram.endswith(message.encode())


def test_audit_mistakes_are_one_line(tmp_path: Path) -> None:
    config = os.fspath(write_config(tmp_path, Pki(tmp_path / "pki")))
    never_ran = dicomrelay("audit", "--config", config)
    assert never_ran.returncode == 1
    assert "no ledger in" in never_ran.stderr
    assert not (tmp_path / "data").exists()
    bad_time = dicomrelay("audit", "--config", config, "--since", "last tuesday")
    assert bad_time.returncode == 2
    assert "not a time: 'last tuesday'" in bad_time.stderr
    for out in (bad_time, never_ran):
        assert len(out.stderr.strip().splitlines()) == 1
