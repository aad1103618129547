"""Who calls the DICOMweb server: an organisation proven by its certificate
(mutual TLS, the node's CA) or an API token of the node's own organisation.

A token is 32 random bytes (URL-safe base64 behind the prefix ``drt_``),
shown once when made and kept only as its SHA-256: a secret this long needs
no slow hash (nobody can guess it), and a hash lets the ledger find it in
one lookup without holding anything a thief could use. Pure functions here;
the lookup is the ledger's."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Literal

from dicomrelay.errors import UsageError
from dicomrelay.ledger.archive import ApiToken, Visibility

TOKEN_PREFIX = "drt_"
Scope = Literal["read", "write"]
_DURATION = re.compile(r"^([1-9][0-9]{0,5})([dhm])$")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60}


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_duration(text: str) -> int:
    """``90d``, ``12h``, ``30m``: seconds. UsageError otherwise."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise UsageError(f"a duration is a number and d, h or m (90d, 12h, 30m), not {text!r}")
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


@dataclass(frozen=True, kw_only=True, slots=True)
class Caller:
    """An authenticated caller: its organisation, how it proved it (``token
    NAME`` or ``certificate``), and what it may do."""

    org: str
    proof: str
    scope: Scope

    def may_write(self) -> bool:
        return self.scope == "write"

    def visibility(self, node_org: str) -> Visibility:
        return Visibility(org=self.org, everything=self.org == node_org)


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a caller is not let in (401), for the answer and the audit."""

    reason: str


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if that is what it is."""
    if authorization is None:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def judge_token(token: ApiToken | None, *, now: float) -> Caller | Refused:
    """A token the ledger found (or None) as a caller, or why it is refused."""
    if token is None:
        return Refused("unknown token")
    if token.revoked is not None:
        return Refused(f"token {token.name} was revoked")
    if token.expires is not None and token.expires <= now:
        return Refused(f"token {token.name} has expired")
    scope: Scope = "write" if token.scope == "write" else "read"
    return Caller(org=token.org, proof=f"token {token.name}", scope=scope)


def judge_certificate(org: str | None, *, node_org: str, peers: frozenset[str]) -> Caller | None:
    """A caller proven by a certificate naming ``org`` (already verified
    against the node's CA by the TLS handshake): the node's own organisation
    or one of its peers may read and store; others are not let in (None)."""
    if org is None or (org != node_org and org not in peers):
        return None
    return Caller(org=org, proof="certificate", scope="write")
