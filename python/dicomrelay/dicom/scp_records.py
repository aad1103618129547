"""What the storage SCP reports: the instances an association stored, and
what it turned away."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dicomrelay._native import InstanceInfo


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredInstance:
    path: Path
    info: InstanceInfo
    digest: str | None
    calling_ae_title: str
    called_ae_title: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Refusal:
    """Something the SCP turned away, for an audit trail: a TLS handshake that
    failed (``tls``), an association it rejected (``association``), or a
    dataset it quarantined (``dataset``). For a dataset: what it read of it
    (``info``, None if unreadable; ``digest``), and, when the SCP's owner
    records holds (``StoreScp.reason_files`` off), the file it was ``kept`` in
    (None if it could not be moved there)."""

    what: Literal["tls", "association", "dataset"]
    peer: str  # the caller's address
    reason: str
    calling_ae_title: str | None = None
    called_ae_title: str | None = None
    sop_instance_uid: str | None = None
    kept: Path | None = None
    info: InstanceInfo | None = None
    digest: str | None = None
