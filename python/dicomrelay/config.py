"""Node configuration: frozen, keyword-only, read once (from code or TOML)."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from dicomrelay.errors import ConfigurationError
from dicomrelay.ledger import POSTGRES_SCHEMES
from dicomrelay.pki import Identity, check_org_code

DigestName = Literal["sha256", "blake3"]


@dataclass(frozen=True, kw_only=True)
class Peer:
    """Another organisation's node: its code, where it listens, and (optionally)
    the CA that must have issued its certificate."""

    code: str
    host: str
    port: int
    ca: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", check_org_code(self.code))


@dataclass(frozen=True, kw_only=True)
class Limits:
    transfers_per_peer: int = 4  # concurrent transfers (connections) to one destination
    max_attempts: int = 8  # then the transfer is a dead letter
    backoff_base: float = 0.5  # seconds before the first retry (full jitter)
    backoff_cap: float = 300.0
    connect_timeout: float = 10.0
    stall_timeout: float = 30.0  # no progress for this long fails the attempt
    window_bytes: int = 8 << 20  # unacknowledged bytes in flight per connection
    offer_batch: int = 256  # instances per OFFER
    write_buffer_bytes: int = 64 << 20  # receiver: bytes being made durable per connection
    chunk_size: int = 1 << 20
    # Sending shared by workers on one ledger (NodeConfig.worker):
    lease_seconds: float = 30.0  # a claim lapses unless renewed within this
    claim_poll_seconds: float = 1.0  # how often a worker looks for claimable work


@dataclass(frozen=True, kw_only=True)
class Route:
    """Where studies received over DICOM go: the first route whose conditions
    (each optional) all match the storing association and the dataset."""

    to: str
    calling_ae_title: str | None = None
    called_ae_title: str | None = None
    modality: str | None = None

    def matches(self, *, calling: str, called: str, modality: str | None) -> bool:
        return (
            self.calling_ae_title in (None, calling)
            and self.called_ae_title in (None, called)
            and self.modality in (None, modality)
        )


@dataclass(frozen=True, kw_only=True)
class Pacs:
    """A DICOM node this node delivers received studies into, by C-STORE."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True, kw_only=True)
class DicomTls:
    """DICOM TLS for the node's SCP and its deliveries into the PACS: this
    certificate (PEM, RSA for TLS 1.2 peers) presented both ways, and the CAs
    whose certificates the PACS and modalities are trusted by."""

    certificate: Path
    private_key: Path
    trusted_cas: tuple[Path, ...]
    require_client_certificate: bool = True


@dataclass(frozen=True, kw_only=True)
class DicomConfig:
    """The node's DICOM face: a storage SCP for the local PACS and modalities,
    routes from it to other organisations, and a PACS to deliver into."""

    ae_title: str = "DICOMRELAY"
    listen_host: str = "127.0.0.1"
    listen_port: int | None = None  # None: no SCP; 0: any free port
    allowed_calling: tuple[str, ...] = ()  # calling AE titles accepted (required)
    routes: tuple[Route, ...] = ()
    deliver_to: Pacs | None = None
    delivery_attempts: int = 5
    tls: DicomTls | None = None  # None: plain TCP

    def route(self, *, calling: str, called: str, modality: str | None) -> str | None:
        for r in self.routes:
            if r.matches(calling=calling, called=called, modality=modality):
                return r.to
        return None


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    org: str
    data_dir: Path
    identity: Identity | None = None  # required unless insecure_plaintext
    listen_host: str = "127.0.0.1"
    listen_port: int | None = None  # None: do not listen; 0: any free port
    peers: tuple[Peer, ...] = ()
    digest: DigestName = "sha256"
    insecure_plaintext: bool = False
    limits: Limits = field(default_factory=Limits)
    dicom: DicomConfig | None = None
    # None: SQLite in data_dir; a postgresql:// URL (libpq): a ledger that several
    # workers or machines share, its tables in ledger_schema. Not in repr: it may
    # hold a password.
    ledger: str | None = field(default=None, repr=False)
    ledger_schema: str = "dicomrelay"
    # A name unique among the workers that share this ledger's sending work
    # (with the same peers, and the files they send on paths all can read):
    # the node then claims, with leases, any due transfer, whoever queued it.
    # None: it sends the transfers queued through it alone.
    worker: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "org", check_org_code(self.org))
        if self.ledger is not None and not self.ledger.startswith(POSTGRES_SCHEMES):
            raise ConfigurationError("ledger must be a postgresql:// URL (or absent: SQLite)")
        if not self.ledger_schema:
            raise ConfigurationError("ledger_schema must not be empty")
        if self.worker is not None and not self.worker:
            raise ConfigurationError("worker must be a non-empty name (or absent)")
        if self.limits.lease_seconds <= 0 or self.limits.claim_poll_seconds <= 0:
            raise ConfigurationError("lease_seconds and claim_poll_seconds must be positive")
        if self.identity is None and not self.insecure_plaintext:
            raise ConfigurationError("a node needs a TLS identity (or insecure_plaintext=True)")
        if self.digest not in ("sha256", "blake3"):
            raise ConfigurationError(f"digest must be sha256 or blake3, not {self.digest!r}")
        codes = [p.code for p in self.peers]
        if len(set(codes)) != len(codes):
            raise ConfigurationError("each peer organisation may be listed once")

    def peer(self, code: str) -> Peer:
        for p in self.peers:
            if p.code == code.upper():
                return p
        raise ConfigurationError(f"unknown organisation {code!r}")

    @classmethod
    def from_toml(cls, path: Path) -> NodeConfig:
        """Read a node's TOML file; relative paths are relative to the file."""
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigurationError(f"cannot read {path}: {e}") from e
        base = path.parent

        def rel(p: str) -> Path:
            return (base / p).resolve()

        try:
            node: dict[str, Any] = raw["node"]
            tls = raw.get("tls")
            identity = (
                Identity(
                    code=node["org"], cert=rel(tls["cert"]), key=rel(tls["key"]), ca=rel(tls["ca"])
                )
                if tls
                else None
            )
            peers = tuple(
                Peer(
                    code=p["org"],
                    host=p["host"],
                    port=int(p["port"]),
                    ca=rel(p["ca"]) if "ca" in p else None,
                )
                for p in raw.get("peers", [])
            )
            limits = Limits(**raw.get("limits", {}))
            dicom = _dicom_from_toml(raw["dicom"], rel) if "dicom" in raw else None
            return cls(
                org=node["org"],
                data_dir=rel(node.get("data_dir", "data")),
                identity=identity,
                listen_host=node.get("listen_host", "127.0.0.1"),
                listen_port=node.get("listen_port"),
                peers=peers,
                digest=cast(DigestName, node.get("digest", "sha256")),
                insecure_plaintext=bool(node.get("insecure_plaintext", False)),
                limits=limits,
                dicom=dicom,
                ledger=node.get("ledger"),
                ledger_schema=node.get("ledger_schema", "dicomrelay"),
                worker=node.get("worker"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigurationError(f"{path}: {e!r}") from e


def _dicom_from_toml(d: dict[str, Any], rel: Callable[[str], Path]) -> DicomConfig:
    """``[dicom]``: ae_title, listen_host, listen_port, allowed_calling = [...],
    ``[[dicom.routes]]`` (to, calling_ae_title, called_ae_title, modality),
    ``[dicom.deliver_to]`` (ae_title, host, port) and ``[dicom.tls]``
    (certificate, private_key, trusted_cas = [...], require_client_certificate)."""
    deliver = d.get("deliver_to")
    tls = d.get("tls")
    return DicomConfig(
        ae_title=d.get("ae_title", "DICOMRELAY"),
        listen_host=d.get("listen_host", "127.0.0.1"),
        listen_port=d.get("listen_port"),
        allowed_calling=tuple(d.get("allowed_calling", ())),
        routes=tuple(Route(**r) for r in d.get("routes", ())),
        deliver_to=Pacs(**deliver) if deliver else None,
        delivery_attempts=int(d.get("delivery_attempts", 5)),
        tls=DicomTls(
            certificate=rel(tls["certificate"]),
            private_key=rel(tls["private_key"]),
            trusted_cas=tuple(rel(ca) for ca in tls["trusted_cas"]),
            require_client_certificate=bool(tls.get("require_client_certificate", True)),
        )
        if tls
        else None,
    )
