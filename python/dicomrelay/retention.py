"""``StoreKeeper``: what a node keeps, and the space it gets back.

Every ``sweep_seconds`` it drops the committed studies older than
``keep_days`` (when set), and what the DICOM SCP received and a transfer
finished sending on before then, then compacts each sealed segment whose live share
has fallen under ``compact_below``: transfers go on meanwhile, between its
batches. (Studies delivered into the PACS are dropped by the gateway as the
delivery ends, when ``drop_after_delivery`` says so.) A failed sweep is
logged and tried again at the next: nothing it does is half done in the
ledger, and a segment half copied is only garbage the next sweep removes.
"""

from __future__ import annotations

import logging
import time

import anyio

from dicomrelay.config import StoreConfig
from dicomrelay.errors import DicomrelayError
from dicomrelay.instance_store import InstanceStore

log = logging.getLogger("dicomrelay.retention")

DAY = 86400.0


class StoreKeeper:
    def __init__(self, store: InstanceStore, config: StoreConfig) -> None:
        self.store = store
        self.config = config

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.config.sweep_seconds)
            try:
                await self.sweep(time.time())
            except (OSError, DicomrelayError) as e:
                log.error("store sweep failed: %s", e)

    async def sweep(self, now: float) -> tuple[int, int]:
        """Drop what has expired, then compact; (studies dropped, segments compacted)."""
        dropped = 0
        if self.config.keep_days is not None:
            before = now - self.config.keep_days * DAY
            expired = await self.store.ledger.expired_studies(before)
            if expired:
                await self.store.drop_studies(expired)
                dropped = len(expired)
                log.info("dropped %d studies committed before %s", dropped, time.ctime(before))
            routed = await self.store.drop_routed(before)
            if routed:
                log.info("dropped %d instances routed on before %s", routed, time.ctime(before))
        compacted = 0
        for segment in await self.store.sparse_segments(self.config.compact_below):
            moved = await self.store.compact(segment)
            compacted += 1
            log.info("compacted segment %d: %d records moved", segment, moved)
        return dropped, compacted
