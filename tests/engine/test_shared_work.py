"""Several workers of one organisation sharing a PostgreSQL ledger's sending
work (``NodeConfig.worker``): transfers queued through any of them are claimed
with leases and sent once, by whichever worker holds the lease; a worker
killed mid-transfer holds its transfer only until its lease runs out, then
another takes it over and delivers it."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql

from dicomrelay.config import Limits, NodeConfig
from dicomrelay.ledger import Ledger, TransferState
from dicomrelay.ledger.postgres import PostgresLedger
from dicomrelay.node import Node
from dicomrelay.receipt import Receipt
from dicomrelay.transfer import EventKind
from pg_server import fresh_schema, postgres_url

from .helpers import (
    Pki,
    Recorder,
    assert_delivered,
    closed_port,
    make_study,
    node_config,
    peer,
    receiver_config,
    silent_server,
    source_by_sop,
    study_files,
    wait_until,
)
from .processes import Child, dicomrelay, last_json_line, node_toml, receiver_toml

pytestmark = pytest.mark.anyio
TIMEOUT = 90
HELPER = Path(__file__).with_name("kill_sender.py")
SHARED = Limits(
    transfers_per_peer=1,  # one transfer at a time per worker: the others must be shared
    max_attempts=3,
    backoff_base=0.05,
    backoff_cap=0.5,
    connect_timeout=5.0,
    stall_timeout=30.0,
    lease_seconds=2.0,
    claim_poll_seconds=0.05,
)


def worker_config(
    orgs: Pki, data_dir: Path, *, name: str, rx_port: int, url: str, schema: str
) -> NodeConfig:
    return dataclasses.replace(
        node_config(
            "RX1",
            data_dir,
            identity=orgs.identity("RX1"),
            peers=(peer("RX2", rx_port),),
            limits=SHARED,
        ),
        ledger=url,
        ledger_schema=schema,
        worker=name,
    )


async def test_workers_on_one_ledger_share_the_sending(orgs: Pki, tmp_path: Path) -> None:
    url = postgres_url()
    studies = [make_study(tmp_path / f"study{n}", 12, seed=300 + n) for n in range(6)]
    seen = {1: Recorder(), 2: Recorder()}
    async with fresh_schema(url) as rx_schema, fresh_schema(url) as tx_schema:
        rcfg = pg_receiver_config(orgs, tmp_path, url, rx_schema)
        with anyio.fail_after(TIMEOUT):
            async with Node(rcfg) as rx:
                assert rx.port is not None
                configs = {
                    n: worker_config(
                        orgs,
                        tmp_path / f"worker{n}",
                        name=f"w{n}",
                        rx_port=rx.port,
                        url=url,
                        schema=tx_schema,
                    )
                    for n in (1, 2)
                }
                async with (
                    Node(configs[1], observer=seen[1]) as w1,
                    Node(configs[2], observer=seen[2]) as w2,
                ):
                    # All queued through one worker: its handles still end in receipts.
                    handles = [await w1.send(s, to="RX2") for s in studies]
                    receipts = [await h.wait() for h in handles]
                    for study, receipt in zip(studies, receipts, strict=True):
                        await assert_delivered(rx, receipt, source_by_sop(study_files(study)))
                    rows = await w2.ledger.all_outgoing()

    started = {n: [e.transfer_id for e in seen[n].of(EventKind.STARTED)] for n in (1, 2)}
    everyone = started[1] + started[2]
    assert sorted(everyone) == sorted(h.id for h in handles), "each transfer started exactly once"
    assert started[2], "the second worker took none of the work"
    assert {r.state for r in rows} == {TransferState.DONE}
    assert {r.claimed_by for r in rows} == {None}, "a claim outlived its attempt"


def worker_toml(path: Path, orgs: Pki, *, name: str, rx_port: int, url: str, schema: str) -> Path:
    """A worker's configuration file, for a worker in a process of its own."""
    return node_toml(
        path,
        orgs.identity("RX1"),
        data_dir=path.parent / name,
        peer=("RX2", rx_port),
        limits=dataclasses.asdict(SHARED),
        node={"ledger": url, "ledger_schema": schema, "worker": name},
    )


def pg_receiver_config(orgs: Pki, root: Path, url: str, schema: str) -> NodeConfig:
    """The receiving node (RX2), its ledger in ``schema`` on PostgreSQL."""
    return dataclasses.replace(receiver_config(orgs, root), ledger=url, ledger_schema=schema)


async def until_state(ledger: Ledger, transfer_id: str, state: TransferState) -> Any:
    while (t := await ledger.outgoing(transfer_id)) is None or t.state is not state:
        await anyio.sleep(0.02)
    return t


async def test_a_killed_workers_transfer_is_taken_over_once_its_lease_runs_out(
    orgs: Pki, tmp_path: Path
) -> None:
    url = postgres_url()
    study = make_study(tmp_path / "study", 10, seed=77)
    w2_events = Recorder()
    async with fresh_schema(url) as rx_schema, fresh_schema(url) as tx_schema:
        ledger = await PostgresLedger.open(url, schema=tx_schema)
        try:
            # The first worker's way to RX2 leads to a peer that never answers:
            # it claims the transfer and is still at it when it is killed.
            async with silent_server() as silent_port:
                toml = worker_toml(
                    tmp_path / "w1.toml",
                    orgs,
                    name="w1",
                    rx_port=silent_port,
                    url=url,
                    schema=tx_schema,
                )
                w1 = Child.script(HELPER, "--config", str(toml), "--to", "RX2", stdin=True)
                try:
                    w1.expect("^ready", 30)
                    w1.send_line(str(study))
                    transfer_id = w1.expect(r"^queued (\w+)", 30).group(1)
                    with anyio.fail_after(30):
                        held = await until_state(ledger, transfer_id, TransferState.ACTIVE)
                    assert held.claimed_by == "w1"
                    assert w1.kill(), "the first worker had already ended"
                finally:
                    w1.kill()
            # Its last renewal, read after the kill: no one may take over before this.
            orphaned = await ledger.outgoing(transfer_id)
            assert orphaned is not None
            assert orphaned.claimed_by == "w1"
            assert orphaned.lease_until is not None

            rcfg = pg_receiver_config(orgs, tmp_path, url, rx_schema)
            with anyio.fail_after(TIMEOUT):
                async with Node(rcfg) as rx:
                    assert rx.port is not None
                    w2cfg = worker_config(
                        orgs, tmp_path / "w2", name="w2", rx_port=rx.port, url=url, schema=tx_schema
                    )
                    async with Node(w2cfg, observer=w2_events) as w2:
                        await until_state(ledger, transfer_id, TransferState.DONE)
                        receipt = await w2.transfer(transfer_id).wait()
                        await assert_delivered(rx, receipt, source_by_sop(study_files(study)))
                    received = await rx.status()
            done = await ledger.outgoing(transfer_id)
        finally:
            await ledger.close()

    (started,) = w2_events.of(EventKind.STARTED, transfer_id)
    assert started.at >= orphaned.lease_until, "taken over while the killed worker's lease held"
    assert done is not None
    assert done.claimed_by is None
    assert done.receipt == receipt.to_json()
    assert (received["received_committed"], received["stored_instances"]) == (1, 10)


def test_send_from_the_command_line_beside_a_serving_worker(tmp_path: Path) -> None:
    """``dicomrelay send`` with a worker's own configuration file, while that
    worker serves: the transfer is sent once, and the command gets its receipt."""
    url = postgres_url()
    orgs = Pki(tmp_path / "pki")
    port = closed_port()
    rx_toml = receiver_toml(tmp_path, orgs.identity("RX2"), port)
    schema = f"test_{uuid.uuid4().hex[:16]}"
    toml = worker_toml(tmp_path / "w1.toml", orgs, name="w1", rx_port=port, url=url, schema=schema)
    source = make_study(tmp_path / "study", 5, seed=5)
    receiver = Child.dicomrelay("serve", "--config", str(rx_toml))
    worker = Child.dicomrelay("serve", "--config", str(toml))
    try:
        receiver.expect(rf"serving \(port {port}\)", timeout=30)
        worker.expect("serving", timeout=30)
        sent = dicomrelay("send", str(source), "--to", "RX2", "--config", str(toml))
        assert sent.returncode == 0, sent.stderr
        receipt = Receipt.from_json(sent.stdout.strip().splitlines()[-1])
        receipt.verify(orgs.cert_der("RX2"))
        assert {i.sop_instance_uid for i in receipt.instances} == set(
            source_by_sop(study_files(source))
        )
        status = last_json_line(dicomrelay("status", "--json", "--config", str(toml)))
    finally:
        worker.stop()
        receiver.stop()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    [row] = status["transfers"]
    assert (row["id"], row["state"], row["acked"], row["worker"]) == (
        receipt.transfer_id,
        "done",
        5,
        None,
    )


async def test_a_transfer_for_a_peer_a_worker_lacks_is_left_for_others(
    orgs: Pki, tmp_path: Path
) -> None:
    """Workers configured apart (one knows RX2, this one only RX3): the transfer
    for RX2 stays queued and unclaimed, not dead-lettered by the worker that
    cannot send it; the worker that knows RX2 then delivers it."""
    url = postgres_url()
    study = make_study(tmp_path / "study", 4, seed=9)
    w3_events = Recorder()
    async with fresh_schema(url) as rx_schema, fresh_schema(url) as tx_schema:
        rcfg = pg_receiver_config(orgs, tmp_path, url, rx_schema)
        with anyio.fail_after(TIMEOUT):
            async with Node(rcfg) as rx:
                assert rx.port is not None
                knows_rx2 = worker_config(
                    orgs, tmp_path / "w1", name="w1", rx_port=rx.port, url=url, schema=tx_schema
                )
                elsewhere = dataclasses.replace(
                    knows_rx2, worker="w3", data_dir=tmp_path / "w3", peers=(peer("RX3", rx.port),)
                )
                # Queued through a worker that stops at once: what it claimed goes back.
                async with Node(knows_rx2) as w1:
                    queued = await w1.send(study, to="RX2")
                async with Node(elsewhere, observer=w3_events):
                    await anyio.sleep(10 * SHARED.claim_poll_seconds)
                ledger = await PostgresLedger.open(url, schema=tx_schema)
                left = await ledger.outgoing(queued.id)
                await ledger.close()
                async with Node(knows_rx2) as w1:
                    await until_state(w1.ledger, queued.id, TransferState.DONE)
                    receipt = await w1.transfer(queued.id).wait()
                    await assert_delivered(rx, receipt, source_by_sop(study_files(study)))
    assert left is not None
    assert (left.state, left.claimed_by, left.attempts) == (TransferState.QUEUED, None, 0)
    assert not w3_events.events, "the worker without RX2 acted on the transfer"


async def test_a_worker_that_lost_its_lease_stops_its_attempt(orgs: Pki, tmp_path: Path) -> None:
    """Another worker took the transfer over (as after this one stalled past its
    lease): at its next renewal this worker stops sending it and leaves the
    ledger row to the new holder."""
    url = postgres_url()
    study = make_study(tmp_path / "study", 4, seed=21)
    async with fresh_schema(url) as schema, silent_server() as silent_port:
        config = worker_config(
            orgs, tmp_path / "w1", name="w1", rx_port=silent_port, url=url, schema=schema
        )
        events = Recorder()
        with anyio.fail_after(TIMEOUT):
            async with Node(config, observer=events) as w1:
                queued = await w1.send(study, to="RX2")
                await until_state(w1.ledger, queued.id, TransferState.ACTIVE)
                await wait_until(lambda: bool(events.of(EventKind.STARTED)), 10, "no attempt")
                assert (await w1.status())["in_flight"] == 1
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute(
                        sql.SQL(
                            "UPDATE {}.outgoing SET claimed_by = 'w2', lease_until = %s"
                            " WHERE id = %s"
                        ).format(sql.Identifier(schema)),
                        (time.time() + 60, queued.id),
                    )
                while (await w1.status())["in_flight"]:
                    await anyio.sleep(0.02)
                await anyio.sleep(5 * SHARED.claim_poll_seconds)
                row = await w1.ledger.outgoing(queued.id)
    assert row is not None
    assert (row.state, row.claimed_by, row.attempts) == (TransferState.ACTIVE, "w2", 0)
    assert not events.of(EventKind.RETRYING)
    assert not events.of(EventKind.FAILED)
    assert not queued.done
