"""A study received over DICOM is routed as the bytes it was stored with:
node A's SCP stores into its content-addressed segment store and routes from
there, so a later store of the same SOP Instance UID (another record)
changes nothing that a transfer queued before it sends."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import anyio
import pytest

from dicomrelay import synth
from dicomrelay.config import Route
from dicomrelay.node import Node
from dicomrelay.receipt import Receipt

from .chain_helpers import routing_node, run, storescu_args
from .helpers import QUICK, Pki, closed_port, node_config, peer, query, stored_records

pytestmark = pytest.mark.anyio

TIMEOUT = 60


def revised(study: Path, into: Path) -> Path:
    """The same instances (the same UIDs), each with other pixel values."""
    shutil.copytree(study, into)
    for path in into.glob("*.dcm"):
        data = bytearray(path.read_bytes())
        for i in range(len(data) - 64, len(data)):
            data[i] ^= 0x5A
        path.write_bytes(data)
    return into


async def test_a_routed_study_is_sent_as_it_was_stored(orgs: Pki, tmp_path: Path) -> None:
    first = synth.write_study(tmp_path / "first", synth.PROFILES["mr"], 3, seed=8)
    second = revised(first, tmp_path / "second")
    b_port = closed_port()  # node B is down while both versions are stored at A
    a_cfg = routing_node(orgs, tmp_path / "a", b_port, (Route(to="RX2"),))
    a_cfg = dataclasses.replace(a_cfg, limits=dataclasses.replace(QUICK, max_attempts=10_000))
    b_cfg = node_config(
        "RX2",
        tmp_path / "b",
        identity=orgs.identity("RX2"),
        peers=(peer("RX1", 1),),
        listen_port=b_port,
    )
    a_db = tmp_path / "a" / "ledger.sqlite"
    with anyio.fail_after(TIMEOUT):
        async with Node(a_cfg) as a:
            assert a.dicom_port is not None
            for study in (first, second):
                args = storescu_args(a.dicom_port, sorted(study.glob("*.dcm")), proposal=None)
                result = await anyio.to_thread.run_sync(run, args)
                assert result.returncode == 0, result.stderr
            assert len(query(a_db, "SELECT id FROM outgoing")) == 2
            # The node's SCP stored them in its segment store, not as files.
            assert list((tmp_path / "a" / "dicom" / "received").glob("*.dcm")) == []
            assert len(stored_records(tmp_path / "a")) == 6
            async with Node(b_cfg):
                while query(a_db, "SELECT count(*) FROM outgoing WHERE state = 'done'") != [(2,)]:
                    assert not query(a_db, "SELECT id FROM outgoing WHERE state = 'dead'")
                    await anyio.sleep(0.05)
    rows = query(a_db, "SELECT id, receipt FROM outgoing ORDER BY created")
    recorded, delivered = [], []
    for transfer_id, raw in rows:
        receipt = Receipt.from_json(raw)
        receipt.verify(orgs.cert_der("RX2"))
        delivered.append({i.digest for i in receipt.instances})
        digests = query(
            a_db, "SELECT digest FROM outgoing_instances WHERE transfer_id = ?", transfer_id
        )
        recorded.append({d for (d,) in digests})
    assert delivered == recorded, "each transfer delivered the bytes it recorded"
    assert recorded[0].isdisjoint(recorded[1]), "the second store's versions are other bytes"
