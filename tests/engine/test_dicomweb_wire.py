"""A study committed from another organisation over the wire is indexed by
the receiving node's DICOMweb part (its headers read once from the store)
and served: found by QIDO-RS, retrieved byte-identical by WADO-RS, visible
to the organisation that sent it and to no other."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from dicomweb_client.api import DICOMwebClient

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
        assert await rx.ledger.add_token("viewer", token_hash(token), org="RX2", scope="read", expires=None)
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
            lambda: list(client._http_get_multipart(f"{client.base_url}/studies/{uid}", stream=True))
        )
        assert sorted(parts) == sorted(p.read_bytes() for p in study_files(study))

        def visible(org: str) -> Search:
            return Search(level="study", visible_to=Visibility(org=org, everything=False), limit=9)

        assert [r[0] for r in await rx.ledger.search(visible("RX1"))] == [uid]
        assert await rx.ledger.search(visible("RX3")) == []
