"""Patient links: one study, for a person, through the node's web server.

``share_study`` makes a link: an unguessable token (24 random bytes, 192
bits, URL-safe) scoped to one study, expiring, revocable, and optionally
guarded by a 6-digit PIN meant to reach the person another way. The ledger
keeps the token only as its SHA-256 and the PIN only as a salted scrypt
hash; wrong PINs are counted and the link locks at ``PIN_ATTEMPTS`` in a row.
The link is made with the ``[web]`` table's public ``base_url``.

Pure parts (tokens, PIN hashing, judging a link) are functions here; the
page and the download are ``dicomrelay.web.links``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from dicomrelay.config import NodeConfig
from dicomrelay.errors import ConfigurationError, UnknownStudy, UsageError
from dicomrelay.ledger import Ledger
from dicomrelay.ledger.shares import ShareLink

DEFAULT_LIFETIME = 7 * 86400  # seconds
PIN_ATTEMPTS = 5  # wrong PINs in a row that lock a link
PATH = "/s/"  # a link is base_url + PATH + token
_SCRYPT = {"n": 1 << 14, "r": 8, "p": 1, "dklen": 32}  # about 50 ms a try


@dataclass(frozen=True, kw_only=True, slots=True)
class SharedLink:
    """A link just made: what to hand the person (``url``, and ``pin`` by
    another way); the secret is not kept anywhere else."""

    id: str
    study_uid: str
    url: str
    token: str
    pin: str | None
    expires: float


def new_token() -> str:
    return secrets.token_urlsafe(24)


def new_link_id() -> str:
    """What operators and the audit trail call a link (not a secret)."""
    return "sl-" + secrets.token_hex(4)


def new_pin() -> str:
    return f"{secrets.randbelow(10**6):06d}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def pin_hash(pin: str, salt: bytes | None = None) -> str:
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(pin.encode("utf-8"), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def pin_matches(pin: str, stored: str) -> bool:
    """Whether ``pin`` is the one ``stored`` (``pin_hash``) was made from."""
    try:
        kind, salt, _ = stored.split("$")
        salt_bytes = bytes.fromhex(salt)
    except ValueError:
        return False
    return kind == "scrypt" and hmac.compare_digest(pin_hash(pin.strip(), salt_bytes), stored)


def pin_cookie(link: ShareLink) -> str:
    """What a browser that gave the right PIN holds (in a cookie scoped to
    the link's path): keyed by the PIN's stored hash, which never leaves the
    ledger, so it cannot be made without the PIN; a new link, a new value."""
    assert link.pin_hash is not None
    return hmac.new(link.pin_hash.encode(), link.id.encode(), "sha256").hexdigest()


Verdict = Literal["open", "unknown", "expired", "revoked", "locked"]


def judge(link: ShareLink | None, *, now: float) -> Verdict:
    """Whether a link opens; ``open`` may still need its PIN."""
    if link is None:
        return "unknown"
    state = link.state(now)
    return "open" if state == "active" else state  # type: ignore[return-value]


def link_base(config: NodeConfig, served_port: int | None = None) -> str:
    """The public root links are made with: ``[web] base_url``, else the
    address the server listens on (a wildcard address cannot be a link)."""
    web = config.web
    if web is None:
        raise ConfigurationError("patient links need a [web] table (the server that opens them)")
    if web.base_url is not None:
        return web.base_url.rstrip("/")
    if web.host in ("0.0.0.0", "::", ""):
        raise ConfigurationError(
            f"[web] listens on {web.host!r}: set base_url, the public URL people will open"
        )
    port = served_port if served_port is not None else web.port
    if port == 0:
        raise ConfigurationError("[web] port = 0 (any free port): set base_url or a port")
    scheme = "https" if web.cert is not None else "http"
    return f"{scheme}://{web.host}:{port}"


async def share_study(
    ledger: Ledger,
    config: NodeConfig,
    study_uid: str,
    *,
    lifetime: float = DEFAULT_LIFETIME,
    pin: bool = False,
    served_port: int | None = None,
) -> SharedLink:
    """Make a link to a study in the node's store. UnknownStudy if the store
    holds none of it; ConfigurationError without a usable ``[web]``."""
    base = link_base(config, served_port)
    if lifetime <= 0:
        raise UsageError("a link must live for some time")
    if not await ledger.study(study_uid):
        raise UnknownStudy(f"no study {study_uid} in this node's store")
    secret_pin = new_pin() if pin else None
    hashed_pin = pin_hash(secret_pin) if secret_pin is not None else None
    expires = time.time() + lifetime
    while True:  # a clash of 32-bit ids (or, never, of tokens): draw again
        link_id, token = new_link_id(), new_token()
        if await ledger.add_share_link(
            link_id,
            token_hash(token),
            study_uid=study_uid,
            org=config.org,
            expires=expires,
            pin_hash=hashed_pin,
        ):
            break
    until = time.strftime("%Y-%m-%d %H:%M", time.gmtime(expires))
    await ledger.audit(
        link_id,
        "share-created",
        None,
        f"link {link_id} to study {study_uid}{' with a PIN' if pin else ''}, expires {until} UTC",
        study_uid=study_uid,
    )
    return SharedLink(
        id=link_id,
        study_uid=study_uid,
        url=f"{base}{PATH}{token}",
        token=token,
        pin=secret_pin,
        expires=expires,
    )


def link_key(token_or_id: str) -> str:
    """What ``revoke_share`` looks a link up by: its id (``sl-...``), or the
    hash of its token (given alone or as the whole link)."""
    text = token_or_id.strip().rstrip("/")
    if text.startswith("sl-") and len(text) == 11:
        return text
    return token_hash(text.rsplit(PATH, 1)[-1] if PATH in text else text)


async def revoke_share(ledger: Ledger, token_or_id: str, *, by: str) -> bool:
    """Revoke a link at once (its id, token or URL); false if no active link
    is known by it. Audited under the link's id."""
    key = link_key(token_or_id)
    link = await (ledger.share_link_by_id(key) if key.startswith("sl-") else ledger.share_link(key))
    if link is None or not await ledger.revoke_share_link(link.id):
        return False
    await ledger.audit(
        link.id, "share-revoked", None, f"link {link.id} revoked by {by}", study_uid=link.study_uid
    )
    return True
