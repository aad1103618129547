"""Reconciling a transfer as it arrives: the receiving session looks the
foreign patient up once, at a transfer's first instance its inbound rule
reconciles, and gives each instance after it the header edits that file it
under the local patient; the store's round rewrites it (``instance_store``),
so the reconciled instance is stored in place of the received one, with no
second pass over the study after its commit.

Whatever cannot be planned here (no match, an unusable mapping, an instance
naming another patient, an edit that cannot be made) is stored as received
and left to the ``Reconciler`` after the commit, which holds it with the
reason: this is only the fast way to the same result.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from dicomrelay._native import Payload, header_values, header_values_file
from dicomrelay.config import DigestName, NodeConfig
from dicomrelay.errors import DicomParseError, PatientMappingError, RewriteError
from dicomrelay.instance_store import OnTheWay
from dicomrelay.ledger import Ledger
from dicomrelay.policy import Decision
from dicomrelay.reconcile import (
    TAGS_TO_READ,
    ForeignPatient,
    LocalPatient,
    PatientIndex,
    Reconcile,
    foreign_patient,
    patient_index,
    plan_reconciliation,
)
from dicomrelay.rewrite import rewrite

log = logging.getLogger("dicomrelay.arrival")


@dataclass(frozen=True, kw_only=True, slots=True)
class TransferPlan:
    """How one transfer's instances are filed: by ``rule``, from ``foreign`` to ``local``."""

    rule: str
    reconcile: Reconcile
    foreign: ForeignPatient
    local: LocalPatient
    now: datetime.datetime


class ArrivalPlanner:
    """The plans of the transfers a node reconciles as they arrive."""

    def __init__(self, config: NodeConfig, ledger: Ledger) -> None:
        self.ledger = ledger
        self.system = f"dicomrelay {config.org}"
        self._indexes: dict[str, PatientIndex] = {
            r.name: patient_index(r.reconcile, ledger)
            for r in config.rules
            if r.reconcile is not None
        }

    @classmethod
    def of(cls, config: NodeConfig, ledger: Ledger) -> ArrivalPlanner | None:
        if not any(r.reconcile is not None for r in config.rules):
            return None
        return cls(config, ledger)

    async def plan(
        self,
        decision: Decision,
        values: dict[int, str],
        *,
        sender: str,
        transfer_id: str,
        study_uid: str,
        priority: str,
    ) -> TransferPlan | None:
        """A transfer's plan from its first reconciled instance (``values``:
        its header's TAGS_TO_READ), recorded in the ledger; None: left to
        the Reconciler after the commit (no match, or the mapping failed)."""
        rule = decision.rule
        if decision.reconcile is None or rule is None or rule not in self._indexes:
            return None
        foreign = foreign_patient(sender, values)
        try:
            local = await self._indexes[rule].find(foreign, decision.reconcile.match)
        except PatientMappingError as e:
            log.warning("transfer %s from %s: %s", transfer_id, sender, e)
            return None
        if local is None:
            return None
        issuer = local.issuer or decision.reconcile.local_issuer
        await self.ledger.note_reconciliation(
            sender,
            transfer_id,
            study_uid,
            priority=priority,
            rule=rule,
            foreign=(foreign.patient_id, foreign.issuer),
            local=(local.patient_id, issuer),
        )
        return TransferPlan(
            rule=rule,
            reconcile=decision.reconcile,
            foreign=foreign,
            local=local,
            now=datetime.datetime.now(datetime.UTC),
        )

    def edits(
        self,
        plan: TransferPlan,
        values: dict[int, str],
        *,
        transfer_id: str,
        study_uid: str,
        sop_uid: str,
    ) -> OnTheWay | None:
        """One instance's edits under ``plan``; None: stored as received (it
        names another patient, or cannot be coerced: the Reconciler holds it)."""
        if foreign_patient(plan.foreign.sender, values) != plan.foreign:
            return None
        try:
            edits = plan_reconciliation(
                values,
                foreign=plan.foreign,
                local=plan.local,
                rule=plan.reconcile,
                modifying_system=self.system,
                now=plan.now,
            )
        except PatientMappingError:
            return None
        if not edits:
            return None
        return OnTheWay(
            edits=edits,
            sender=plan.foreign.sender,
            transfer_id=transfer_id,
            study_uid=study_uid,
            sop_uid=sop_uid,
        )


async def rewritten(way: OnTheWay, data: Payload, algorithm: DigestName) -> OnTheWay | None:
    """``way`` with its rewrite made, on a worker thread (hashing the output
    is most of it), so the store's round only appends it; None when the edits
    cannot be applied (the instance is then stored as received)."""
    try:
        out = await anyio.to_thread.run_sync(lambda: rewrite(data, way.edits, digest=algorithm))
    except (RewriteError, DicomParseError):
        return None
    return dataclasses.replace(way, done=out)


async def read_values(data: Payload | Path) -> dict[int, str] | None:
    """The header values a plan needs; None for an instance that cannot be read."""
    try:
        if isinstance(data, Path):
            return (await anyio.to_thread.run_sync(header_values_file, data, TAGS_TO_READ))[0]
        return header_values(data, TAGS_TO_READ)[0]
    except (DicomParseError, OSError):
        return None
