"""What a node's web server shows its operators as studies go out: the
transfer latency histogram of ``/metrics`` moves as each transfer
completes, and the status page (``dicomrelay status``'s report) lists
transfers by destination, priority and state and every dead letter with its
reason, to the node's own organisation only."""

from __future__ import annotations

import dataclasses
import sqlite3
import warnings
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
import requests
import urllib3
from prometheus_client.parser import text_string_to_metric_families

from dicomrelay.config import WebConfig
from dicomrelay.ledger import OutgoingTransfer, TransferState
from dicomrelay.node import Node
from dicomrelay.web.auth import new_token, token_hash

from .helpers import Pki, make_study, node_config, peer, receiver_config

pytestmark = pytest.mark.anyio
LATENCY = "dicomrelay_transfer_latency_seconds"


def latency(base: str, token: str) -> dict[str, float]:
    """RX2's latency samples (``_count``, ``_sum``, ``_bucket`` by ``le``), as
    prometheus-client's own parser reads the scrape."""
    answer = requests.get(
        f"{base}/metrics", headers={"Authorization": f"Bearer {token}"}, verify=False
    )
    assert answer.status_code == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.text):
        if family.name != LATENCY:
            continue
        assert family.type == "histogram"
        for s in family.samples:
            if s.labels.get("destination") == "RX2":
                out[s.name.removeprefix(LATENCY) + s.labels.get("le", "")] = s.value
    return out


def session(orgs: Pki, code: str | None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = False  # the node's certificate names rx1.org.dicomrelay, not 127.0.0.1
    if code is not None:
        identity = orgs.identity(code)
        s.cert = (str(identity.cert), str(identity.key))
    return s


async def test_latency_and_the_status_page_follow_transfers(tmp_path: Path, orgs: Pki) -> None:
    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
    studies = [make_study(tmp_path / f"study{n}", 3, profile="mr", seed=n) for n in (1, 2)]
    rx1 = orgs.identity("RX1")
    async with Node(receiver_config(orgs, tmp_path)) as rx:
        assert rx.port is not None
        tx_config = dataclasses.replace(
            node_config("RX1", tmp_path / "sender", identity=rx1, peers=(peer("RX2", rx.port),)),
            web=WebConfig(port=0, cert=rx1.cert, key=rx1.key),
        )
        async with Node(tx_config) as tx:
            token = new_token()
            await tx.ledger.add_token(
                "operator", token_hash(token), org="RX1", scope="read", expires=None
            )
            base = f"https://127.0.0.1:{tx.web_port}"
            assert await anyio.to_thread.run_sync(latency, base, token) == {}
            counts = []
            for n, study in enumerate(studies, start=1):
                transfer = await tx.send(study, to="RX2", priority="urgent")
                await transfer.wait()
                after = await anyio.to_thread.run_sync(latency, base, token)
                counts.append(after["_count"])
                assert after["_bucket+Inf"] == n
                assert 0 < after["_sum"] < 60 * n
                assert after["_bucket3600.0"] == n
            assert counts == [1, 2]

            # A dead letter, as the outbox records one.
            dead = OutgoingTransfer(
                id="dead-1",
                destination="RX3",
                study_instance_uid="1.2.826.0.1.3680043.8.498.99",
                priority="routine",
                digest="sha256",
                chunk_size=1 << 20,
                state=TransferState.QUEUED,
                attempts=0,
                next_attempt=1e12,
                created=1.0,
                total=4,
            )
            await tx.ledger.add_outgoing(dead, [])
            await tx.ledger.set_outgoing_state(
                "dead-1", TransferState.DEAD, attempts=5, error="RX3 <unreachable> & gone"
            )

            def pages() -> dict[str, requests.Response]:
                page = f"{base}/status"
                return {
                    "token": session(orgs, None).get(
                        page, headers={"Authorization": f"Bearer {token}"}
                    ),
                    "own certificate": session(orgs, "RX1").get(page),
                    "peer certificate": session(orgs, "RX2").get(page),
                    "nothing": session(orgs, None).get(page),
                    "wrong token": session(orgs, None).get(
                        page, headers={"Authorization": "Bearer drt_nonsense"}
                    ),
                }

            answers = await anyio.to_thread.run_sync(pages)

    for who in ("token", "own certificate"):
        answer = answers[who]
        assert answer.status_code == 200, who
        assert answer.headers["content-type"].startswith("text/html")
        html = answer.text
        # By destination, priority and state: RX2 urgent done 2 (3 instances each).
        assert "<td>RX2</td><td>urgent</td><td>done</td>" in html
        assert '<td class="n">2</td><td class="n">6</td>' in html
        assert "<td>dead-1</td><td>RX3</td><td>1.2.826.0.1.3680043.8.498.99</td>" in html
        assert "RX3 &lt;unreachable&gt; &amp; gone" in html  # escaped
        assert "<script" not in html
    assert answers["peer certificate"].status_code == 403
    for who in ("nothing", "wrong token"):
        assert answers[who].status_code == 401
        assert "dead-1" not in answers[who].text
    with sqlite3.connect(tmp_path / "sender" / "ledger.sqlite") as db:
        rows = db.execute("SELECT org, action, detail FROM audit WHERE detail LIKE '%status%'")
        audited = rows.fetchall()
    assert ("RX2", "dicomweb-denied") in [(o, a) for o, a, _ in audited]
    assert sum(a == "dicomweb-refused" for _, a, _ in audited) == 2
