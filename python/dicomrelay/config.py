"""Node configuration: frozen, keyword-only, read once (from code or TOML)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from dicomrelay.deid_files import parse_safe_private, read_project_key
from dicomrelay.errors import ConfigurationError
from dicomrelay.ledger import POSTGRES_SCHEMES
from dicomrelay.pki import Identity, check_org_code
from dicomrelay.policy import ROLES, Deidentify, Policy, Rule
from dicomrelay.reconcile import MATCHES, MatchBy, Reconcile

if TYPE_CHECKING:
    from dicomrelay.config_file import Table

DigestName = Literal["sha256", "blake3"]


@dataclass(frozen=True, kw_only=True)
class Peer:
    """Another organisation's node: its code, where it listens, and (optionally)
    the CA that must have issued its certificate."""

    code: str
    host: str
    port: int
    ca: Path | None = None
    role: str = "other"  # policy.ROLES: trust, research, ...

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", check_org_code(self.code))
        if self.role not in ROLES:
            raise ConfigurationError(
                f"peer {self.code}: unknown role {self.role!r} (roles: {', '.join(ROLES)})"
            )


@dataclass(frozen=True, kw_only=True)
class Limits:
    transfers_per_peer: int = 4  # concurrent transfers (connections) to one destination
    max_attempts: int = 8  # failed attempts in a row that delivered nothing: a dead letter
    backoff_base: float = 0.5  # seconds before the first retry (full jitter)
    backoff_cap: float = 300.0
    connect_timeout: float = 10.0
    stall_timeout: float = 30.0  # no progress for this long fails the attempt
    # Unacknowledged bytes in flight per connection: several durability rounds'
    # worth, so the network keeps filling the next round while one is written.
    window_bytes: int = 32 << 20
    offer_batch: int = 256  # instances per OFFER
    write_buffer_bytes: int = 64 << 20  # receiver: bytes being made durable per connection
    round_bytes: int = 8 << 20  # receiver: the most one durability round writes
    chunk_size: int = 1 << 20
    # Sending shared by workers on one ledger (NodeConfig.worker):
    lease_seconds: float = 30.0  # a claim lapses unless renewed within this
    claim_poll_seconds: float = 1.0  # how often a worker looks for claimable work


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """The segment store a node keeps received instances in, and what it
    drops: nothing, unless told (``[store]`` in TOML)."""

    segment_mb: int = 1024  # each segment file's preallocated size
    drop_after_delivery: bool = False  # drop a study once delivered into the PACS
    keep_days: float | None = None  # drop committed studies older than this (None: keep)
    compact_below: float = 0.5  # rewrite a sealed segment less than this share live
    sweep_seconds: float = 600.0  # how often retention and compaction run

    def __post_init__(self) -> None:
        if not 1 <= self.segment_mb <= 1 << 20:
            raise ConfigurationError(f"segment_mb must be from 1 to 1048576, not {self.segment_mb}")
        if self.keep_days is not None and self.keep_days <= 0:
            raise ConfigurationError(f"keep_days must be positive, not {self.keep_days}")
        if not 0 <= self.compact_below <= 1:
            raise ConfigurationError(f"compact_below must be from 0 to 1, not {self.compact_below}")
        if self.sweep_seconds <= 0:
            raise ConfigurationError(f"sweep_seconds must be positive, not {self.sweep_seconds}")


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
class WebConfig:
    """The node's DICOMweb server (PS3.18): where it listens, the certificate
    of its public side (HTTPS when given; callers may then prove their
    organisation with a certificate the node's CA issued), and the public URL
    that the links it returns are made with (default: from ``host`` and
    ``port``)."""

    host: str = "127.0.0.1"
    port: int = 8042  # 0: any free port
    cert: Path | None = None
    key: Path | None = None
    base_url: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigurationError("[web] needs both cert and key (or neither)")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"base_url must be an http(s):// URL, not {self.base_url!r}")


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
    store: StoreConfig = field(default_factory=StoreConfig)
    web: WebConfig | None = None  # None: no DICOMweb server
    # None: SQLite in data_dir; a postgresql:// URL (libpq): a ledger that several
    # workers or machines share, its tables in ledger_schema. Not in repr: it may
    # hold a password.
    ledger: str | None = field(default=None, repr=False)
    ledger_schema: str = "dicomrelay"
    # A name unique among the workers that share this ledger's sending work
    # (with the same peers, and the files they send on paths all can read).
    # Every node claims, with leases, any due transfer, whoever queued it;
    # None names it after its host and data_dir, so a shared ledger should
    # name every worker.
    worker: str | None = None
    # Which studies may go to or come from which organisations, and in what
    # form (dicomrelay.policy); no rules: every configured peer, as is.
    rules: tuple[Rule, ...] = ()

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
        self.policy.check()

    @property
    def policy(self) -> Policy:
        return Policy(rules=self.rules, roles={p.code: p.role for p in self.peers})

    def peer(self, code: str) -> Peer:
        for p in self.peers:
            if p.code == code.upper():
                return p
        raise ConfigurationError(f"unknown organisation {code!r}")

    @classmethod
    def from_toml(cls, path: Path) -> NodeConfig:
        """Read a node's TOML file; relative paths are relative to the file.
        Every mistake is a ConfigurationError naming the file (line and column
        for syntax), the table and the key."""
        from dicomrelay import config_file

        raw = config_file.load(path)
        try:
            return _node_from_toml(cls, raw)
        except ConfigurationError as e:
            if str(e).startswith(f"{path}:"):
                raise
            raise ConfigurationError(f"{path}: {e}") from None


def _node_from_toml(cls: type[NodeConfig], raw: Table) -> NodeConfig:
    node = raw.table("node", required=True)
    assert node is not None
    org = node.text("org")
    tls = raw.table("tls")
    identity = None
    if tls is not None:
        identity = Identity(
            code=org,
            cert=tls.path("cert", exists=True),
            key=tls.path("key", exists=True),
            ca=tls.path("ca", exists=True),
        )
        tls.finish()
    peers = []
    for p in raw.tables("peers"):
        peers.append(
            Peer(
                code=p.text("org"),
                host=p.text("host"),
                port=p.port("port"),
                ca=p.path("ca", None, exists=True),
                role=p.text("role", "other"),
            )
        )
        p.finish()
    limits = _limits_from_toml(raw.table("limits"))
    dicom_table = raw.table("dicom")
    web_table = raw.table("web")
    config = cls(
        org=org,
        data_dir=node.path("data_dir", "data"),
        identity=identity,
        listen_host=node.text("listen_host", "127.0.0.1"),
        listen_port=node.port("listen_port", None),
        peers=tuple(peers),
        digest=cast(DigestName, node.text("digest", "sha256")),
        insecure_plaintext=node.flag("insecure_plaintext", False),
        limits=limits,
        dicom=_dicom_from_toml(dicom_table) if dicom_table is not None else None,
        store=_store_from_toml(raw.table("store")),
        web=_web_from_toml(web_table) if web_table is not None else None,
        ledger=node.text("ledger", None),
        ledger_schema=node.text("ledger_schema", "dicomrelay"),
        worker=node.text("worker", None),
        rules=tuple(_rule_from_toml(r, n) for n, r in enumerate(raw.tables("rules"), 1)),
    )
    node.finish()
    raw.finish()
    return config


def _limits_from_toml(t: Table | None) -> Limits:
    if t is None:
        return Limits()
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Limits):
        if f.name not in t:
            continue
        default = getattr(Limits(), f.name)
        if isinstance(default, int):
            values[f.name] = t.integer(f.name, low=1)
        else:
            values[f.name] = t.number(f.name, default)
            if values[f.name] < 0:
                raise t.error(f"{f.name} must not be negative, not {values[f.name]}")
    t.finish()
    return Limits(**values)


def _store_from_toml(t: Table | None) -> StoreConfig:
    """``[store]``: segment_mb, drop_after_delivery, keep_days, compact_below,
    sweep_seconds."""
    if t is None:
        return StoreConfig()
    default = StoreConfig()
    keep_days = t.number("keep_days", 0.0) if "keep_days" in t else None
    try:
        config = StoreConfig(
            segment_mb=t.integer("segment_mb", default.segment_mb, low=1, high=1 << 20),
            drop_after_delivery=t.flag("drop_after_delivery", default.drop_after_delivery),
            keep_days=keep_days,
            compact_below=t.number("compact_below", default.compact_below),
            sweep_seconds=t.number("sweep_seconds", default.sweep_seconds),
        )
    except ConfigurationError as e:
        raise t.error(str(e)) from None
    t.finish()
    return config


def _dicom_from_toml(d: Table) -> DicomConfig:
    """``[dicom]``: ae_title, listen_host, listen_port, allowed_calling = [...],
    ``[[dicom.routes]]`` (to, calling_ae_title, called_ae_title, modality),
    ``[dicom.deliver_to]`` (ae_title, host, port) and ``[dicom.tls]``
    (certificate, private_key, trusted_cas = [...], require_client_certificate)."""
    routes = []
    for r in d.tables("routes"):
        routes.append(
            Route(
                to=r.text("to"),
                calling_ae_title=r.text("calling_ae_title", None),
                called_ae_title=r.text("called_ae_title", None),
                modality=r.text("modality", None),
            )
        )
        r.finish()
    deliver = d.table("deliver_to")
    pacs = None
    if deliver is not None:
        pacs = Pacs(
            ae_title=deliver.text("ae_title"), host=deliver.text("host"), port=deliver.port("port")
        )
        deliver.finish()
    tls = d.table("tls")
    dicom_tls = None
    if tls is not None:
        dicom_tls = DicomTls(
            certificate=tls.path("certificate", exists=True),
            private_key=tls.path("private_key", exists=True),
            trusted_cas=tls.paths("trusted_cas", exists=True),
            require_client_certificate=tls.flag("require_client_certificate", True),
        )
        tls.finish()
    config = DicomConfig(
        ae_title=d.text("ae_title", "DICOMRELAY"),
        listen_host=d.text("listen_host", "127.0.0.1"),
        listen_port=d.port("listen_port", None),
        allowed_calling=d.texts("allowed_calling"),
        routes=tuple(routes),
        deliver_to=pacs,
        delivery_attempts=d.integer("delivery_attempts", 5, low=1, high=1000),
        tls=dicom_tls,
    )
    d.finish()
    return config


def _rule_from_toml(r: Table, number: int) -> Rule:
    """``[[rules]]``: name, direction (send|receive), effect (allow|refuse),
    to / from (organisation codes), roles, modalities, sop_classes,
    source_aes, priorities, ``deidentify = {options = [...], key_file}``
    (send) and ``reconcile = {csv | table, ...}`` (receive: ``_reconcile_from_toml``)."""
    name = r.text("name", f"#{number}")
    direction = r.text("direction")
    if direction not in ("send", "receive"):
        raise r.error(f"direction must be 'send' or 'receive', not {direction!r}")
    effect = r.text("effect", "allow")
    if effect not in ("allow", "refuse"):
        raise r.error(f"effect must be 'allow' or 'refuse', not {effect!r}")
    key, wrong = ("to", "from") if direction == "send" else ("from", "to")
    if wrong in r:
        raise r.error(f"a {direction} rule names organisations with {key!r}, not {wrong!r}")
    orgs = r.texts(key)
    deid = r.table("deidentify")
    deidentify = None
    if deid is not None:
        try:
            deidentify = Deidentify(
                options=deid.texts("options"),
                key_file=deid.path("key_file", exists=True),
                allow_burned_in=deid.flag("allow_burned_in", False),
                safe_private=deid.path("safe_private", None, exists=True),
            )
            # Read now: a key that cannot protect anything is a configuration
            # error at start, not a refusal at the first send.
            read_project_key(deidentify.key_file)
            if deidentify.safe_private is not None:
                text = deidentify.safe_private.read_text()
                parse_safe_private(text, source=str(deidentify.safe_private))
        except ConfigurationError as e:
            raise deid.error(str(e)) from None
        deid.finish()
    rule = Rule(
        name=name,
        direction=direction,
        allow=effect == "allow",
        orgs=frozenset(code.upper() for code in orgs),
        roles=frozenset(r.texts("roles")),
        modalities=frozenset(r.texts("modalities")),
        sop_classes=frozenset(r.texts("sop_classes")),
        source_aes=frozenset(r.texts("source_aes")),
        priorities=frozenset(r.texts("priorities")),
        deidentify=deidentify,
        reconcile=None if (rec := r.table("reconcile")) is None else _reconcile_from_toml(rec),
    )
    r.finish()
    return rule


def _reconcile_from_toml(t: Table) -> Reconcile:
    """A receive rule's ``reconcile`` table: the mapping (``csv = "path"`` or
    ``table = "name"`` in the ledger's database), ``match`` (``nhs-number``,
    ``sender-id``, in the order tried), ``local_issuer``, ``accession_prefix``
    or ``replace_accession``, ``institution_name`` (absent: kept)."""
    match = t.texts("match") if "match" in t else MATCHES
    if unknown := [m for m in match if m not in MATCHES]:
        raise t.error(f"match: unknown {unknown[0]!r} (nhs-number, sender-id)")
    try:
        config = Reconcile(
            csv=t.path("csv", None, exists=True),
            table=t.text("table", None),
            match=cast(tuple[MatchBy, ...], tuple(match)),
            local_issuer=t.text("local_issuer", None),
            accession_prefix=t.text("accession_prefix", None),
            replace_accession=t.text("replace_accession", None),
            institution_name=t.text("institution_name", None),
        )
    except ConfigurationError as e:
        raise t.error(str(e)) from None
    t.finish()
    return config


def _web_from_toml(w: Table) -> WebConfig:
    """``[web]``: host, port, cert and key (PEM, for HTTPS), base_url."""
    config = WebConfig(
        host=w.text("host", "127.0.0.1"),
        port=w.port("port", 8042),
        cert=w.path("cert", None, exists=True),
        key=w.path("key", None, exists=True),
        base_url=w.text("base_url", None),
    )
    w.finish()
    return config
