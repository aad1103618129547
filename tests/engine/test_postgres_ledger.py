"""Two organisations whose ledgers are on PostgreSQL (two schemas of one
server, as configured with ``ledger`` and ``ledger_schema``): a study arrives
whole and signed for, and what each side recorded is in its own schema."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import pytest

from dicomrelay.ledger.postgres import PostgresLedger
from dicomrelay.node import Node
from pg_server import fresh_schema, postgres_url

from .helpers import (
    Pki,
    assert_delivered,
    make_study,
    node_config,
    peer,
    receiver_config,
    source_by_sop,
    study_files,
)

pytestmark = pytest.mark.anyio
TIMEOUT = 60


async def test_study_between_nodes_with_postgres_ledgers(orgs: Pki, tmp_path: Path) -> None:
    url = postgres_url()
    source = make_study(tmp_path / "study", 6, seed=11)
    sources = source_by_sop(study_files(source))
    async with fresh_schema(url) as rx_schema, fresh_schema(url) as tx_schema:
        rcfg = dataclasses.replace(
            receiver_config(orgs, tmp_path),
            ledger=url,
            ledger_schema=rx_schema,
        )
        with anyio.fail_after(TIMEOUT):
            async with Node(rcfg) as rx:
                assert isinstance(rx.ledger, PostgresLedger)
                assert rx.port is not None
                scfg = dataclasses.replace(
                    node_config(
                        "RX1",
                        tmp_path / "sender",
                        identity=orgs.identity("RX1"),
                        peers=(peer("RX2", rx.port),),
                    ),
                    ledger=url,
                    ledger_schema=tx_schema,
                )
                async with Node(scfg) as tx:
                    assert isinstance(tx.ledger, PostgresLedger)
                    first = await (await tx.send(source, to="RX2")).wait()
                    # The same study again: the receiver holds it all, nothing is resent.
                    second = await (await tx.send(source, to="RX2")).wait()
                    await assert_delivered(rx, first, sources)
                    await assert_delivered(rx, second, sources)
                    kept = await tx.ledger.outgoing(first.transfer_id)
                    sent = await tx.status()
                received = await rx.status()

        assert kept is not None
        assert kept.receipt == first.to_json()
        assert sent["done"] == 2
        assert (received["received_committed"], received["stored_instances"]) == (2, 6)
        # Each side's ledger is in its own schema; no SQLite ledger was made.
        assert not (tmp_path / "sender" / "ledger.sqlite").exists()
        assert not (tmp_path / "receiver" / "ledger.sqlite").exists()

        # Reopened, as a restarted node would: the receiver's ledger still holds its receipts.
        ledger = await PostgresLedger.open(url, schema=rx_schema)
        incoming = await ledger.incoming("RX1", first.transfer_id)
        await ledger.close()
        assert incoming is not None
        assert incoming.receipt == first.to_json()
