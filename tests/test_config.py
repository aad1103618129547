"""Reading a node's TOML file: ``[dicom.tls]``, the ledger, shared work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dicomrelay.config import DicomTls, NodeConfig
from dicomrelay.errors import ConfigurationError

NODE = """
[node]
org = "RX1"
insecure_plaintext = true

[dicom]
ae_title = "RELAYA"
listen_port = 11112
allowed_calling = ["PACSA"]
"""


def touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()


def test_dicom_tls_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    path = etc / "node.toml"
    path.write_text(
        NODE
        + """
[dicom.tls]
certificate = "dicom/node.pem"
private_key = "dicom/node.key"
trusted_cas = ["dicom/pacs-ca.pem", "../shared/modalities-ca.pem"]
"""
    )
    touch(etc / "dicom" / "node.pem", etc / "dicom" / "node.key", etc / "dicom" / "pacs-ca.pem")
    touch(tmp_path / "shared" / "modalities-ca.pem")
    dicom = NodeConfig.from_toml(path).dicom
    assert dicom is not None
    assert dicom.tls == DicomTls(
        certificate=etc / "dicom" / "node.pem",
        private_key=etc / "dicom" / "node.key",
        trusted_cas=(etc / "dicom" / "pacs-ca.pem", tmp_path / "shared" / "modalities-ca.pem"),
        require_client_certificate=True,  # the default
    )
    assert dicom.tls.certificate.is_absolute()
    assert all(ca.is_absolute() for ca in dicom.tls.trusted_cas)


def test_dicom_tls_client_certificates_can_be_optional(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        NODE
        + """
[dicom.tls]
certificate = "node.pem"
private_key = "node.key"
trusted_cas = ["ca.pem"]
require_client_certificate = false
"""
    )
    touch(tmp_path / "node.pem", tmp_path / "node.key", tmp_path / "ca.pem")
    dicom = NodeConfig.from_toml(path).dicom
    assert dicom is not None
    assert dicom.tls is not None
    assert dicom.tls.require_client_certificate is False


def test_without_dicom_tls_the_dicom_face_is_plain_tcp(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(NODE)
    dicom = NodeConfig.from_toml(path).dicom
    assert dicom is not None
    assert dicom.tls is None


def test_the_ledger_is_sqlite_unless_a_postgresql_url_is_given(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(NODE)
    default = NodeConfig.from_toml(path)
    assert (default.ledger, default.ledger_schema) == (None, "dicomrelay")

    path.write_text(
        NODE.replace(
            'org = "RX1"',
            'org = "RX1"\nledger = "postgresql://relay:secret@db/relay"\nledger_schema = "rx1"',
        )
    )
    config = NodeConfig.from_toml(path)
    assert (config.ledger, config.ledger_schema) == ("postgresql://relay:secret@db/relay", "rx1")
    assert "secret" not in repr(config)

    path.write_text(NODE.replace('org = "RX1"', 'org = "RX1"\nledger = "mysql://db/relay"'))
    with pytest.raises(ConfigurationError, match="postgresql://"):
        NodeConfig.from_toml(path)


def test_a_worker_name_and_its_lease_are_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(NODE)
    assert NodeConfig.from_toml(path).worker is None  # sends only its own transfers

    shared = NODE.replace('org = "RX1"', 'org = "RX1"\nworker = "relay-2"')
    path.write_text(shared + "\n[limits]\nlease_seconds = 12.5\nclaim_poll_seconds = 0.5\n")
    config = NodeConfig.from_toml(path)
    assert config.worker == "relay-2"
    assert (config.limits.lease_seconds, config.limits.claim_poll_seconds) == (12.5, 0.5)

    path.write_text(NODE.replace('org = "RX1"', 'org = "RX1"\nworker = ""'))
    with pytest.raises(ConfigurationError, match="worker"):
        NodeConfig.from_toml(path)
    path.write_text(shared + "\n[limits]\nlease_seconds = 0\n")
    with pytest.raises(ConfigurationError, match="lease_seconds"):
        NodeConfig.from_toml(path)


def test_the_web_table(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    touch(tmp_path / "web" / "cert.pem", tmp_path / "web" / "key.pem")
    path.write_text(NODE + '\n[web]\nport = 0\ncert = "web/cert.pem"\nkey = "web/key.pem"\n')
    web = NodeConfig.from_toml(path).web
    assert web is not None
    assert (web.host, web.port, web.cert, web.base_url) == (
        "127.0.0.1",
        0,
        tmp_path / "web" / "cert.pem",
        None,
    )
    assert NodeConfig.from_toml(_write(path, NODE)).web is None
    for table, message in (
        ("[web]\nport = 8042\nbase = 'x'\n", "[web] has no setting 'base'"),
        ('[web]\ncert = "web/cert.pem"\n', "[web] needs both cert and key"),
        ("[web]\nbase_url = 'ftp://x'\n", "base_url must be an http(s):// URL"),
        ("[web]\nport = 70000\n", "port must be a whole number from 0 to 65535"),
    ):
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            NodeConfig.from_toml(_write(path, NODE + "\n" + table))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
