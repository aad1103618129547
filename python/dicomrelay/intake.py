"""A study becomes a queued transfer: its files found (in-memory instances
written to the outbox first), or its instances in this node's store, scanned,
and recorded in the ledger, where whichever node or worker claims it sends it."""

from __future__ import annotations

import functools
import os
import time
import uuid

import anyio.to_thread

from dicomrelay._native import InstanceInfo, scan, scan_many
from dicomrelay.config import NodeConfig
from dicomrelay.errors import DicomrelayError
from dicomrelay.instance_store import STORED, InstanceStore
from dicomrelay.ledger import Ledger, OutgoingInstance, OutgoingTransfer, TransferState
from dicomrelay.policy import Decision, PolicyRefused, Subject, decide, study_refusal
from dicomrelay.protocol import PRIORITIES
from dicomrelay.sources import Source, materialise


class NotAStudy(DicomrelayError, ValueError):
    """What was given to send is not one study: no files, or several studies."""


def _describe(source: Source) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return "the instances given"


async def queue_study(
    config: NodeConfig,
    ledger: Ledger,
    source: Source,
    *,
    to: str,
    priority: str,
    source_ae: str | None = None,
) -> OutgoingTransfer:
    """Record ``source`` as a transfer to ``to``, queued and due now, if the
    node's policy allows every instance of it to go there (PolicyRefused, and
    nothing queued, if not). ``source_ae``: the calling AE title that stored
    the study here, for rules that name one."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}, not {priority!r}")
    peer = config.peer(to)
    if isinstance(source, str | os.PathLike) and not os.path.exists(source):
        raise NotAStudy(f"nothing to send: {os.fspath(source)} does not exist")
    transfer_id = uuid.uuid4().hex
    outbox = config.data_dir / "outbox" / transfer_id
    if not isinstance(source, str | os.PathLike):
        outbox.parent.mkdir(parents=True, exist_ok=True)
    paths = await anyio.to_thread.run_sync(materialise, source, outbox)
    if not paths:
        raise NotAStudy(f"nothing to send: {_describe(source)} holds no files")
    limits = config.limits
    results = await anyio.to_thread.run_sync(
        lambda: scan_many(paths, digest=config.digest, chunk_size=limits.chunk_size)
    )
    infos: list[InstanceInfo] = []
    for path, result in zip(paths, results, strict=True):
        if not isinstance(result, InstanceInfo):
            raise type(result)(f"{path}: {result}")
        infos.append(result)
    studies = {i.study_instance_uid for i in infos}
    if len(studies) != 1 or None in studies:
        raise NotAStudy(f"a transfer carries one study; {_describe(source)} holds {len(studies)}")
    study = infos[0].study_instance_uid
    assert study is not None
    await _check_policy(config, ledger, infos, study, peer.code, priority, source_ae)
    now = time.time()
    transfer = OutgoingTransfer(
        id=transfer_id,
        destination=peer.code,
        study_instance_uid=study,
        priority=priority,
        digest=config.digest,
        chunk_size=limits.chunk_size,
        state=TransferState.QUEUED,
        attempts=0,
        next_attempt=now,
        created=now,
        total=len(infos),
    )
    instances = [
        OutgoingInstance(
            index=n,
            path=os.fspath(path),
            sop_instance_uid=info.sop_instance_uid or "",
            size=info.size,
            digest=info.digest or "",
            chunk_digests=info.chunk_digests,
        )
        for n, (path, info) in enumerate(zip(paths, infos, strict=True))
    ]
    await ledger.add_outgoing(transfer, instances)
    return transfer


async def queue_stored(
    config: NodeConfig,
    ledger: Ledger,
    store: InstanceStore,
    digests: list[str],
    *,
    to: str,
    priority: str = "routine",
    source_ae: str | None = None,
) -> OutgoingTransfer:
    """Record instances held in this node's store (what its DICOM SCP
    received: one study) as a transfer to ``to``, queued and due now, if the
    node's policy allows every instance of it to go there (as ``queue_study``).
    Each is read back once, for its chunks' digests, and checked against its
    own; the transfer sends them from the store, where nothing replaces them."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}, not {priority!r}")
    peer = config.peer(to)
    chunk = config.limits.chunk_size
    instances: list[OutgoingInstance] = []
    infos: list[InstanceInfo] = []
    study: str | None = None
    for n, digest in enumerate(digests):
        data = await store.read_instance(digest)
        info = await anyio.to_thread.run_sync(
            functools.partial(scan, digest=config.digest, chunk_size=chunk), data
        )
        if info.digest != digest:
            raise DicomrelayError(f"stored instance {digest} is not the one recorded")
        if study is None:
            study = info.study_instance_uid
        if info.study_instance_uid != study or study is None:
            raise NotAStudy("a transfer carries one study; the instances given hold several")
        infos.append(info)
        instances.append(
            OutgoingInstance(
                index=n,
                path=STORED + digest,
                sop_instance_uid=info.sop_instance_uid or "",
                size=info.size,
                digest=digest,
                chunk_digests=info.chunk_digests,
            )
        )
    if study is None:
        raise NotAStudy("nothing to send: no instances given")
    await _check_policy(config, ledger, infos, study, peer.code, priority, source_ae)
    now = time.time()
    transfer = OutgoingTransfer(
        id=uuid.uuid4().hex,
        destination=peer.code,
        study_instance_uid=study,
        priority=priority,
        digest=config.digest,
        chunk_size=chunk,
        state=TransferState.QUEUED,
        attempts=0,
        next_attempt=now,
        created=now,
        total=len(instances),
    )
    await ledger.add_outgoing(transfer, instances)
    return transfer


async def _check_policy(
    config: NodeConfig,
    ledger: Ledger,
    infos: list[InstanceInfo],
    study: str,
    to: str,
    priority: str,
    source_ae: str | None,
) -> None:
    """Decide every instance; audit the study's outcome; refuse it whole."""
    policy = config.policy
    counterpart = policy.counterpart(to)
    decisions = [
        decide(
            policy,
            Subject(
                modality=i.modality,
                sop_class_uid=i.sop_class_uid,
                source_ae=source_ae,
                priority=priority,
            ),
            direction="send",
            counterpart=counterpart,
        )
        for i in infos
    ]
    refusal = study_refusal(decisions)
    if refusal is None and any(d.deidentify is not None for d in decisions):
        # Refused until the transform runs here: identifiable data must never
        # be queued for an organisation whose rule de-identifies.
        refusal = Decision(allowed=False, reason="de-identification is not available on this node")
    patient = infos[0].patient_id
    if refusal is not None:
        detail = f"study {study} to {to}: {refusal.reason}"
        await ledger.audit(to, "policy-refused", None, detail, study_uid=study, patient_id=patient)
        raise PolicyRefused(f"study {study} may not go to {to}: {refusal.reason}")
    rules = sorted({d.rule or "default" for d in decisions})
    detail = f"study {study} to {to}: {len(infos)} instances, by {', '.join(rules)}"
    await ledger.audit(to, "policy-allowed", None, detail, study_uid=study, patient_id=patient)
