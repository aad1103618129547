"""``Reconciler``: a node's patient-ID reconciliation of studies committed from
other organisations (IHE IRWF.b), between the inbox and delivery into the PACS.

Most instances are reconciled as they arrive (``arrival``: the receiving
session finds the patient at a transfer's first instance and the store's
round stores each rewritten), and the commit stores the rewritten ones. For
each committed study whose sender an inbound rule reconciles, this part
finishes the rest: the local patient is looked up in the rule's mapping
(``dicomrelay.reconcile``) unless the session found it; every instance not
yet rewritten is read from the store, its header rewritten in Rust (the pixel
data neither copied nor touched: the new record is the new header, a view of
the received record's pixel bytes, and a trailer) and stored in durable
rounds; then, in one ledger transaction, the store's rows switch to the
rewritten instances, each received digest is mapped to its reconciled one,
and the received records go. Only then is the study released for delivery.
The receipt the sender holds still names what was received.

No match is never guessed: the study is held (``reconcile-held``) until an
operator names the patient (``dicomrelay reconcile``: the ledger row becomes
``resolving``, which this part picks up). A node that stops part way resumes
from the ledger's ``pending`` and ``resolving`` rows.
"""

from __future__ import annotations

import datetime
import functools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from dicomrelay._native import Payload, SegmentStore, header_values
from dicomrelay.config import DigestName, NodeConfig
from dicomrelay.errors import (
    ConfigurationError,
    CorruptRecord,
    DicomParseError,
    DicomrelayError,
    InstanceNotStored,
    LedgerUnavailable,
    PatientMappingError,
    RewriteError,
    StorageError,
)
from dicomrelay.inbound import InboundRules
from dicomrelay.instance_store import InstanceStore, Record
from dicomrelay.ledger import IncomingInstance, Ledger, Location
from dicomrelay.ledger.reconciliations import ReconciledInstance, Reconciliation
from dicomrelay.policy import Rule, Subject, decide
from dicomrelay.receiver_control import StudyCommitted
from dicomrelay.reconcile import (
    PATIENT_ID,
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

log = logging.getLogger("dicomrelay.reconciler")

MODALITY, SOP_CLASS_UID = 0x00080060, 0x00080016
_READ = sorted({*TAGS_TO_READ, MODALITY, SOP_CLASS_UID})
BATCH_BYTES = 64 << 20  # read, rewritten and stored at a time
BATCH_INSTANCES = 256


class Held(DicomrelayError):
    """A study that cannot be reconciled without a person: no local patient,
    an unusable mapping, instances naming different patients, an edit that
    cannot be made. ``foreign`` is the patient as the sender names them."""

    def __init__(self, reason: str, foreign: ForeignPatient | None = None) -> None:
        super().__init__(reason)
        self.foreign = foreign


@dataclass(slots=True)
class _Read:
    """One received instance read from the store, with the header values the plan needs."""

    instance: IncomingInstance
    data: Payload
    values: dict[int, str]


def _reconciling_rules(config: NodeConfig, sender: str) -> list[Rule]:
    """The reconciling rules that could apply to a study from ``sender``."""
    counterpart = config.policy.counterpart(sender)
    return [
        r
        for r in config.rules
        if r.reconcile is not None
        and (not r.orgs or counterpart.code in r.orgs)
        and (not r.roles or counterpart.role in r.roles)
    ]


class Reconciler:
    def __init__(
        self,
        config: NodeConfig,
        ledger: Ledger,
        store: InstanceStore,
        committed: MemoryObjectReceiveStream[StudyCommitted],
        *,
        release: bool,
        poll_seconds: float = 1.0,
    ) -> None:
        """``committed``: the inbox's committed studies; with ``release``, those
        reconciled (or needing none) come out on ``released``, for delivery."""
        self.config = config
        self.ledger = ledger
        self.store = store
        self.committed = committed
        self._poll = poll_seconds
        self._inbound = InboundRules.of(config.policy)
        self._rules = {r.name: r for r in config.rules if r.reconcile is not None}
        self._indexes: dict[str, PatientIndex] = {}
        for name, rule in self._rules.items():
            assert rule.reconcile is not None
            self._indexes[name] = patient_index(rule.reconcile, ledger)
        send, self.released = anyio.create_memory_object_stream[StudyCommitted](math.inf)
        self._release = send
        self._releasing = release
        self._system = f"dicomrelay {config.org}"

    @staticmethod
    def needed(config: NodeConfig) -> bool:
        return any(r.reconcile is not None for r in config.rules)

    @staticmethod
    def reconciles(config: NodeConfig, sender: str) -> bool:
        """Whether a rule could reconcile a study from ``sender``: its commit
        then records it as to be reconciled, in the same transaction."""
        return bool(_reconciling_rules(config, sender))

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reconcile what the inbox commits, and what operators resolve, until
        cancelled (or the inbox stops); started once the mappings are checked."""
        try:
            await self._check_tables()
            task_status.started()
            last_poll = 0.0
            while True:
                commit: StudyCommitted | None = None
                with anyio.move_on_after(self._poll):
                    try:
                        commit = await self.committed.receive()
                    except anyio.EndOfStream:
                        return
                if commit is not None:
                    await self._on_commit(commit)
                if time.monotonic() - last_poll >= self._poll:
                    last_poll = time.monotonic()
                    for row in await self.ledger.reconciliations(states=("pending", "resolving")):
                        await self._work(row)
        finally:
            self._release.close()

    async def _check_tables(self) -> None:
        """A rule naming a table the ledger's database lacks fails at start, not per study."""
        for rule in self._rules.values():
            assert rule.reconcile is not None
            table = rule.reconcile.table
            if table is None:
                continue
            try:
                await self.ledger.patient_mapping_rows(table, nhs_number="", sender_id=None)
            except LedgerUnavailable:
                raise
            except Exception as e:  # the database's own error for a missing table or column
                raise ConfigurationError(
                    f"rule {rule.name}: the patient mapping table {table!r} cannot be read: {e}"
                ) from e

    async def _on_commit(self, commit: StudyCommitted) -> None:
        if not _reconciling_rules(self.config, commit.sender):
            self._released(commit)  # no rule reconciles this sender's studies
            return
        row = await self.ledger.add_reconciliation(
            commit.sender, commit.transfer_id, commit.study_instance_uid, commit.priority
        )
        if row.state in ("pending", "resolving"):
            await self._work(row)

    async def _work(self, row: Reconciliation) -> None:
        """Reconcile (or hold) one committed transfer; a storage failure leaves
        it pending, for the next poll."""
        local = None
        if row.state == "resolving" and row.local_patient_id:
            local = LocalPatient(patient_id=row.local_patient_id, issuer=row.local_issuer)
        try:
            await self._reconcile(row, local)
        except Held as e:
            await self._hold(row, e)
        except (CorruptRecord, InstanceNotStored) as e:
            await self._hold(row, Held(f"an instance cannot be read from the store: {e}"))
        except LedgerUnavailable:
            raise  # the node stops, as after a crash, and resumes from the ledger
        except (StorageError, OSError) as e:
            log.error(
                "reconciling %s from %s failed, tried again: %s", row.study_uid, row.sender, e
            )
        except Exception as e:
            # A defect met on one study must not stop the node: it waits for a person.
            log.exception("reconciling %s from %s failed", row.study_uid, row.sender)
            await self._hold(row, Held(f"reconciliation failed: {type(e).__name__}: {e}"))

    async def _hold(self, row: Reconciliation, held: Held) -> None:
        foreign = held.foreign
        await self.ledger.hold_reconciliation(
            row.sender,
            row.transfer_id,
            foreign_patient_id=foreign.patient_id if foreign else None,
            foreign_issuer=foreign.issuer if foreign else None,
            reason=str(held),
        )
        await self.ledger.audit(
            row.sender,
            "reconcile-held",
            row.transfer_id,
            f"study {row.study_uid} from {row.sender} held: {held}",
            study_uid=row.study_uid,
            patient_id=foreign.patient_id if foreign else None,
        )

    async def _reconcile(self, row: Reconciliation, local: LocalPatient | None) -> None:
        incoming = await self.ledger.incoming(row.sender, row.transfer_id)
        if incoming is None or incoming.receipt is None:
            return  # still arriving (the session planned it): its commit brings it back
        received = await self.ledger.received(row.sender, row.transfer_id)
        if not received:
            raise Held("the transfer's instances are not in the ledger")
        algorithm: DigestName = "blake3" if incoming.digest == "blake3" else "sha256"
        # Each content once, in transfer order (the last of a repeated UID wins, as in the store).
        by_uid = {i.sop_instance_uid: i for i in sorted(received.values(), key=lambda i: i.index)}
        instances = list({i.digest: i for i in by_uid.values()}.values())
        # Those the session rewrote as they arrived are reconciled already
        # (the commit stored them); the rest are read back and rewritten here.
        arrived = await self.ledger.reconciled_instances(row.sender, row.transfer_id)
        rewritten = {m.received_digest for m in arrived}
        instances = [i for i in instances if i.digest not in rewritten]
        if local is not None and arrived:
            await self._check_filed(row, arrived, local)
        plan = self._planned(row) if local is None and arrived else None
        done: list[ReconciledInstance] = []
        now = datetime.datetime.now(datetime.UTC)
        for batch in _batches(instances):
            read = await self._read(batch)
            if plan is None:
                plan = await self._decide(row, read, local)
                if plan is None:
                    break  # no rule reconciles its instances
            # An operator's answer covers every instance, whichever patient it names.
            check = local is None
            records, outcome = await anyio.to_thread.run_sync(
                functools.partial(_rewrite_batch, read, plan, self._system, now, algorithm, check)
            )
            await self.store.write_round(records, [])
            done += outcome
        if plan is None and not instances and arrived:
            raise Held("its instances were rewritten as they arrived, by a rule since removed")
        reason = "no inbound rule reconciles its instances"
        rule_name: str | None = None
        foreign_ids: tuple[str | None, str | None] = (None, None)
        local_ids: tuple[str | None, str | None] = (None, None)
        if plan is not None:
            rule, foreign, found, rule_name = plan
            how = "named by an operator" if local is not None else f"by rule {rule_name}"
            reason = f"coerced to {found.patient_id} ({how})"
            if arrived:
                reason += f", {len(arrived)} instances as they arrived"
            foreign_ids = (foreign.patient_id, foreign.issuer)
            local_ids = (found.patient_id, found.issuer or rule.local_issuer)
        switched = await self.store.switch_reconciled(
            row.sender,
            row.transfer_id,
            row.study_uid,
            done,
            rule=rule_name,
            foreign=foreign_ids,
            local=local_ids,
            reason=reason,
            deliver=self._releasing,  # requested with the switch: a crash cannot lose it
        )
        if plan is not None:
            detail = (
                f"study {row.study_uid} from {row.sender}: patient {foreign_ids[0]!r} "
                f"(issuer {foreign_ids[1]!r}) {reason};"
                f" {switched + len(arrived)} instances rewritten"
            )
            await self.ledger.audit(
                row.sender,
                "reconciled",
                row.transfer_id,
                detail,
                study_uid=row.study_uid,
                patient_id=local_ids[0],
            )
        self._released(StudyCommitted(row.study_uid, row.sender, row.transfer_id, row.priority))

    def _released(self, study: StudyCommitted) -> None:
        if self._releasing:
            self._release.send_nowait(study)

    async def _check_filed(
        self, row: Reconciliation, arrived: Sequence[ReconciledInstance], local: LocalPatient
    ) -> None:
        """Instances rewritten as they arrived are filed under the patient the
        mapping named; an operator naming another would split the study."""
        data = await self.store.read_instance(arrived[0].reconciled_digest)
        filed = _values(data).get(PATIENT_ID)
        if filed != local.patient_id:
            foreign = ForeignPatient(
                sender=row.sender, patient_id=row.foreign_patient_id, issuer=row.foreign_issuer
            )
            raise Held(
                f"{len(arrived)} of its instances were filed under {filed!r} as they arrived:"
                f" name {filed!r} (or correct those in the PACS)",
                foreign,
            )

    def _planned(
        self, row: Reconciliation
    ) -> tuple[Reconcile, ForeignPatient, LocalPatient, str] | None:
        """The plan the receiving session recorded (its rule still configured)."""
        rule = self._rules.get(row.rule or "")
        if rule is None or rule.reconcile is None or not row.local_patient_id:
            return None
        foreign = ForeignPatient(
            sender=row.sender, patient_id=row.foreign_patient_id, issuer=row.foreign_issuer
        )
        local = LocalPatient(patient_id=row.local_patient_id, issuer=row.local_issuer)
        return rule.reconcile, foreign, local, rule.name

    async def _decide(
        self, row: Reconciliation, read: list[_Read], local: LocalPatient | None
    ) -> tuple[Reconcile, ForeignPatient, LocalPatient, str] | None:
        """The study's rule (the first reconciling decision among its first
        instances), the foreign patient and the local one; None: no rule
        reconciles it. Held when there is no match."""
        rule = self._rule_of(row, read)
        if rule is None:
            return None
        assert rule.reconcile is not None
        foreign = foreign_patient(row.sender, read[0].values)
        if local is None:
            try:
                local = await self._indexes[rule.name].find(foreign, rule.reconcile.match)
            except PatientMappingError as e:
                raise Held(f"the patient mapping cannot be used: {e}", foreign) from None
            if local is None:
                shown = f"{foreign.patient_id!r} (issuer {foreign.issuer!r})"
                raise Held(f"no local patient for {shown} in rule {rule.name}'s mapping", foreign)
        return rule.reconcile, foreign, local, rule.name

    def _rule_of(self, row: Reconciliation, read: list[_Read]) -> Rule | None:
        counterpart = self.config.policy.counterpart(row.sender)
        for r in read:
            subject = Subject(
                modality=r.values.get(MODALITY),
                sop_class_uid=r.values.get(SOP_CLASS_UID),
                priority=row.priority,
            )
            decision = decide(
                self.config.policy, subject, direction="receive", counterpart=counterpart
            )
            if decision.allowed and decision.reconcile is not None and decision.rule:
                return self._rules.get(decision.rule)
        return None

    async def _read(self, batch: Sequence[IncomingInstance]) -> list[_Read]:
        """The batch's records (each checked against its record header) and header values."""
        where = await self.store.locations([i.digest for i in batch])
        missing = [i.digest for i in batch if i.digest not in where]
        if missing:
            raise Held(f"instance {missing[0]} is no longer in the store")
        segments = self.store.segments
        try:
            return await anyio.to_thread.run_sync(lambda: _read_batch(segments, batch, where))
        except (StorageError, ValueError):
            # Compaction moved a record since it was located: read one by one (looked up again).
            out = []
            for i in batch:
                data = await self.store.read_instance(i.digest)
                out.append(_Read(i, data, _values(data)))
            return out


def _batches(instances: Sequence[IncomingInstance]) -> list[list[IncomingInstance]]:
    batches: list[list[IncomingInstance]] = [[]]
    size = 0
    for i in instances:
        if batches[-1] and (size + i.size > BATCH_BYTES or len(batches[-1]) >= BATCH_INSTANCES):
            batches.append([])
            size = 0
        batches[-1].append(i)
        size += i.size
    return batches if batches[0] else []


def _values(data: Payload) -> dict[int, str]:
    try:
        return header_values(data, _READ)[0]
    except DicomParseError as e:
        raise Held(f"an instance cannot be read: {e}") from None


def _read_batch(
    segments: SegmentStore, batch: Sequence[IncomingInstance], where: Mapping[str, Location]
) -> list[_Read]:
    out = []
    for i in batch:
        data = segments.read(where[i.digest], i.digest)
        out.append(_Read(i, data, _values(data)))
    return out


def _rewrite_batch(
    read: Sequence[_Read],
    plan: tuple[Reconcile, ForeignPatient, LocalPatient, str],
    system: str,
    now: datetime.datetime,
    algorithm: DigestName,
    check_patient: bool,
) -> tuple[list[Record], list[ReconciledInstance]]:
    """Each instance's header rewritten (on a worker thread): the record to
    store is the new header, a view of the received pixel bytes, the trailer.
    ``check_patient``: hold the study if an instance names another patient
    than its first does."""
    rule, foreign, local, _ = plan
    records: list[Record] = []
    done: list[ReconciledInstance] = []
    for r in read:
        here = foreign_patient(foreign.sender, r.values)
        if check_patient and here != foreign:
            raise Held(
                f"instance {r.instance.sop_instance_uid} names patient {here.patient_id!r},"
                f" not {foreign.patient_id!r} as the study's first does",
                foreign,
            )
        try:
            edits = plan_reconciliation(
                r.values, foreign=foreign, local=local, rule=rule, modifying_system=system, now=now
            )
            if not edits:
                done.append(_same(r.instance))
                continue
            out = rewrite(r.data, edits, digest=algorithm)
        except (PatientMappingError, RewriteError, DicomParseError) as e:
            raise Held(f"instance {r.instance.sop_instance_uid}: {e}", foreign) from None
        assert out.digest is not None
        pixels = memoryview(r.data)[out.pixel_offset : out.pixel_offset + out.pixel_length]
        records.append(Record((out.header, pixels, out.trailer), out.digest, algorithm))
        done.append(
            ReconciledInstance(
                sop_uid=r.instance.sop_instance_uid,
                received_digest=r.instance.digest,
                reconciled_digest=out.digest,
                size=out.size,
            )
        )
    return records, done


def _same(instance: IncomingInstance) -> ReconciledInstance:
    return ReconciledInstance(
        sop_uid=instance.sop_instance_uid,
        received_digest=instance.digest,
        reconciled_digest=instance.digest,
        size=instance.size,
    )
