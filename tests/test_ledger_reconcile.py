"""The ledger's record of patient-ID reconciliation (migration 6), on SQLite
and PostgreSQL: a transfer's states, the store's rows switched to the
rewritten instances in one transaction (only where they still hold what the
transfer received), received digest -> reconciled digest kept, the received
records dropped, and the operator's mapping table read."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from dicomrelay.ledger import IncomingInstance, Ledger, SqliteLedger
from dicomrelay.ledger.migrations import LATEST
from dicomrelay.ledger.reconciliations import ReconciledInstance
from dicomrelay.ledger.work import Query, Work
from pg_server import fresh_schema, postgres_url

pytestmark = pytest.mark.anyio
TID, OTHER = "a" * 32, "b" * 32
STORE = "store-1"

Opener = Callable[[], Awaitable[Ledger]]


@pytest.fixture(params=["sqlite", "postgres"])
async def open_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    if request.param == "sqlite":

        async def open_sqlite() -> Ledger:
            return SqliteLedger(tmp_path / "ledger.sqlite")

        yield open_sqlite
        return
    url = postgres_url()
    from dicomrelay.ledger.postgres import PostgresLedger

    async with fresh_schema(url) as schema:

        async def open_postgres() -> Ledger:
            return await PostgresLedger.open(url, schema=schema)

        yield open_postgres


async def rows(ledger: Ledger, sql: str, *params: object) -> list[tuple[object, ...]]:
    driver = ledger._driver  # type: ignore[attr-defined]
    query = Query(driver.dialect.render(sql), params)

    def work() -> Work[list[tuple[object, ...]]]:
        return [tuple(r) for r in (yield query).rows]

    result: list[tuple[object, ...]] = await driver.run(work)
    return result


async def commit_transfer(ledger: Ledger, transfer: str, digests: list[str]) -> None:
    await ledger.note_incoming("RX1", transfer, "1.2.3", len(digests), "sha256")
    instances = [
        IncomingInstance(index=n, sop_instance_uid=f"1.2.3.{n}", size=100, digest=d, stored=1.0)
        for n, d in enumerate(digests)
    ]
    located = [(d, (1, 4096 * (n + 1), 100)) for n, d in enumerate(digests)]
    await ledger.record_round(STORE, (1, 65536), located, [("RX1", transfer, i) for i in instances])
    await ledger.commit_incoming("RX1", transfer, "1.2.3", b"{}", 2.0)


async def test_a_reconciled_transfer_switches_the_store_and_drops_what_was_received(
    open_ledger: Opener,
) -> None:
    ledger = await open_ledger()
    try:
        assert (await rows(ledger, "SELECT max(version) FROM schema_version"))[0][0] == LATEST
        received = ["0" * 64, "1" * 64]
        await commit_transfer(ledger, TID, received)
        row = await ledger.add_reconciliation("RX1", TID, "1.2.3", "urgent")
        assert (row.state, row.priority, row.study_uid) == ("pending", "urgent", "1.2.3")
        again = await ledger.add_reconciliation("RX1", TID, "1.2.3", "routine")
        assert again == row  # recorded once
        await ledger.hold_reconciliation(
            "RX1", TID, foreign_patient_id="P1", foreign_issuer="RXA", reason="no match"
        )
        assert await ledger.counts() == {**(await ledger.counts()), "reconciliations_held": 1}
        [held] = await ledger.reconciliations(states=("held",))
        assert (held.foreign_patient_id, held.reason) == ("P1", "no match")
        assert (
            await ledger.resolve_reconciliation(
                "1.2.3", local_patient_id="B1", local_issuer="TB", reason="operator"
            )
            == 1
        )
        assert (
            await ledger.resolve_reconciliation(
                "1.2.3", local_patient_id="B2", local_issuer=None, reason="again"
            )
            == 0
        )  # no longer held
        [resolving] = await ledger.reconciliations(study_uid="1.2.3")
        assert (resolving.state, resolving.local_patient_id) == ("resolving", "B1")

        rewritten = ["2" * 64, "3" * 64]
        await ledger.record_round(
            STORE,
            (1, 131072),
            [(d, (1, 70000 + n * 4096, 120)) for n, d in enumerate(rewritten)],
            [],
        )
        done = [
            ReconciledInstance(
                sop_uid=f"1.2.3.{n}", received_digest=r, reconciled_digest=w, size=120
            )
            for n, (r, w) in enumerate(zip(received, rewritten, strict=True))
        ]
        switched = await ledger.finish_reconciliation(
            "RX1",
            TID,
            "1.2.3",
            done,
            rule="from-rx1",
            foreign_patient_id="P1",
            foreign_issuer="RXA",
            local_patient_id="B1",
            local_issuer="TB",
            reason="coerced",
        )
        assert switched == 2
        assert await ledger.study("1.2.3") == [
            ("1.2.3.0", rewritten[0], 120),
            ("1.2.3.1", rewritten[1], 120),
        ]
        assert await ledger.reconciled_instances("RX1", TID) == done
        # The received records are garbage now; the rewritten ones are located.
        assert set(await ledger.locations(STORE, received + rewritten)) == set(rewritten)
        [finished] = await ledger.reconciliations(study_uid="1.2.3")
        assert (finished.state, finished.rule, finished.local_issuer) == (
            "reconciled",
            "from-rx1",
            "TB",
        )
    finally:
        await ledger.close()
    reopened = await open_ledger()
    try:
        assert (await reopened.reconciliation("RX1", TID)).state == "reconciled"  # type: ignore[union-attr]
        assert (await reopened.reconciliation_counts()) == {"reconciled": 1}
    finally:
        await reopened.close()


async def test_a_row_a_later_transfer_replaced_is_not_switched(open_ledger: Opener) -> None:
    ledger = await open_ledger()
    try:
        await commit_transfer(ledger, TID, ["0" * 64])
        await commit_transfer(ledger, OTHER, ["5" * 64])  # the same UID, sent again, corrected
        await ledger.add_reconciliation("RX1", TID, "1.2.3", "routine")
        done = [
            ReconciledInstance(
                sop_uid="1.2.3.0", received_digest="0" * 64, reconciled_digest="6" * 64, size=9
            )
        ]
        assert (
            await ledger.finish_reconciliation(
                "RX1",
                TID,
                "1.2.3",
                done,
                rule="r",
                foreign_patient_id=None,
                foreign_issuer=None,
                local_patient_id="B1",
                local_issuer=None,
                reason="coerced",
            )
            == 0
        )
        assert await ledger.study("1.2.3") == [("1.2.3.0", "5" * 64, 100)]
    finally:
        await ledger.close()


async def test_the_mapping_table_is_read_on_both_backends(open_ledger: Opener) -> None:
    ledger = await open_ledger()
    try:
        await rows(
            ledger,
            "INSERT INTO patient_mapping (local_patient_id, local_issuer, nhs_number, sender,"
            " issuer, patient_id) VALUES (?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?)",
            *("B-NHS", "TB", "943 476 5919", None, None, None),
            *("B-ID", None, None, "rx1", "RXA", "P1"),
        )
        read = ledger.patient_mapping_rows
        assert await read("patient_mapping", nhs_number="9434765919", sender_id=None) == [
            ("B-NHS", "TB")
        ]
        assert await read("patient_mapping", nhs_number=None, sender_id=("RX1", "RXA", "P1")) == [
            ("B-ID", None)
        ]
        assert await read("patient_mapping", nhs_number=None, sender_id=("", "RXA", "P1")) == []
    finally:
        await ledger.close()
