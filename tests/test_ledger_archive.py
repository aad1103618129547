"""What the ledger keeps for DICOMweb, on each backend: instances stored with
their attributes, searches at each level with each kind of match, what each
organisation may see, the index of blobs stored by other ways, API tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dicomrelay.ledger import IncomingInstance, Ledger
from dicomrelay.ledger.archive import StoredAttributes, Visibility
from dicomrelay.ledger.search import Match, Search, like_pattern
from pg_server import either_ledger

pytestmark = pytest.mark.anyio
NODE = Visibility(org="RX1", everything=True)


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return "asyncio", {"use_uvloop": True}


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    async with either_ledger(request.param, tmp_path) as opened:
        yield opened


def instance(
    n: int,
    *,
    study: str = "1.1",
    series: str = "1.1.1",
    modality: str = "CT",
    patient: str = "P1",
    name: str = "Doe^Jane",
    date: str = "20261127",
) -> StoredAttributes:
    return StoredAttributes(
        digest=f"{n:064x}",
        study_uid=study,
        series_uid=series,
        sop_uid=f"{series}.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        patient_id=patient,
        patient_name=name,
        accession_number=f"A{patient}",
        modality=modality,
        study_date=date,
        charset=None,
        transfer_syntax="1.2.840.10008.1.2.1",
        rows=512,
        columns=512,
        frames=None,
        bits_allocated=16,
        pixel_offset=1000,
        pixel_length=512 * 512 * 2,
        encapsulated=False,
        size=1000 + 512 * 512 * 2,
    )


async def fill(ledger: Ledger) -> None:
    await ledger.store_instances("RX1", "b1", [instance(n) for n in range(3)], 1.0)
    await ledger.store_instances("RX1", "b2", [instance(10, series="1.1.2", modality="SR")], 1.0)
    await ledger.store_instances(
        "RX2",
        "b3",
        [
            instance(
                20 + n,
                study="2.2",
                series="2.2.1",
                modality="MR",
                patient="P2",
                name="Roe^Richard",
                date="20250101",
            )
            for n in range(2)
        ],
        2.0,
    )


def studies(rows: list[tuple[object, ...]]) -> list[object]:
    return [r[0] for r in rows]


async def test_searches_at_each_level(ledger: Ledger) -> None:
    await fill(ledger)
    rows = await ledger.search(Search(level="study", visible_to=NODE, limit=100))
    assert studies(rows) == ["1.1", "2.2"]
    [ct] = [r for r in rows if r[0] == "1.1"]
    assert sorted(str(ct[6]).split(",")) == ["CT", "SR"]
    assert (ct[7], ct[8]) == (2, 4)  # series, instances

    async def find(*matches: Match, modalities: tuple[str, ...] = ()) -> list[object]:
        search = Search(
            level="study",
            visible_to=NODE,
            matches=matches,
            modalities_in_study=modalities,
            limit=100,
        )
        return studies(await ledger.search(search))

    assert await find(Match("patient_id", "exact", ("P2",))) == ["2.2"]
    assert await find(Match("patient_name", "wildcard", ("doe*",))) == ["1.1"]
    assert await find(Match("patient_name", "wildcard", ("?oe^*",))) == ["1.1", "2.2"]
    assert await find(Match("study_date", "range", low="20260101")) == ["1.1"]
    assert await find(Match("study_date", "range", high="20251231")) == ["2.2"]
    assert await find(Match("study_uid", "uids", ("2.2", "9.9"))) == ["2.2"]
    assert await find(modalities=("SR",)) == ["1.1"]
    assert await find(modalities=("MR", "SR")) == ["1.1", "2.2"]

    series = await ledger.search(
        Search(
            level="series",
            visible_to=NODE,
            matches=(Match("study_uid", "uids", ("1.1",)),),
            limit=10,
        )
    )
    assert [(r[6], r[7], r[8]) for r in series] == [("1.1.1", "CT", 3), ("1.1.2", "SR", 1)]
    page = await ledger.stored_instances(
        Search(level="instance", visible_to=NODE, limit=2, offset=1)
    )
    assert [a.sop_uid for a in page] == ["1.1.1.1", "1.1.1.2"]
    assert page[0] == instance(1)


async def test_each_organisation_sees_what_was_sent_to_or_by_it(ledger: Ledger) -> None:
    await fill(ledger)
    rx2 = Visibility(org="RX2", everything=False)
    rx3 = Visibility(org="RX3", everything=False)
    assert studies(await ledger.search(Search(level="study", visible_to=rx2, limit=9))) == ["2.2"]
    assert await ledger.search(Search(level="study", visible_to=rx3, limit=9)) == []


async def test_the_index_of_blobs_stored_by_other_ways(ledger: Ledger) -> None:
    await ledger.store_instances("RX1", "b1", [instance(1)], 1.0)
    assert await ledger.unindexed(0.0, 10) == []  # stored with its attributes
    # Committed over the wire: in the store, not yet indexed.
    await ledger.note_incoming("RX2", "t1", "3.3", 2, "sha256")
    await ledger.record_received(
        "RX2",
        "t1",
        [
            IncomingInstance(
                index=n, sop_instance_uid=f"3.3.{n}", size=10, digest=f"{n + 50:064x}", stored=1.0
            )
            for n in range(2)
        ],
    )
    await ledger.commit_incoming("RX2", "t1", "3.3", b"{}", 5.0)
    found = await ledger.unindexed(0.0, 10)
    assert sorted(found) == [(f"{50:064x}", 5.0), (f"{51:064x}", 5.0)]
    assert await ledger.unindexed(5.5, 10) == []
    await ledger.add_attributes([instance(50, study="3.3")])
    assert await ledger.unindexed(0.0, 10) == [(f"{51:064x}", 5.0)]


async def test_tokens(ledger: Ledger) -> None:
    assert await ledger.add_token("viewer", "h1", org="RX1", scope="read", expires=None)
    assert not await ledger.add_token("viewer", "h2", org="RX1", scope="write", expires=None)
    token = await ledger.token("h1")
    assert token is not None
    assert (token.name, token.scope, token.revoked) == (
        "viewer",
        "read",
        None,
    )
    assert await ledger.revoke_token("viewer")
    assert not await ledger.revoke_token("viewer")
    revoked = await ledger.token("h1")
    assert revoked is not None
    assert revoked.revoked is not None
    # A revoked name may be given a new token; the old one is gone.
    assert await ledger.add_token("viewer", "h3", org="RX1", scope="write", expires=5.0)
    assert await ledger.token("h1") is None
    assert [t.name for t in await ledger.tokens()] == ["viewer"]


def test_like_patterns_escape_what_like_means() -> None:
    assert like_pattern("a*b?c") == "A%B_C"
    assert like_pattern("50%_x\\") == "50\\%\\_X\\\\"


async def test_metrics_counts(ledger: Ledger) -> None:
    from dicomrelay.web.metrics import exposition

    await fill(ledger)
    await ledger.audit("RX9", "refused", None, "a stranger")
    await ledger.audit("RX1", "dicomweb-refused", None, "no token")
    await ledger.audit("RX1", "dicomweb-refused", None, "no token")
    counts = await ledger.metrics()
    assert counts["transfers"] == []
    assert [(int(n), int(size)) for n, size in counts["store"]] == [(6, 6 * (1000 + 512 * 512 * 2))]
    assert sorted((a, int(n)) for a, n in counts["refusals"]) == [
        ("dicomweb-refused", 2),
        ("refused", 1),
    ]
    text = exposition(counts, {"dicom": 0, "dicomweb": 1}).decode()
    assert 'dicomrelay_refusals_total{reason="dicomweb-refused"} 2.0' in text
    assert "dicomrelay_store_instances 6.0" in text
