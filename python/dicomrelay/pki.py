"""Organisation identities: certificates that prove an organisation code.

An organisation's certificate names it in a DNS subject alternative name of
the form ``<code>.org.dicomrelay`` (lower case), so TLS name checking binds a
connection to the organisation a node meant to reach, and a server reads the
connecting organisation's code from the client certificate it verified.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import NameOID

from dicomrelay.errors import ConfigurationError, TlsError

ORG_DOMAIN = "org.dicomrelay"
_ORG_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")


def check_org_code(code: str) -> str:
    if not _ORG_CODE.match(code):
        raise ConfigurationError(f"organisation code {code!r} must be letters, digits or '-'")
    return code.upper()


def server_name(code: str) -> str:
    """The TLS name an organisation's certificate carries."""
    return f"{check_org_code(code).lower()}.{ORG_DOMAIN}"


def org_code_of(cert_der: bytes) -> str | None:
    """The organisation a certificate proves, or None if it names none."""
    cert = x509.load_der_x509_certificate(cert_der)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    suffix = "." + ORG_DOMAIN
    for name in names.get_values_for_type(x509.DNSName):
        if name.endswith(suffix) and _ORG_CODE.match(name[: -len(suffix)]):
            return name[: -len(suffix)].upper()
    return None


def issued_by(cert_der: bytes, ca_pem: bytes) -> bool:
    """Whether any CA in ``ca_pem`` signed the certificate directly."""
    cert = x509.load_der_x509_certificate(cert_der)
    for ca in x509.load_pem_x509_certificates(ca_pem):
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def require_issuer(cert_der: bytes | None, ca: Path | None, code: str) -> None:
    """Raise TlsError unless ``cert_der`` comes from ``ca`` (when a CA is pinned)."""
    if ca is None:
        return
    if cert_der is None or not issued_by(cert_der, ca.read_bytes()):
        raise TlsError(f"{code}'s certificate is not from its configured CA")


@dataclass(frozen=True, kw_only=True)
class Identity:
    """Paths of one organisation's PEM files."""

    code: str
    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA, certificate, key) PEM bytes."""
        try:
            return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()
        except OSError as e:
            raise ConfigurationError(f"cannot read identity of {self.code}: {e}") from e


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def pem_private_key(key: PrivateKeyTypes) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ca_certificate(
    key: CertificateIssuerPrivateKeyTypes, name: x509.Name, days: int
) -> x509.Certificate:
    """A self-signed CA certificate for ``key``, issuing leaf certificates only."""
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"


def make_ca(
    directory: Path, name: str = "dicomrelay test CA", days: int = 30, *, replace: bool = True
) -> Path:
    """Write ``ca.pem`` and ``ca-key.pem`` to ``directory``; returns the CA
    certificate's path. With ``replace=False`` existing files are an error."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca_certificate(key, _name(name), days)
    path = directory / CA_CERT
    _write_pair(path, cert, directory / CA_KEY, key, replace=replace)
    return path


def _write_pair(
    cert_path: Path,
    cert: x509.Certificate,
    key_path: Path,
    key: PrivateKeyTypes,
    *,
    replace: bool,
) -> None:
    """A certificate and its key (readable by the owner only), never
    overwriting one unless asked: a CA key written over cannot be had back."""
    if not replace:
        for p in (cert_path, key_path):
            if p.exists():
                raise ConfigurationError(f"{p} already exists; not overwriting it")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(pem_private_key(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def issue_org(
    ca_dir: Path, code: str, directory: Path, days: int = 30, *, replace: bool = True
) -> Identity:
    """Issue an organisation certificate (``<code>.pem``, ``<code>-key.pem``)
    from the CA in ``ca_dir`` (``ca.pem``, ``ca-key.pem``)."""
    code = check_org_code(code)
    ca_cert, ca_key = _load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, code),
                    x509.NameAttribute(NameOID.COMMON_NAME, server_name(code)),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name(code))]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{code.lower()}.pem"
    key_path = directory / f"{code.lower()}-key.pem"
    _write_pair(cert_path, cert, key_path, key, replace=replace)
    return Identity(code=code, cert=cert_path, key=key_path, ca=ca_dir / CA_CERT)


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as e:
        raise ConfigurationError(
            f"no CA in {ca_dir}: cannot read {e.filename} ({(e.strerror or '').lower()});"
            " make one with `dicomrelay pki ca --out DIR`"
        ) from e
    except (ValueError, TypeError) as e:
        raise ConfigurationError(
            f"{ca_dir}: not an unencrypted PEM CA certificate and key: {e}"
        ) from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"{key_path}: the CA key must be an EC key")
    return cert, key
