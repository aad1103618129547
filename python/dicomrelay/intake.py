"""A study becomes a queued transfer: its files found (in-memory instances
written to the outbox first), or its instances in this node's store, scanned,
checked against the node's policy, and recorded in the ledger, where
whichever node or worker claims it sends it.

When the rule that allows a study de-identifies it, what is queued is the
de-identified copy (``outbound_deid``: written into the transfer's spool),
never the original; instances whose pixels may show identity are held in
the quarantine instead, and the rest of the study goes."""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio.from_thread
import anyio.to_thread

from dicomrelay._native import InstanceInfo, scan, scan_many
from dicomrelay.audit import Outcome
from dicomrelay.config import NodeConfig
from dicomrelay.errors import DicomrelayError, StorageError, StudyHeld
from dicomrelay.instance_store import STORED, InstanceStore
from dicomrelay.ledger import Ledger, OutgoingInstance, OutgoingTransfer, TransferState
from dicomrelay.ledger.quarantine import BURNED_IN, HeldInstance, HoldState
from dicomrelay.outbound_deid import (
    HeldCopy,
    Opener,
    SourceInstance,
    SpooledStudy,
    Transform,
    open_file_region,
    spool_study,
)
from dicomrelay.policy import Decision, Deidentify, PolicyRefused, Subject, decide, study_refusal
from dicomrelay.protocol import PRIORITIES
from dicomrelay.sources import Source, materialise
from dicomrelay.spool import Region, locator

QUARANTINE = "quarantine"  # data_dir's folder of held instances' bytes
OUTBOX = "outbox"  # data_dir's folder of transfers' own files (in-memory sources, spools)


class NotAStudy(DicomrelayError, ValueError):
    """What was given to send is not one study: no files, or several studies."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Queued:
    """A study queued: its transfer, and the instances of it held back."""

    transfer: OutgoingTransfer
    held: tuple[HeldInstance, ...] = ()
    deidentified_from: str | None = None  # the original Study Instance UID, if de-identified


@dataclass(frozen=True, kw_only=True, slots=True)
class _Request:
    """What one queueing is asked: where to, how urgent, from whom."""

    transfer_id: str
    to: str
    priority: str
    source_ae: str | None
    allow_burned_in: bool = False  # an operator released the instance
    releases: str | None = None  # the held instance a release queues


def _describe(source: Source) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return "the instances given"


def _check_priority(priority: str) -> None:
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}, not {priority!r}")


async def queue_study(
    config: NodeConfig,
    ledger: Ledger,
    source: Source,
    *,
    to: str,
    priority: str,
    source_ae: str | None = None,
) -> OutgoingTransfer:
    """Record ``source`` as a transfer to ``to`` (``queue`` says how)."""
    return (
        await queue(config, ledger, source, to=to, priority=priority, source_ae=source_ae)
    ).transfer


async def queue(
    config: NodeConfig,
    ledger: Ledger,
    source: Source,
    *,
    to: str,
    priority: str,
    source_ae: str | None = None,
) -> Queued:
    """Record ``source`` as a transfer to ``to``, queued and due now, if the
    node's policy allows every instance of it to go there (PolicyRefused, and
    nothing queued, if not); de-identified if the rule says so, its instances
    that may show identity in their pixels held (StudyHeld if that is all of
    them). ``source_ae``: the calling AE title that stored the study here,
    for rules that name one."""
    _check_priority(priority)
    peer = config.peer(to)
    if isinstance(source, str | os.PathLike) and not os.path.exists(source):
        raise NotAStudy(f"nothing to send: {os.fspath(source)} does not exist")
    transfer_id = uuid.uuid4().hex
    folder = config.data_dir / OUTBOX / transfer_id
    if not isinstance(source, str | os.PathLike):
        folder.parent.mkdir(parents=True, exist_ok=True)
    paths = await anyio.to_thread.run_sync(materialise, source, folder)
    if not paths:
        raise NotAStudy(f"nothing to send: {_describe(source)} holds no files")
    # The policy decides on the headers. A study that may be de-identified is
    # scanned for headers only (its digests are those of its copies); any
    # other is digested in the same pass, each file read once.
    digested = not config.policy.may_deidentify(peer.code)
    infos = await anyio.to_thread.run_sync(_scan_files, paths, config, digested)
    studies = {i.study_instance_uid for i in infos}
    if len(studies) != 1 or None in studies:
        raise NotAStudy(f"a transfer carries one study; {_describe(source)} holds {len(studies)}")

    async def as_they_are() -> list[OutgoingInstance]:
        if not digested:
            scanned = await anyio.to_thread.run_sync(_scan_files, paths, config, True)
        else:
            scanned = infos
        return [
            _outgoing(n, path, info, info.digest or "")
            for n, (path, info) in enumerate(zip(paths, scanned, strict=True))
        ]

    request = _Request(
        transfer_id=transfer_id, to=peer.code, priority=priority, source_ae=source_ae
    )
    sources = [SourceInstance(info, path) for path, info in zip(paths, infos, strict=True)]
    return await _queue(config, ledger, request, sources, open_file_region, as_they_are)


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
    node's policy allows every instance of it to go there (as ``queue``).
    Each is read back once, for its chunks' digests, and checked against its
    own; the transfer sends them from the store, where nothing replaces them
    (or, de-identified, from its spool)."""
    _check_priority(priority)
    peer = config.peer(to)
    chunk = config.limits.chunk_size
    instances: list[OutgoingInstance] = []
    sources: list[SourceInstance] = []
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
        sources.append(SourceInstance(info, STORED + digest))
        instances.append(_outgoing(n, STORED + digest, info, digest))
    if study is None:
        raise NotAStudy("nothing to send: no instances given")

    async def as_they_are() -> list[OutgoingInstance]:
        return instances

    opener = _store_opener(store, await store.locations(digests))
    request = _Request(
        transfer_id=uuid.uuid4().hex, to=peer.code, priority=priority, source_ae=source_ae
    )
    return (await _queue(config, ledger, request, sources, opener, as_they_are)).transfer


async def queue_held(
    config: NodeConfig, ledger: Ledger, held: HeldInstance, source: SourceInstance
) -> Queued:
    """Queue a held instance an operator releases: the policy decided again,
    de-identified (its pixels now allowed) if the rule still says so; the
    hold marked released in the same transaction (NotHeld if it no longer is)."""
    priority = held.context.get("priority", "routine")
    _check_priority(priority)
    request = _Request(
        transfer_id=uuid.uuid4().hex,
        to=config.peer(held.org).code,
        priority=priority,
        source_ae=held.context.get("source_ae"),
        allow_burned_in=True,
        releases=held.id,
    )
    return await _queue(config, ledger, request, [source], open_file_region, None)


def _scan_files(paths: list[str], config: NodeConfig, digested: bool) -> list[InstanceInfo]:
    """Every file's header (and, when ``digested``, its digest and chunk
    digests); the first file that is not an instance raises its error."""
    if digested:
        results = scan_many(paths, digest=config.digest, chunk_size=config.limits.chunk_size)
    else:
        results = scan_many(paths)
    infos: list[InstanceInfo] = []
    for path, result in zip(paths, results, strict=True):
        if not isinstance(result, InstanceInfo):
            raise type(result)(f"{path}: {result}")
        infos.append(result)
    return infos


def _outgoing(
    index: int, path: str, info: InstanceInfo, digest: str, *, origin: str | None = None
) -> OutgoingInstance:
    return OutgoingInstance(
        index=index,
        path=os.fspath(path),
        sop_instance_uid=info.sop_instance_uid or "",
        size=info.size,
        digest=digest,
        chunk_digests=info.chunk_digests,
        origin=origin,
    )


def _stored(where: str) -> str | None:
    """The store digest a source names (``store:<digest>``), or None for a file."""
    return where[len(STORED) :] if where.startswith(STORED) else None


def _store_opener(store: InstanceStore, locations: dict[str, tuple[int, int, int]]) -> Opener:
    """Opens stored instances on the worker thread; one that compaction moved
    meanwhile is looked up again through the event loop."""

    def open_(source: SourceInstance) -> Region:
        digest = source.where[len(STORED) :]
        try:
            fd, offset, length = store.segments.open_record(locations[digest], digest)
        except (KeyError, StorageError, ValueError):
            fd, offset, length = anyio.from_thread.run(store.open_record, digest)
        return Region(fd, offset, length)

    return open_


async def _queue(
    config: NodeConfig,
    ledger: Ledger,
    request: _Request,
    sources: Sequence[SourceInstance],
    opener: Opener,
    as_they_are: Callable[[], Awaitable[list[OutgoingInstance]]] | None,
) -> Queued:
    """Decide, transform and record: the study as it is (``as_they_are``;
    None: copied into a spool), or de-identified."""
    infos = [s.info for s in sources]
    study = infos[0].study_instance_uid
    assert study is not None
    rule = await _check_policy(config, ledger, infos, study, request)
    if rule is None and as_they_are is not None:
        instances = await as_they_are()
        transfer = _transfer(config, request, study, len(instances))
        await ledger.add_outgoing(transfer, instances, releases=request.releases)
        return Queued(transfer=transfer)
    transform = (
        None if rule is None else Transform.of(rule, allow_burned_in=request.allow_burned_in)
    )
    spooled = await anyio.to_thread.run_sync(
        functools.partial(
            spool_study,
            sources,
            opener,
            transform,
            config.data_dir / OUTBOX / request.transfer_id,
            config.data_dir / QUARANTINE,
            digest=config.digest,
            chunk_size=config.limits.chunk_size,
        )
    )
    try:
        held, already = await _new_holds(ledger, spooled, request)
        if not spooled.infos:
            await ledger.hold(held)
    except BaseException:
        await _undo(spooled)
        raise
    if not spooled.infos:
        await anyio.to_thread.run_sync(spooled.spool.discard)
        await _study_held(ledger, held, already, study, request)
    try:
        new_study = {i.study_instance_uid for i in spooled.infos}
        if len(new_study) != 1 or None in new_study:
            raise NotAStudy(f"de-identified, study {study} became {len(new_study)} studies")
        out_study = spooled.infos[0].study_instance_uid
        assert out_study is not None
        path = spooled.spool.path
        instances = [
            _outgoing(n, locator(path, offset), info, info.digest or "", origin=_stored(where))
            for n, ((offset, _), info, where) in enumerate(
                zip(spooled.spool.entries, spooled.infos, spooled.origins, strict=True)
            )
        ]
        transfer = _transfer(config, request, out_study, len(instances))
        await ledger.add_outgoing(transfer, instances, held=held, releases=request.releases)
    except BaseException:
        await _undo(spooled)
        raise
    patient = infos[0].patient_id
    if transform is not None:
        options = ", ".join(sorted(o.value for o in transform.options)) or "basic profile only"
        await ledger.audit(
            request.to,
            "deidentified",
            transfer.id,
            f"study {study} to {request.to} as {out_study}: {len(instances)} instances"
            f" de-identified ({options})" + (f", {len(held)} held" if held else ""),
            study_uid=study,
            patient_id=patient,
        )
    await _audit_held(ledger, held, request)
    held = already + held
    return Queued(
        transfer=transfer, held=tuple(held), deidentified_from=study if transform else None
    )


async def _new_holds(
    ledger: Ledger, spooled: SpooledStudy, request: _Request
) -> tuple[list[HeldInstance], list[HeldInstance]]:
    """The holds to record, and those already held for the same destination
    (a study sent again): an instance is held once, its second copy dropped."""
    if not spooled.held:
        return [], []
    existing = {
        h.digest: h
        for h in await ledger.held_instances(HoldState.HELD, limit=1_000_000)
        if h.direction == "send" and h.org == request.to
    }
    new: list[HeldInstance] = []
    already: list[HeldInstance] = []
    for copy in spooled.held:
        if copy.digest in existing:
            already.append(existing[copy.digest])
            await anyio.to_thread.run_sync(copy.path.unlink)
        else:
            new.append(_held(copy, request))
    return new, already


async def _undo(spooled: SpooledStudy) -> None:
    """Nothing was recorded: the spool and the held copies go."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(spooled.discard)


async def _study_held(
    ledger: Ledger,
    held: list[HeldInstance],
    already: list[HeldInstance],
    study: str,
    request: _Request,
) -> None:
    """Nothing of the study can go (what was held is recorded): say so."""
    await _audit_held(ledger, held, request)
    every = already + held
    reasons = sorted({h.reason for h in every})
    raise StudyHeld(
        f"study {study} not sent to {request.to}: all {len(every)} instances held in quarantine"
        f" ({'; '.join(reasons)}); `dicomrelay quarantine list` shows them"
    )


def _held(copy: HeldCopy, request: _Request) -> HeldInstance:
    info = copy.source.info
    context = {"priority": request.priority}
    if request.source_ae is not None:
        context["source_ae"] = request.source_ae
    return HeldInstance(
        id=copy.hold_id,
        kind=BURNED_IN,
        direction="send",
        org=request.to,
        study_uid=info.study_instance_uid or "",
        sop_uid=info.sop_instance_uid or "",
        patient_id=info.patient_id,
        digest=copy.digest,
        size=copy.size,
        location=os.fspath(copy.path),
        reason=copy.reason.reason,
        context=context,
        held=time.time(),
    )


async def _audit_held(ledger: Ledger, held: Sequence[HeldInstance], request: _Request) -> None:
    for h in held:
        await ledger.audit(
            request.to,
            "quarantined",
            None,
            f"instance {h.sop_uid} of study {h.study_uid} for {request.to} held as {h.id}:"
            f" {h.reason}",
            study_uid=h.study_uid,
            patient_id=h.patient_id,
            outcome=Outcome.MINOR_FAILURE,
        )


def _transfer(config: NodeConfig, request: _Request, study: str, total: int) -> OutgoingTransfer:
    now = time.time()
    return OutgoingTransfer(
        id=request.transfer_id,
        destination=request.to,
        study_instance_uid=study,
        priority=request.priority,
        digest=config.digest,
        chunk_size=config.limits.chunk_size,
        state=TransferState.QUEUED,
        attempts=0,
        next_attempt=now,
        created=now,
        total=total,
    )


async def _check_policy(
    config: NodeConfig,
    ledger: Ledger,
    infos: list[InstanceInfo],
    study: str,
    request: _Request,
) -> Deidentify | None:
    """Decide every instance; audit the study's outcome; refuse it whole.
    The de-identification the rules ask for, the same for the whole study."""
    policy = config.policy
    to = request.to
    counterpart = policy.counterpart(to)
    # The decision is pure and, within a study, depends only on each
    # instance's modality and SOP class: decided once for each pair.
    decided: dict[tuple[str | None, str | None], Decision] = {}
    for pair in {(i.modality, i.sop_class_uid) for i in infos}:
        subject = Subject(
            modality=pair[0],
            sop_class_uid=pair[1],
            source_ae=request.source_ae,
            priority=request.priority,
        )
        decided[pair] = decide(policy, subject, direction="send", counterpart=counterpart)
    decisions = [decided[i.modality, i.sop_class_uid] for i in infos]
    refusal = study_refusal(decisions)
    transforms = {d.deidentify for d in decisions}
    if refusal is None and len(transforms) > 1:
        # One transfer carries one study: a study half de-identified, or
        # de-identified two ways, would arrive as several.
        rules = sorted({d.rule or "default" for d in decisions})
        refusal = Decision(
            allowed=False,
            reason=f"rules {', '.join(rules)} transform its instances differently",
        )
    patient = infos[0].patient_id
    if refusal is not None:
        detail = f"study {study} to {to}: {refusal.reason}"
        await ledger.audit(to, "policy-refused", None, detail, study_uid=study, patient_id=patient)
        raise PolicyRefused(f"study {study} may not go to {to}: {refusal.reason}")
    rules = sorted({d.rule or "default" for d in decisions})
    detail = f"study {study} to {to}: {len(infos)} instances, by {', '.join(rules)}"
    await ledger.audit(to, "policy-allowed", None, detail, study_uid=study, patient_id=patient)
    return decisions[0].deidentify
