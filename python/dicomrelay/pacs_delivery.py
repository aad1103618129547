"""Delivering a committed study into the local PACS by C-STORE, read from the
node's instance store: every instance in one association, again after a
backoff while any is refused or the PACS is unreachable, up to a bounded
number of attempts."""

from __future__ import annotations

import random
import ssl
from collections.abc import Sequence

import anyio
import anyio.to_thread

from dicomrelay._native import InstanceInfo, scan
from dicomrelay.config import DicomConfig, Limits
from dicomrelay.dicom.dimse import Status
from dicomrelay.dicom.scu import AssociationError, Client, Source, contexts_for
from dicomrelay.errors import DicomrelayError
from dicomrelay.instance_store import InstanceStore
from dicomrelay.scheduler import retry_delay


async def _scanned(store: InstanceStore, digests: Sequence[str]) -> dict[str, InstanceInfo]:
    """Each instance read back whole, checked against its digest and scanned
    (for its presentation context); those that cannot be are left out."""
    infos: dict[str, InstanceInfo] = {}
    for digest in dict.fromkeys(digests):
        try:
            data = await store.read_instance(digest)
            infos[digest] = await anyio.to_thread.run_sync(scan, data)
        except (OSError, DicomrelayError, ValueError):
            continue
    return infos


async def deliver_instances(
    store: InstanceStore,
    digests: Sequence[str],
    dicom: DicomConfig,
    *,
    tls: ssl.SSLContext | None,
    limits: Limits,
    rng: random.Random,
) -> str:
    """C-STORE the instances ``digests`` into ``dicom.deliver_to``; returns ""
    once the PACS holds them all, else why the last attempt failed."""
    pacs = dicom.deliver_to
    assert pacs is not None
    infos = await _scanned(store, digests)
    error = ""
    for attempt in range(1, dicom.delivery_attempts + 1):
        try:
            # Looked up each attempt: compaction may have moved them since.
            where = await store.locations(list(infos))
            sendable: list[tuple[Source, InstanceInfo]] = [
                (store.opener(digest, where[digest]), info)
                for digest, info in infos.items()
                if digest in where
            ]
            async with await Client.connect(
                pacs.host,
                pacs.port,
                calling_ae_title=dicom.ae_title,
                called_ae_title=pacs.ae_title,
                contexts=contexts_for(list(infos.values())),
                tls=tls,
            ) as client:
                failed = len(set(digests)) - len(sendable)  # unreadable or dropped since
                async for _source, status in client.store_many(sendable):
                    if status != Status.SUCCESS:
                        failed += 1
            if not failed:
                return ""
            error = f"{failed} instances refused"
        except (AssociationError, OSError, TimeoutError, DicomrelayError) as e:
            error = str(e)
        if attempt < dicom.delivery_attempts:
            delay = retry_delay(
                attempt, base=limits.backoff_base, cap=limits.backoff_cap, unit=rng.random()
            )
            await anyio.sleep(delay)
    return error
