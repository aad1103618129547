"""Delivering a committed study into the local PACS by C-STORE: every file in
one association, again after a backoff while any is refused or the PACS is
unreachable, up to a bounded number of attempts."""

from __future__ import annotations

import random
import ssl

import anyio
import anyio.to_thread

from dicomrelay._native import InstanceInfo, scan_many
from dicomrelay.config import DicomConfig, Limits
from dicomrelay.dicom.dimse import Status
from dicomrelay.dicom.scu import AssociationError, Client, contexts_for
from dicomrelay.errors import DicomrelayError
from dicomrelay.scheduler import retry_delay


async def deliver_files(
    paths: list[str],
    dicom: DicomConfig,
    *,
    tls: ssl.SSLContext | None,
    limits: Limits,
    rng: random.Random,
) -> str:
    """C-STORE ``paths`` into ``dicom.deliver_to``; returns "" once the PACS
    holds them all, else why the last attempt failed."""
    pacs = dicom.deliver_to
    assert pacs is not None
    infos = await anyio.to_thread.run_sync(lambda: scan_many(paths))
    sendable = [(p, i) for p, i in zip(paths, infos, strict=True) if isinstance(i, InstanceInfo)]
    error = ""
    for attempt in range(1, dicom.delivery_attempts + 1):
        try:
            async with await Client.connect(
                pacs.host,
                pacs.port,
                calling_ae_title=dicom.ae_title,
                called_ae_title=pacs.ae_title,
                contexts=contexts_for([i for _, i in sendable]),
                tls=tls,
            ) as client:
                failed = len(paths) - len(sendable)  # unreadable since they were stored
                async for _path, status in client.store_many(sendable):
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
