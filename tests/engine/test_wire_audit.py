"""The audit of who a node turned away on its wire port: the organisation a
peer's certificate proves, never the one it claims, whatever it claims; and
every failed TLS handshake, with the caller's address."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import pytest

from dicomrelay import pki
from dicomrelay._native import TlsConfig
from dicomrelay.connection import Connection
from dicomrelay.errors import TlsError
from dicomrelay.node import Node
from dicomrelay.protocol import PROTOCOL_VERSION, Failure, Hello, Kind
from dicomrelay.receiver_control import CLAIM_SHOWN

from .helpers import LOCALHOST, Pki, node_config, peer, query

pytestmark = pytest.mark.anyio

TIMEOUT = 30
FORGED = "RX1\n1700000000.0|RX1|received|forged row"
HUGE = "R" * (1 << 20)


async def hello_as(orgs: Pki, code: str, port: int, claim: str) -> Failure:
    """Connect with ``code``'s certificate, say HELLO as ``claim``: the refusal."""
    ca, cert, key = orgs.identity(code).read()
    conn = await Connection.connect(
        LOCALHOST, port, TlsConfig.client(ca, cert, key), pki.server_name("RX2")
    )
    try:
        hello = Hello(protocol=PROTOCOL_VERSION, org=claim, digests=("sha256",))
        await conn.send(Kind.HELLO, hello.payload())
        async for frames in conn.frames():
            assert frames[0].kind is Kind.ERROR, frames[0].kind
            return Failure.parse(frames[0].payload)
        raise AssertionError("closed without a refusal")
    finally:
        await conn.aclose()


async def untrusted_client(orgs: Pki, evil: Pki, port: int) -> None:
    """Connect as RX1 with a certificate of the untrusted CA; read until refused."""
    _, cert, key = evil.identity("RX1").read()
    tls = TlsConfig.client(orgs.ca.read_bytes(), cert, key)
    conn = await Connection.connect(LOCALHOST, port, tls, pki.server_name("RX2"))
    try:
        async for _ in conn.frames():
            pass
    finally:
        await conn.aclose()


@pytest.mark.parametrize("claim", ["RX1", FORGED, HUGE], ids=["a-peer", "newline", "1MiB"])
async def test_a_refused_peer_is_audited_as_its_certificate_says(
    orgs: Pki, tmp_path: Path, claim: str
) -> None:
    """RX9 holds a certificate from the trusted CA but is not a peer; it claims
    to be RX1 (a peer), or sends a name with a forged audit line, or 1 MiB."""
    rcfg = node_config(
        "RX2",
        tmp_path / "receiver",
        identity=orgs.identity("RX2"),
        peers=(peer("RX1", 1),),
        listen_port=0,
    )
    with anyio.fail_after(TIMEOUT):
        async with Node(rcfg) as rx:
            assert rx.port is not None
            refusal = await hello_as(orgs, "RX9", rx.port, claim)
    assert refusal.code == "refused"
    assert "RX9" in refusal.message
    rows = query(rcfg.data_dir / "ledger.sqlite", "SELECT org, action, detail FROM audit")
    assert [(org, action) for org, action, _ in rows] == [("RX9", "refused")]
    [(_, _, detail)] = rows
    assert detail.startswith(f"{LOCALHOST}:")
    assert "unknown organisation 'RX9'" in detail
    assert "\n" not in detail, "a claimed name must not write lines of its own"
    assert repr(claim[:CLAIM_SHOWN]) in detail, "the claim kept, escaped"
    assert len(detail) < 400, "a claimed name is cut short"
    if claim is HUGE:
        assert f"({len(HUGE)} characters)" in detail


async def test_failed_handshakes_are_audited_and_probes_are_not(orgs: Pki, tmp_path: Path) -> None:
    evil = Pki(tmp_path / "evil", name="evil CA")
    rcfg = node_config(
        "RX2",
        tmp_path / "receiver",
        identity=orgs.identity("RX2"),
        peers=(peer("RX1", 1),),
        listen_port=0,
    )
    db = rcfg.data_dir / "ledger.sqlite"
    with anyio.fail_after(TIMEOUT):
        async with Node(rcfg) as rx:
            assert rx.port is not None
            # A probe: connect and hang up before any handshake.
            with socket.create_connection((LOCALHOST, rx.port)):
                pass
            # RX1's name, but a certificate from a CA the receiver does not trust.
            with pytest.raises((TlsError, ConnectionError)):
                await untrusted_client(orgs, evil, rx.port)
            with anyio.fail_after(5):
                while not query(db, "SELECT count(*) FROM audit")[0][0]:
                    await anyio.sleep(0.02)
            await anyio.sleep(0.2)  # the probe's row, were there one, is written by now
    rows = query(db, "SELECT org, action, detail FROM audit")
    assert [(org, action) for org, action, _ in rows] == [("RX2", "tls-refused")]
    assert rows[0][2].startswith(f"{LOCALHOST}:")
