"""TLS for the DICOM Upper Layer (PS3.15 Annex B, secure transport connection
profiles), as DCMTK's default "Non-downgrading BCP 195 TLS Profile" does it.

- TLS 1.2 at least; TLS 1.3 is allowed (and is what two current peers agree on).
- Under TLS 1.2, only the four cipher suites the profile lists: ephemeral
  (EC)DHE key exchange, RSA certificates, AES-GCM (RFC 7525 section 4.2). A peer
  with an ECDSA certificate can therefore only be reached over TLS 1.3, whose
  suites are all AEAD and independent of the certificate's key type.
- Peers are authenticated both ways by certificates verified against the
  configured CA files: a server (SCP) requires a client certificate unless told
  not to (it still verifies one that is presented), and a client (SCU) always
  verifies the server's.
- Host names are not checked by default: DICOM identifies a peer by its
  certificate's issuer and its AE title, and PACS certificates rarely name the
  address they are reached at. A client can ask for the check.

A context made here is read-only in use and can serve any number of
associations; make it once.
"""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dicomrelay.errors import ConfigurationError

# OpenSSL names of the TLS 1.2 suites of the non-downgrading BCP 195 profile,
# strongest first: a server picks by its own order, as BCP 195 asks.
BCP195_TLS12_CIPHERS = (
    "ECDHE-RSA-AES256-GCM-SHA384",  # TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
    "ECDHE-RSA-AES128-GCM-SHA256",  # TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    "DHE-RSA-AES256-GCM-SHA384",  # TLS_DHE_RSA_WITH_AES_256_GCM_SHA384
    "DHE-RSA-AES128-GCM-SHA256",  # TLS_DHE_RSA_WITH_AES_128_GCM_SHA256
)

# The DHE suites need a group on the server, which Python's ssl never picks by
# itself: RFC 7919's ffdhe2048 (BCP 195: at least 2048 bits).
_FFDHE2048 = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


def server_context(
    *,
    certificate: Path,
    private_key: Path,
    trusted_cas: Sequence[Path],
    require_peer_certificate: bool = True,
) -> ssl.SSLContext:
    """A context for an SCP: it presents ``certificate`` (PEM, followed by any
    intermediate CA certificates) with ``private_key`` (PEM, unencrypted), and
    verifies clients' certificates against ``trusted_cas`` (PEM files).

    A client without a certificate is refused unless ``require_peer_certificate``
    is False; one whose certificate does not verify is refused either way.
    Raises ConfigurationError when a file cannot be used."""
    if require_peer_certificate and not trusted_cas:
        raise ConfigurationError("requiring client certificates needs a trusted CA file")
    context = _context(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    with tempfile.NamedTemporaryFile(suffix=".pem") as dh:  # ssl reads them from a file only
        dh.write(_FFDHE2048)
        dh.flush()
        context.load_dh_params(dh.name)
    _load_identity(context, certificate, private_key)
    _load_trusted(context, trusted_cas)
    if require_peer_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    elif trusted_cas:
        context.verify_mode = ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(
    *,
    certificate: Path | None,
    private_key: Path | None,
    trusted_cas: Sequence[Path],
    check_hostname: bool = False,
) -> ssl.SSLContext:
    """A context for an SCU: it verifies the server's certificate against
    ``trusted_cas`` (PEM files, at least one) and, when given, presents
    ``certificate`` with ``private_key`` (PEM; both or neither). With
    ``check_hostname`` the server's certificate must also name the host
    connected to. Raises ConfigurationError when a file cannot be used."""
    if not trusted_cas:
        raise ConfigurationError("a TLS client needs a trusted CA file to verify the server")
    if (certificate is None) != (private_key is None):
        raise ConfigurationError("a client certificate needs its private key, and the reverse")
    context = _context(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if certificate is not None and private_key is not None:
        _load_identity(context, certificate, private_key)
    _load_trusted(context, trusted_cas)
    return context


def _context(protocol: ssl._SSLMethod) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.set_ciphers(":".join(BCP195_TLS12_CIPHERS))  # TLS 1.3's own suites stay
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def _load_identity(context: ssl.SSLContext, certificate: Path, private_key: Path) -> None:
    def encrypted() -> bytes:  # never prompt on a terminal: a server has none
        raise ConfigurationError(f"private key {private_key} is encrypted; give it unencrypted")

    try:
        context.load_cert_chain(certificate, private_key, password=encrypted)
    except (OSError, ssl.SSLError) as e:
        raise ConfigurationError(
            f"cannot use certificate {certificate} with key {private_key}: {e}"
        ) from e


def _load_trusted(context: ssl.SSLContext, trusted_cas: Sequence[Path]) -> None:
    for ca in trusted_cas:
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as e:
            raise ConfigurationError(f"cannot read trusted CA certificates in {ca}: {e}") from e
