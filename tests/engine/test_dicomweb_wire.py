"""A study committed from another organisation over the wire is indexed by
the receiving node's DICOMweb part (its headers read once from the store)
and served: found by QIDO-RS, retrieved byte-identical by WADO-RS, visible
to the organisation that sent it and to no other. And ``/metrics`` moves
as a study is sent."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from prometheus_client.parser import text_string_to_metric_families

from dicomrelay.config import WebConfig
from dicomrelay.ledger.archive import Visibility
from dicomrelay.ledger.search import Search
from dicomrelay.node import Node
from dicomrelay.web.auth import new_token, token_hash

from .helpers import Pki, make_study, node_config, peer, receiver_config, study_files

pytestmark = pytest.mark.anyio


async def test_a_study_received_over_the_wire_is_served(tmp_path: Path, orgs: Pki) -> None:
    study = make_study(tmp_path / "study", 4, profile="mr")
    rx_config = dataclasses.replace(receiver_config(orgs, tmp_path), web=WebConfig(port=0))
    async with Node(rx_config) as rx:
        assert rx.port is not None
        tx_config = node_config(
            "RX1", tmp_path / "sender", identity=orgs.identity("RX1"), peers=(peer("RX2", rx.port),)
        )
        async with Node(tx_config) as tx:
            transfer = await tx.send(study, to="RX2")
            receipt = await transfer.wait()
        token = new_token()
        assert await rx.ledger.add_token(
            "viewer", token_hash(token), org="RX2", scope="read", expires=None
        )
        client = DICOMwebClient(
            f"http://127.0.0.1:{rx.web_port}/dicomweb", headers={"Authorization": f"Bearer {token}"}
        )
        uid = receipt.study_instance_uid
        with anyio.fail_after(20):
            while not await anyio.to_thread.run_sync(
                lambda: client.search_for_studies(search_filters={"StudyInstanceUID": uid})
            ):
                await anyio.sleep(0.1)
        parts = await anyio.to_thread.run_sync(
            lambda: list(
                client._http_get_multipart(f"{client.base_url}/studies/{uid}", stream=True)
            )
        )
        assert sorted(parts) == sorted(p.read_bytes() for p in study_files(study))

        def visible(org: str) -> Search:
            return Search(level="study", visible_to=Visibility(org=org, everything=False), limit=9)

        assert [r[0] for r in await rx.ledger.search(visible("RX1"))] == [uid]
        assert await rx.ledger.search(visible("RX3")) == []


def scrape(base: str, token: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics``, parsed by prometheus-client's own parser: sample name ->
    labels -> value."""
    answer = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_metrics_move_as_a_study_is_sent(tmp_path: Path, orgs: Pki) -> None:
    study = make_study(tmp_path / "study", 5, profile="mr")
    size = sum(p.stat().st_size for p in study_files(study))
    async with Node(receiver_config(orgs, tmp_path)) as rx:
        assert rx.port is not None
        tx_config = dataclasses.replace(
            node_config(
                "RX1",
                tmp_path / "sender",
                identity=orgs.identity("RX1"),
                peers=(peer("RX2", rx.port),),
            ),
            web=WebConfig(port=0),
        )
        async with Node(tx_config) as tx:
            token = new_token()
            await tx.ledger.add_token(
                "prometheus", token_hash(token), org="RX1", scope="read", expires=None
            )
            base = f"http://127.0.0.1:{tx.web_port}"
            unauthorised = await anyio.to_thread.run_sync(requests.get, f"{base}/metrics")
            assert unauthorised.status_code == 401
            before = await anyio.to_thread.run_sync(scrape, base, token)
            assert (
                "dicomrelay_sent_instances_total" not in before
                or not before["dicomrelay_sent_instances_total"]
            )
            transfer = await tx.send(study, to="RX2", priority="urgent")
            await transfer.wait()
            after = await anyio.to_thread.run_sync(scrape, base, token)
    key = (("destination", "RX2"), ("priority", "urgent"), ("state", "done"))
    assert after["dicomrelay_transfers"][key] == 1
    assert after["dicomrelay_transfer_instances"][key] == 5
    queued = (("destination", "RX2"), ("priority", "urgent"), ("state", "queued"))
    assert after["dicomrelay_transfers"][queued] == 0
    assert after["dicomrelay_sent_instances_total"][(("destination", "RX2"),)] == 5
    assert after["dicomrelay_sent_bytes_total"][(("destination", "RX2"),)] == size
    refused = after["dicomrelay_refusals_total"]
    assert refused[(("reason", "dicomweb-refused"),)] == 1  # the scrape without a token
    assert after["dicomrelay_quarantined"][(("kind", "unreadable"),)] == 0
