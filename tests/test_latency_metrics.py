"""The transfer latency histogram of ``/metrics`` on each backend: each done
transfer counted, by destination, in the buckets its time from queued to
receipt falls in; a claim given back after the commit does not move it; and
the exposition parses with prometheus-client's own parser."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicomrelay.ledger import Ledger, OutgoingTransfer, TransferState
from dicomrelay.ledger.statements import LATENCY_BUCKETS
from dicomrelay.web.metrics import exposition
from pg_server import either_ledger

pytestmark = pytest.mark.anyio
NAME = "dicomrelay_transfer_latency_seconds"


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return "asyncio", {"use_uvloop": True}


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    async with either_ledger(request.param, tmp_path) as opened:
        yield opened


async def queue(ledger: Ledger, transfer_id: str, to: str, queued_ago: float) -> None:
    transfer = OutgoingTransfer(
        id=transfer_id,
        destination=to,
        study_instance_uid="1.2.3",
        priority="routine",
        digest="sha256",
        chunk_size=1 << 20,
        state=TransferState.QUEUED,
        attempts=0,
        next_attempt=0.0,
        created=time.time() - queued_ago,
        total=1,
    )
    await ledger.add_outgoing(transfer, [])


def histogram(text: str) -> dict[str, dict[str, float]]:
    """destination -> {le: cumulative count, "count": n, "sum": seconds}."""
    out: dict[str, dict[str, float]] = {}
    [family] = [f for f in text_string_to_metric_families(text) if f.name == NAME]
    assert family.type == "histogram"
    for s in family.samples:
        row = out.setdefault(s.labels["destination"], {})
        if s.name.endswith("_bucket"):
            row[s.labels["le"]] = s.value
        else:
            row[s.name.rsplit("_", 1)[-1]] = s.value
    return out


async def scrape(ledger: Ledger) -> dict[str, dict[str, float]]:
    return histogram(exposition(await ledger.metrics(), {}).decode())


async def test_done_transfers_fall_in_their_buckets(ledger: Ledger) -> None:
    assert await scrape(ledger) == {}
    await queue(ledger, "t1", "RX2", queued_ago=7.0)
    await queue(ledger, "t2", "RX2", queued_ago=0.2)
    await queue(ledger, "t3", "RX3", queued_ago=400.0)
    await queue(ledger, "t4", "RX2", queued_ago=1.0)  # still queued: not counted
    assert await scrape(ledger) == {}
    for transfer_id in ("t1", "t2", "t3"):
        claimed = await ledger.claim_outgoing(
            "w", now=time.time(), lease_seconds=30, limit=1, only=[transfer_id]
        )
        assert [t.id for t in claimed] == [transfer_id]
        await ledger.set_outgoing_state(transfer_id, TransferState.DONE, receipt=b"{}")
    done = await scrape(ledger)
    # Given back a while after the commit: the latency stays the commit's.
    time.sleep(0.3)
    for transfer_id in ("t1", "t2", "t3"):
        assert await ledger.release_claim("w", transfer_id)
    after = await scrape(ledger)
    assert after == done
    rx2, rx3 = after["RX2"], after["RX3"]
    assert rx2["count"] == 2
    assert rx2["+Inf"] == 2
    assert 7.2 <= rx2["sum"] < 8.0
    assert (rx2["0.5"], rx2["1.0"], rx2["5.0"], rx2["10.0"]) == (1, 1, 1, 2)
    assert rx3["count"] == 1
    assert (rx3["300.0"], rx3["600.0"]) == (0, 1)
    for row in after.values():  # cumulative, as Prometheus expects
        counts = [row[repr(b)] for b in LATENCY_BUCKETS] + [row["+Inf"]]
        assert counts == sorted(counts)
