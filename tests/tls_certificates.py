"""Certificates for DICOM TLS tests, made with ``cryptography``: a trusted CA,
RSA (and one P-256) leaf certificates for both TLS roles naming localhost and
127.0.0.1, and a rogue CA trusted by no one, written as PEM files in the shape
DCMTK and our tools take them (``+tls KEY CERT``, ``+cf CA``)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dicomrelay import pki

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
Ca = tuple[x509.Certificate, PrivateKey, Path]  # certificate, key, PEM file


@dataclass(frozen=True, kw_only=True)
class Pem:
    """A certificate and its private key, as PEM files; ``tls`` is how DCMTK
    and our tools take them: ``+tls KEY CERT``."""

    cert: Path
    key: Path

    @property
    def tls(self) -> list[str]:
        return ["+tls", str(self.key), str(self.cert)]


@dataclass(frozen=True, kw_only=True)
class Pki:
    ca: Path  # the CA both sides trust
    server: Pem
    client: Pem
    rogue_ca: Path  # another CA, trusted by no one here
    rogue_server: Pem
    rogue_client: Pem
    ecdsa_server: Pem  # from the trusted CA, with a P-256 key

    @property
    def trust(self) -> list[str]:
        return ["+cf", str(self.ca)]


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dicomrelay tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write_key(key: PrivateKey, path: Path) -> None:
    path.write_bytes(pki.pem_private_key(key))
    path.chmod(0o600)


def make_ca(directory: Path, cn: str) -> Ca:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = pki.ca_certificate(key, _name(cn), days=2)
    path = directory / f"{cn.replace(' ', '-')}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def issue(ca: Ca, directory: Path, cn: str, key: PrivateKey | None = None) -> Pem:
    """A leaf certificate for both TLS roles, naming localhost and 127.0.0.1."""
    ca_cert, ca_key, _ = ca
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = Pem(cert=directory / f"{cn}.pem", key=directory / f"{cn}.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pem.key)
    return pem


def make_pki(directory: Path) -> Pki:
    """Every certificate a DICOM TLS test uses, written into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory, "dicomrelay test CA")
    rogue = make_ca(directory, "rogue CA")
    return Pki(
        ca=ca[2],
        server=issue(ca, directory, "server"),
        client=issue(ca, directory, "client"),
        rogue_ca=rogue[2],
        rogue_server=issue(rogue, directory, "rogue-server"),
        rogue_client=issue(rogue, directory, "rogue-client"),
        ecdsa_server=issue(
            ca, directory, "ecdsa-server", key=ec.generate_private_key(ec.SECP256R1())
        ),
    )
