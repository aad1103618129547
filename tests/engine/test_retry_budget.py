"""The retry budget counts attempts in a row that delivered nothing: a
connection that drops again and again while instances keep arriving (a
receiver restarting mid-study, a flaky link) never makes a dead letter."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from dicomrelay.node import Node
from dicomrelay.transfer import EventKind

from .helpers import (
    LOCALHOST,
    QUICK,
    Pki,
    Recorder,
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
LIMITS = dataclasses.replace(QUICK, max_attempts=2)
CUTS = 4
CUT_AFTER = 400_000  # bytes upstream: three instances or so, of the study's 20


@dataclass
class Cutter:
    """A relay that cuts each of its first ``cuts`` connections once
    ``cut_after`` bytes went upstream, after letting the receiver's answers
    about those bytes come back for a moment."""

    target: int
    cuts: int
    port: int = 0
    cut: int = 0

    async def handle(self, client: SocketStream) -> None:
        cutting = self.cut < self.cuts
        self.cut += cutting
        try:
            server = await anyio.connect_tcp(LOCALHOST, self.target)
            async with client, server, anyio.create_task_group() as tg:

                async def up() -> None:
                    sent = 0
                    while not cutting or sent <= CUT_AFTER:
                        data = await client.receive()
                        await server.send(data)
                        sent += len(data)
                    await anyio.sleep(0.3)  # the acknowledgements of what arrived
                    tg.cancel_scope.cancel()

                async def down() -> None:
                    while True:
                        await client.send(await server.receive())

                tg.start_soon(up)
                tg.start_soon(down)
        except* (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass


@asynccontextmanager
async def cutter(target: int, cuts: int) -> AsyncIterator[Cutter]:
    c = Cutter(target=target, cuts=cuts)
    listener = await anyio.create_tcp_listener(local_host=LOCALHOST, local_port=0)
    c.port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, c.handle)
        yield c
        tg.cancel_scope.cancel()


async def test_attempts_that_deliver_spend_no_retry_budget(orgs: Pki, tmp_path: Path) -> None:
    source = make_study(tmp_path / "study", 20, seed=7)
    sources = source_by_sop(study_files(source))
    events = Recorder()
    with anyio.fail_after(TIMEOUT):
        async with Node(receiver_config(orgs, tmp_path)) as rx:
            assert rx.port is not None
            async with cutter(rx.port, CUTS) as link:
                cfg = node_config(
                    "RX1",
                    tmp_path / "sender",
                    identity=orgs.identity("RX1"),
                    peers=(peer("RX2", link.port),),
                    limits=LIMITS,
                )
                async with Node(cfg, observer=events) as tx:
                    transfer = await tx.send(source, to="RX2")
                    receipt = await transfer.wait()
                    kept = await tx.ledger.outgoing(transfer.id)
            await assert_delivered(rx, receipt, sources)
    assert link.cut == CUTS
    # Twice the budget in failed attempts, every one of them after some progress.
    assert kept is not None
    assert (kept.attempts, kept.attempts_without_progress) == (CUTS, 0)
    assert LIMITS.max_attempts < CUTS
    assert len(events.of(EventKind.RETRYING)) == CUTS
    assert events.of(EventKind.FAILED) == []
