"""The quarantine: instances a node holds back instead of sending (or
storing) them, each with the kind of hold and the reason, until an operator
releases or deletes it. ``dicomrelay quarantine list|show|release|delete``
are these calls.

The ledger keeps one row per held instance (``ledger.quarantine``); the held
bytes are a file of their own in ``data_dir/quarantine/`` (held instances
are few, and kept apart from what the node sends or stores). On the way out
the kind is ``burned-in-annotation``: an instance bound for a destination
that gets de-identified data only, whose pixels may show identity.

- **release** decides the policy again for the instance as it is now
  configured, and queues it as a transfer of its own: de-identified, its
  pixels now allowed (the operator looked at them), with the same project key,
  so it joins the same de-identified study at the destination. The hold is
  marked released in the transaction that queues the transfer; the held
  bytes then go. A policy that now refuses it leaves it held.
- **delete** marks the hold deleted and removes the held bytes.

Every step is audited (``quarantined``, ``quarantine-released``,
``quarantine-deleted``). Holds made on receipt (``direction`` ``receive``)
are listed and shown here too; releasing them is the receiving side's.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio.to_thread

from dicomrelay._native import scan_file
from dicomrelay.config import NodeConfig
from dicomrelay.errors import CannotRelease, NotHeld
from dicomrelay.folders import sync_folder
from dicomrelay.intake import QUARANTINE, Queued, queue_held
from dicomrelay.ledger import Ledger
from dicomrelay.ledger.quarantine import HeldInstance, HoldState
from dicomrelay.outbound_deid import SourceInstance

__all__ = ["delete", "held", "release"]


async def held(ledger: Ledger, hold_id: str) -> HeldInstance:
    """The hold of that id, whatever its state; NotHeld if there is none."""
    found = await ledger.held_instance(hold_id)
    if found is None:
        raise NotHeld(f"no held instance {hold_id!r} in the quarantine")
    return found


def _still_held(h: HeldInstance) -> None:
    if h.state is not HoldState.HELD:
        raise NotHeld(f"{h.id} was {h.state.value} already ({h.resolution or 'no detail'})")


def _held_file(config: NodeConfig, h: HeldInstance) -> Path:
    """The held bytes, if they are a file this node's quarantine keeps."""
    path = Path(h.location)
    folder = (config.data_dir / QUARANTINE).resolve()
    if not path.is_absolute() or path.resolve().parent != folder:
        raise CannotRelease(
            f"{h.id} is held at {h.location}, not in this node's quarantine folder {folder}"
        )
    return path


async def release(config: NodeConfig, ledger: Ledger, hold_id: str) -> Queued:
    """Queue a held instance after all (see the module's note)."""
    h = await held(ledger, hold_id)
    _still_held(h)
    if h.direction != "send":
        raise CannotRelease(
            f"{h.id} was held on receipt from {h.org} ({h.kind}): the receiving side releases it"
        )
    path = _held_file(config, h)
    info = await anyio.to_thread.run_sync(scan_file, path)
    queued = await queue_held(config, ledger, h, SourceInstance(info, os.fspath(path)))
    transfer = queued.transfer
    await ledger.audit(
        h.org,
        "quarantine-released",
        transfer.id,
        f"instance {h.sop_uid} of study {h.study_uid} for {h.org}: {h.id} ({h.kind}) released,"
        f" queued as transfer {transfer.id}",
        study_uid=h.study_uid,
        patient_id=h.patient_id,
    )
    await anyio.to_thread.run_sync(_remove, path)
    return queued


async def delete(config: NodeConfig, ledger: Ledger, hold_id: str) -> HeldInstance:
    """Remove a held instance's bytes for good; the row stays, marked deleted."""
    h = await held(ledger, hold_id)
    _still_held(h)
    path = _held_file(config, h)
    await ledger.resolve_hold(h.id, HoldState.DELETED, "deleted by an operator")
    await anyio.to_thread.run_sync(_remove, path)
    await ledger.audit(
        h.org,
        "quarantine-deleted",
        None,
        f"instance {h.sop_uid} of study {h.study_uid} ({h.direction} {h.org}): {h.id}"
        f" ({h.kind}) deleted",
        study_uid=h.study_uid,
        patient_id=h.patient_id,
    )
    return h


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    sync_folder(path.parent)
