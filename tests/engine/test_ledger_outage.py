"""A worker's PostgreSQL ledger going away and coming back: ``dicomrelay
serve`` outlives the outage, starts its node again once the database answers,
and the transfer queued before the outage is delivered, once."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from dicomrelay.config import NodeConfig
from dicomrelay.errors import LedgerUnavailable
from dicomrelay.ledger.postgres import PostgresLedger
from dicomrelay.node import Node
from pg_server import private_cluster

from .helpers import Pki, closed_port, make_study
from .processes import Child, dicomrelay, last_json_line, node_toml, receiver_toml

LIMITS = {
    "max_attempts": 1000,  # the receiver is away for a while: no dead letter meanwhile
    "backoff_base": 0.05,
    "backoff_cap": 0.5,
    "lease_seconds": 3.0,
    "claim_poll_seconds": 0.05,
}


def status(toml: Path) -> dict[str, Any]:
    result = dicomrelay("status", "--json", "--config", str(toml))
    assert result.returncode == 0, result.stderr
    return last_json_line(result)


def queue_through_another_worker(toml: Path, study: Path) -> str:
    """Queue a transfer in the shared ledger from a worker that stops at once
    (what it claimed goes back to the queue)."""

    async def queue() -> str:
        config = dataclasses.replace(NodeConfig.from_toml(toml), worker="queuer")
        async with Node(config) as node:
            return (await node.send(study, to="RX2")).id

    return anyio.run(queue)


def test_serve_outlives_an_outage_of_its_ledger(tmp_path: Path) -> None:
    orgs = Pki(tmp_path / "pki")
    rx_port = closed_port()
    study = make_study(tmp_path / "study", 6, seed=41)
    rx_toml = receiver_toml(tmp_path, orgs.identity("RX2"), rx_port)
    with private_cluster(closed_port()) as pg:
        toml = node_toml(
            tmp_path / "w1.toml",
            orgs.identity("RX1"),
            data_dir=tmp_path / "w1",
            peer=("RX2", rx_port),
            limits=LIMITS,
            node={"ledger": pg.url, "worker": "w1"},
        )
        worker = Child.dicomrelay("serve", "--config", str(toml))
        receiver: Child | None = None
        try:
            worker.expect("node RX1 serving", 30)
            transfer_id = queue_through_another_worker(toml, study)
            # The receiver is not up yet: the worker claims the transfer and retries.
            pg.stop()
            worker.expect(r"node RX1 stopped: PostgreSQL ledger: .*starting again in 1 s", 60)
            worker.expect(r"starting again in 2 s", 30)  # the database is still away
            assert worker.alive()
            pg.start()
            receiver = Child.dicomrelay("serve", "--config", str(rx_toml))
            receiver.expect(rf"serving \(port {rx_port}\)", 30)
            worker.expect("node RX1 serving", 60)
            deadline = time.monotonic() + 60
            while (row := status(toml)["transfers"][0])["state"] != "done":
                assert time.monotonic() < deadline, f"not delivered: {row}\n{worker.output()}"
                time.sleep(0.2)
            assert worker.alive()
        finally:
            worker.stop()
            if receiver is not None:
                receiver.stop()
    assert (row["id"], row["acked"], row["total"], row["worker"]) == (transfer_id, 6, 6, None)
    received = status(rx_toml)["counts"]
    assert (received["received_committed"], received["stored_instances"]) == (1, 6)


def test_an_unreachable_ledger_is_a_typed_error(tmp_path: Path) -> None:
    """Nothing listens where the ledger should be: opening it raises
    LedgerUnavailable, and ``status`` and ``send`` say so in a line, not a
    traceback."""
    url = f"postgresql://dicomrelay@127.0.0.1:{closed_port()}/dicomrelay"
    with pytest.raises(LedgerUnavailable, match=r"^PostgreSQL ledger: connection failed"):
        anyio.run(PostgresLedger.open, url)
    orgs = Pki(tmp_path / "pki")
    toml = node_toml(
        tmp_path / "w1.toml",
        orgs.identity("RX1"),
        data_dir=tmp_path / "w1",
        peer=("RX2", closed_port()),
        node={"ledger": url, "worker": "w1"},
    )
    study = make_study(tmp_path / "study", 1)
    for command in (["status"], ["send", str(study), "--to", "RX2"]):
        result = dicomrelay(*command, "--config", str(toml))
        assert result.returncode == 1
        assert result.stderr.startswith(
            f"dicomrelay {command[0]}: PostgreSQL ledger: connection failed"
        )
        assert "Traceback" not in result.stderr
