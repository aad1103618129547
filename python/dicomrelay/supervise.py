"""Keep a node serving through outages of its ledger's database.

A node whose ledger becomes unavailable (``LedgerUnavailable``: PostgreSQL
down, restarting or failing over, or a SQLite ledger's disk full) stops as it
would after a crash, and what it had recorded stands. ``serve_forever`` starts
it again after a pause that grows while the database stays away: the work in
flight then resumes from the ledger, as after a restart, and nothing is sent
twice (leases and the receiver's idempotent commit see to that, as they do
after a kill).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NoReturn

import anyio

from dicomrelay.config import NodeConfig
from dicomrelay.errors import LedgerUnavailable, first_failure
from dicomrelay.node import Node

log = logging.getLogger("dicomrelay.supervise")

FIRST_PAUSE = 1.0  # seconds before the first new start
LONGEST_PAUSE = 30.0
HEALTHY_SECONDS = 60.0  # a node that served this long begins its next pauses afresh


async def serve_forever(
    config: NodeConfig, *, started: Callable[[Node], None] | None = None
) -> NoReturn:
    """Run a node until cancelled, starting it again whenever its ledger
    became unavailable. ``started`` is called each time the node is up. Any
    other failure ends this, as it ends the node."""
    pause = FIRST_PAUSE
    while True:
        began = anyio.current_time()
        reason: BaseException | None = None
        try:
            async with Node(config) as node:
                if started is not None:
                    started(node)
                await anyio.sleep_forever()
        except* LedgerUnavailable as failures:
            reason = first_failure(failures)
        if anyio.current_time() - began >= HEALTHY_SECONDS:
            pause = FIRST_PAUSE
        log.error("node %s stopped: %s; starting again in %g s", config.org, reason, pause)
        await anyio.sleep(pause)
        pause = min(pause * 2, LONGEST_PAUSE)
