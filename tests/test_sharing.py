"""Patient links on each backend: tokens kept only as hashes, one study
each, expiry, revocation (by id, token or URL), PIN hashing and the lockout
after too many wrong PINs in a row; and the link's root from ``[web]``."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from dicomrelay import sharing
from dicomrelay.config import NodeConfig, WebConfig
from dicomrelay.errors import ConfigurationError, UnknownStudy
from dicomrelay.ledger import Ledger, SqliteLedger
from dicomrelay.ledger.archive import StoredAttributes
from pg_server import either_ledger

pytestmark = pytest.mark.anyio
STUDY = "1.2.826.0.1.3680043.8.498.7"


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return "asyncio", {"use_uvloop": True}


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    async with either_ledger(request.param, tmp_path) as opened:
        yield opened


def config(tmp_path: Path, **web: object) -> NodeConfig:
    settings = {"base_url": "https://images.rx1.example/"} | web
    web_config = WebConfig(**settings)  # type: ignore[arg-type]
    return NodeConfig(org="RX1", data_dir=tmp_path, insecure_plaintext=True, web=web_config)


async def store_study(ledger: Ledger) -> None:
    a = StoredAttributes(
        digest="ab" * 32,
        study_uid=STUDY,
        series_uid=STUDY + ".1",
        sop_uid=STUDY + ".1.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        patient_id="P1",
        patient_name="Doe^Jane",
        accession_number=None,
        modality="CT",
        study_date="20261127",
        charset=None,
        transfer_syntax="1.2.840.10008.1.2.1",
        rows=None,
        columns=None,
        frames=None,
        bits_allocated=None,
        pixel_offset=None,
        pixel_length=None,
        encapsulated=False,
        size=100,
    )
    await ledger.store_instances("RX1", "batch", [a], 1.0)


async def test_a_link_is_unguessable_and_kept_only_as_a_hash(
    ledger: Ledger, tmp_path: Path
) -> None:
    await store_study(ledger)
    link = await sharing.share_study(ledger, config(tmp_path), STUDY)
    assert link.url == f"https://images.rx1.example/s/{link.token}"
    assert len(link.token) >= 32  # 24 random bytes: 192 bits
    assert link.pin is None
    other = await sharing.share_study(ledger, config(tmp_path), STUDY)
    assert other.token != link.token
    assert other.id != link.id
    held = await ledger.share_link(sharing.token_hash(link.token))
    assert held is not None
    assert held.id == link.id
    assert held.study_uid == STUDY
    assert held.state(held.created) == "active"
    assert await ledger.share_link(sharing.token_hash(link.token + "x")) is None
    [created] = [r for r in await _audit(ledger) if r[1] == "share-created"][:1]
    assert created[0] == link.id
    if isinstance(ledger, SqliteLedger):  # the secret is nowhere in the ledger's file
        with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
            dump = "\n".join(db.iterdump())
        assert link.token not in dump
        assert sharing.token_hash(link.token) in dump


async def _audit(ledger: Ledger) -> list[tuple[str, str, str | None]]:
    from dicomrelay.audit import AuditQuery

    return [(r.org, r.action, r.study_uid) for r in await ledger.audit_trail(AuditQuery())]


async def test_only_a_stored_study_is_shared(ledger: Ledger, tmp_path: Path) -> None:
    with pytest.raises(UnknownStudy):
        await sharing.share_study(ledger, config(tmp_path), STUDY)
    assert await ledger.share_links() == []


async def test_expiry_and_revocation(ledger: Ledger, tmp_path: Path) -> None:
    await store_study(ledger)
    link = await sharing.share_study(ledger, config(tmp_path), STUDY, lifetime=3600)
    held = await ledger.share_link(sharing.token_hash(link.token))
    assert held is not None
    assert sharing.judge(held, now=held.expires - 1) == "open"
    assert sharing.judge(held, now=held.expires) == "expired"
    assert sharing.judge(None, now=0) == "unknown"
    # Revoked by id, by token, by the whole URL: each link once.
    by_id, by_token, by_url = [
        await sharing.share_study(ledger, config(tmp_path), STUDY) for _ in range(3)
    ]
    assert await sharing.revoke_share(ledger, by_id.id, by="test")
    assert await sharing.revoke_share(ledger, by_token.token, by="test")
    assert await sharing.revoke_share(ledger, by_url.url + "/", by="test")
    assert not await sharing.revoke_share(ledger, by_id.id, by="test")  # already revoked
    assert not await sharing.revoke_share(ledger, "sl-00000000", by="test")
    states = {s.id: s.state(held.created) for s in await ledger.share_links()}
    assert states == {
        link.id: "active",
        by_id.id: "revoked",
        by_token.id: "revoked",
        by_url.id: "revoked",
    }
    revoked = await ledger.share_link(sharing.token_hash(by_url.token))
    assert sharing.judge(revoked, now=held.created) == "revoked"
    actions = [(who, action) for who, action, _ in await _audit(ledger)]
    assert (by_token.id, "share-revoked") in actions


async def test_wrong_pins_lock_the_link(ledger: Ledger, tmp_path: Path) -> None:
    await store_study(ledger)
    link = await sharing.share_study(ledger, config(tmp_path), STUDY, pin=True)
    assert link.pin is not None
    assert len(link.pin) == 6
    assert link.pin.isdigit()
    held = await ledger.share_link(sharing.token_hash(link.token))
    assert held is not None
    assert held.pin_hash is not None
    assert link.pin not in held.pin_hash
    assert sharing.pin_matches(link.pin, held.pin_hash)
    assert not sharing.pin_matches(f"{(int(link.pin) + 1) % 10**6:06d}", held.pin_hash)
    assert not sharing.pin_matches(link.pin, "garbage")
    # Wrong PINs in a row count up; a right one starts the count again.
    limit = sharing.PIN_ATTEMPTS
    for n in range(1, limit):
        assert await ledger.share_pin_failed(held.id, limit=limit) == (n, False)
    await ledger.share_pin_passed(held.id)
    for n in range(1, limit):
        assert await ledger.share_pin_failed(held.id, limit=limit) == (n, False)
    assert await ledger.share_pin_failed(held.id, limit=limit) == (limit, True)
    locked = await ledger.share_link_by_id(held.id)
    assert locked is not None
    assert locked.locked is not None
    assert sharing.judge(locked, now=locked.created) == "locked"
    # A right PIN no longer unlocks it; further guesses keep it locked.
    await ledger.share_pin_passed(held.id)
    assert await ledger.share_pin_failed(held.id, limit=limit) == (limit + 1, True)
    again = await ledger.share_link_by_id(held.id)
    assert again is not None
    assert again.locked == locked.locked


async def test_concurrent_guesses_cannot_pass_the_limit(ledger: Ledger, tmp_path: Path) -> None:
    await store_study(ledger)
    link = await sharing.share_study(ledger, config(tmp_path), STUDY, pin=True)
    results: list[tuple[int, bool]] = []

    async def guess() -> None:
        results.append(await ledger.share_pin_failed(link.id, limit=sharing.PIN_ATTEMPTS))

    async with anyio.create_task_group() as tg:
        for _ in range(12):
            tg.start_soon(guess)
    assert sorted(n for n, _ in results) == list(range(1, 13))
    assert sorted(n for n, locked in results if not locked) == list(range(1, sharing.PIN_ATTEMPTS))


def test_the_pin_cookie_needs_the_pin_hash() -> None:
    from dicomrelay.ledger.shares import ShareLink

    base = ShareLink(
        id="sl-01234567",
        study_uid=STUDY,
        org="RX1",
        created=0,
        expires=1,
        revoked=None,
        pin_hash=sharing.pin_hash("123456"),
        pin_failures=0,
        locked=None,
    )
    other_pin = replace(base, pin_hash=sharing.pin_hash("123456"))  # same PIN, new salt
    assert sharing.pin_cookie(base) != sharing.pin_cookie(other_pin)
    assert sharing.pin_cookie(base) == sharing.pin_cookie(replace(base))


def test_the_link_root_comes_from_the_web_table(tmp_path: Path) -> None:
    assert sharing.link_base(config(tmp_path)) == "https://images.rx1.example"
    plain = config(tmp_path, base_url=None, host="10.0.0.7", port=8042)
    assert sharing.link_base(plain) == "http://10.0.0.7:8042"
    with pytest.raises(ConfigurationError, match="base_url"):
        sharing.link_base(config(tmp_path, base_url=None, host="0.0.0.0"))
    with pytest.raises(ConfigurationError, match="port"):
        sharing.link_base(config(tmp_path, base_url=None, port=0))
    assert sharing.link_base(config(tmp_path, base_url=None, port=0), served_port=5000) == (
        "http://127.0.0.1:5000"
    )
    with pytest.raises(ConfigurationError, match=r"\[web\]"):
        sharing.link_base(NodeConfig(org="RX1", data_dir=tmp_path, insecure_plaintext=True))
