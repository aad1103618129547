"""``DicomGateway``: a node's DICOM face. Its storage SCP takes studies from
the local PACS and modalities and routes each to the organisation its route
names (through a ``StudySender``: the outbox); studies committed from other
organisations (a stream of UIDs: the inbox's) are delivered into the PACS by
C-STORE, with retries, each delivery kept in the ledger until done. Every
caller turned away, route and delivery is audited."""

from __future__ import annotations

import os
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Protocol

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from dicomrelay import sockets
from dicomrelay.config import DicomConfig, NodeConfig
from dicomrelay.dicom import tls
from dicomrelay.dicom.scp import Refusal, StoredInstance, StoreScp
from dicomrelay.errors import DicomrelayError
from dicomrelay.instance_store import InstanceStore
from dicomrelay.intake import QUARANTINE
from dicomrelay.ledger import Ledger
from dicomrelay.ledger.quarantine import DICOM_REFUSED, HeldInstance
from dicomrelay.pacs_delivery import deliver_instances
from dicomrelay.receiver_control import StudyCommitted
from dicomrelay.scp_store import StoreCommit
from dicomrelay.transfer import Transfer

# The node's SCP holds a dataset up to this size in memory and stores it from
# there (a CT or MR image, a report: no temporary file); a larger one (a
# radiograph of tens of MB, a whole-slide image) spills into a file first.
# Bounded so that an association's waiting datasets (its pump queues 64) stay
# within tens of MB: 1 MiB holds a CT slice (514 KB) and an ultrasound frame.
SCP_IN_MEMORY = 1 << 20


class StudySender(Protocol):
    """Where routed studies go: the node's outbox, which sends them from the store."""

    async def send_stored(
        self,
        digests: list[str],
        *,
        to: str,
        priority: str = ...,
        source_ae: str | None = ...,
    ) -> Transfer: ...


class DicomGateway:
    def __init__(
        self,
        config: NodeConfig,
        dicom: DicomConfig,
        ledger: Ledger,
        store: InstanceStore,
        sender: StudySender,
        committed: MemoryObjectReceiveStream[StudyCommitted] | None,
    ) -> None:
        """``committed``: studies committed from other organisations (and
        reconciled, where a rule says so), to deliver into ``dicom.deliver_to``
        (None when there is no PACS to feed)."""
        self.config = config
        self.dicom = dicom
        self.ledger = ledger
        self.store = store
        self.sender = sender
        self.committed = committed
        self._random = random.Random()
        self._deliveries: dict[str, anyio.Lock] = {}  # a lock per study being delivered
        self._pacs_tls = (
            None
            if dicom.tls is None
            else tls.client_context(
                certificate=dicom.tls.certificate,
                private_key=dicom.tls.private_key,
                trusted_cas=dicom.tls.trusted_cas,
            )
        )
        self.port: int | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the SCP (if it listens) and deliver (if there is a PACS) until
        cancelled; started once listening, with unfinished deliveries resumed."""
        scp = self._scp() if self.dicom.listen_port is not None else None
        try:
            listener = None
            if scp is not None:
                listener = await sockets.Listener.bind(
                    self.dicom.listen_host, self.dicom.listen_port or 0
                )
                self.port = listener.port
        except BaseException:
            if scp is not None:
                scp.close()
            raise
        async with anyio.create_task_group() as tg:
            if scp is not None and listener is not None:
                tg.start_soon(scp.serve_on, listener)  # closes the listener and the SCP
            if self.dicom.deliver_to is not None:
                for study, requested in await self.ledger.pending_deliveries():
                    tg.start_soon(self._deliver_to_pacs, study, requested)
                if self.committed is not None:
                    tg.start_soon(self._deliver_committed, tg, self.committed)
            task_status.started()

    def _scp(self) -> StoreScp:
        dicom = self.dicom
        root = self.config.data_dir / "dicom"
        return StoreScp(
            ae_title=dicom.ae_title,
            output_dir=root / "received",
            # Refused datasets are held in the node's one quarantine, as a
            # hold each in the ledger (``dicomrelay quarantine`` handles them).
            quarantine_dir=self.config.data_dir / QUARANTINE,
            reason_files=False,
            allowed_calling=frozenset(dicom.allowed_calling),
            # The PACS addresses the node by its configured AE title; a
            # caller addressing another has been misconfigured.
            require_called_ae_title=True,
            on_association_end=self._route_received,
            on_refusal=self._refused,
            # Into the node's store, by rounds (each file digested as it arrives).
            digest=self.config.digest,
            commits=StoreCommit(self.store, self.config.digest),
            # Datasets up to this size come as bytes: no file per instance.
            in_memory=SCP_IN_MEMORY,
            tls=None
            if dicom.tls is None
            else tls.server_context(
                certificate=dicom.tls.certificate,
                private_key=dicom.tls.private_key,
                trusted_cas=dicom.tls.trusted_cas,
                require_peer_certificate=dicom.tls.require_client_certificate,
            ),
        )

    # In: from the PACS to other organisations.
    async def _refused(self, refused: Refusal) -> None:
        """Every DICOM caller turned away is audited, as every wire peer is; a
        dataset refused and kept is recorded as a hold first."""
        who = f"{refused.calling_ae_title or '?'} at {refused.peer}"
        reason = refused.reason
        if refused.what == "tls":
            who = refused.peer
        elif refused.what == "dataset":
            who = f"{refused.sop_instance_uid} from {who}"
            if refused.kept is not None:
                hold = refused_hold(self.config.org, refused, refused.kept)
                await self.ledger.hold([hold])
                reason += f"; held in quarantine as {hold.id}"
        await self.ledger.audit(
            self.config.org, f"dicom-{refused.what}-refused", None, f"{who}: {reason}"
        )

    async def _route_received(self, stored: list[StoredInstance]) -> None:
        """Send each study an association stored to the organisation its route names."""
        studies: dict[str, list[StoredInstance]] = defaultdict(list)
        for s in stored:
            studies[s.info.study_instance_uid or ""].append(s)
        for study, instances in studies.items():
            first = instances[0]
            to = self.dicom.route(
                calling=first.calling_ae_title,
                called=first.called_ae_title,
                modality=first.info.modality,
            )
            detail = f"{len(instances)} instances of {study} from {first.calling_ae_title}"
            if to is None:
                await self.ledger.audit(self.config.org, "unrouted", None, detail, study_uid=study)
                continue
            try:
                # Sent from the store, by digest: a later store of the same SOP
                # Instance UID is another record, and changes nothing this sends.
                digests = [s.digest for s in instances if s.digest is not None]
                transfer = await self.sender.send_stored(
                    digests, to=to, source_ae=first.calling_ae_title
                )
            except (DicomrelayError, OSError, ValueError) as e:
                await self.ledger.audit(
                    self.config.org, "route-failed", None, f"{detail}: {e}", study_uid=study
                )
                continue
            await self.ledger.audit(
                self.config.org, "routed", transfer.id, f"{detail} to {to}", study_uid=study
            )

    # Out: studies committed here, into the PACS.
    async def _deliver_committed(
        self, tg: TaskGroup, committed: MemoryObjectReceiveStream[StudyCommitted]
    ) -> None:
        async for commit in committed:
            study = commit.study_instance_uid
            requested = await self.ledger.add_delivery(study)  # survives a restart until done
            tg.start_soon(self._deliver_to_pacs, study, requested)

    async def _deliver_to_pacs(self, study: str, requested: float) -> None:
        """C-STORE a committed study into the local PACS, retrying with backoff;
        the ledger says which deliveries a restarted node must pick up again.
        Deliveries of one study go one after another, each of what the study
        holds when it starts, so the PACS ends with the latest versions."""
        lock = self._deliveries.setdefault(study, anyio.Lock())
        try:
            async with lock:
                await self._deliver_study(study, requested)
        finally:
            if not lock.statistics().tasks_waiting and not lock.locked():
                self._deliveries.pop(study, None)

    async def _deliver_study(self, study: str, requested: float) -> None:
        pacs = self.dicom.deliver_to
        assert pacs is not None
        digests = [digest for _uid, digest, _size in await self.ledger.study(study)]
        error = await deliver_instances(
            self.store,
            digests,
            self.dicom,
            tls=self._pacs_tls,
            limits=self.config.limits,
            rng=self._random,
        )
        delivered = not error
        await self.ledger.finish_delivery(
            study, requested=requested, delivered=delivered, error=error
        )
        if delivered:
            detail = f"{len(digests)} instances of {study} to {pacs.ae_title}"
            await self.ledger.audit(self.config.org, "delivered", None, detail, study_uid=study)
            if self.config.store.drop_after_delivery:
                await self.store.drop_studies([study])
                await self.ledger.audit(
                    self.config.org, "dropped", None, f"{study}: delivered", study_uid=study
                )
        else:
            detail = f"{study} to {pacs.ae_title}: {error}"
            await self.ledger.audit(self.config.org, "delivery-dead", None, detail, study_uid=study)


def refused_hold(org: str, refused: Refusal, kept: Path) -> HeldInstance:
    """The hold of a dataset the node's storage SCP refused and ``kept``. It
    is held for ``org``, the node's own: the caller is a modality or PACS of
    the node's organisation (as a DICOMweb caller's token is one of it), so it
    is named in the context instead, by AE titles and address."""
    info = refused.info
    context = {"via": "c-store", "peer": refused.peer}
    if refused.calling_ae_title is not None:
        context["calling_ae_title"] = refused.calling_ae_title
    if refused.called_ae_title is not None:
        context["called_ae_title"] = refused.called_ae_title
    return HeldInstance(
        id=kept.stem,
        kind=DICOM_REFUSED,
        direction="receive",
        org=org,
        study_uid=(info.study_instance_uid if info else None) or "",
        sop_uid=(info.sop_instance_uid if info else None) or refused.sop_instance_uid or "",
        patient_id=info.patient_id if info else None,
        digest=refused.digest or "",
        size=kept.stat().st_size,
        location=os.fspath(kept),
        reason=refused.reason,
        context=context,
        held=time.time(),
    )
