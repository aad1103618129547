"""The ledger interface and the records it keeps."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from dicomrelay.audit import AuditQuery, AuditRecord, Outcome
from dicomrelay.ledger.archive import ApiToken, StoredAttributes
from dicomrelay.ledger.quarantine import HeldInstance, HoldState
from dicomrelay.ledger.reconciliations import (
    RECONCILE_STATES,
    ReconciledInstance,
    ReconciledRow,
    ReconcileState,
    Reconciliation,
)
from dicomrelay.ledger.search import Search
from dicomrelay.ledger.shares import ShareLink

# Where a segment store keeps a record: (segment, offset of its header, data length).
Location = tuple[int, int, int]


# What a commit owes next, recorded in its own transaction (see commit_incoming).
AfterCommit = Literal["deliver", "reconcile"]


class TransferState(enum.StrEnum):
    QUEUED = "queued"  # waiting for a slot or for its next attempt
    ACTIVE = "active"  # being sent
    DONE = "done"  # committed; receipt held
    DEAD = "dead"  # out of attempts, or refused for good: a dead letter


@dataclass(frozen=True, kw_only=True, slots=True)
class OutgoingInstance:
    index: int
    path: str
    sop_instance_uid: str
    size: int
    digest: str
    chunk_digests: tuple[str, ...]
    acked: bool = False
    # The store digest a spooled copy (de-identified) was made from, when it
    # came from this node's store: retention drops the original once sent.
    origin: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class OutgoingTransfer:
    id: str
    destination: str
    study_instance_uid: str
    priority: str
    digest: str
    chunk_size: int
    state: TransferState
    attempts: int
    next_attempt: float
    created: float
    total: int
    acked: int = 0
    last_error: str | None = None
    receipt: bytes | None = None
    claimed_by: str | None = None  # the worker holding it (claim_outgoing), if any
    lease_until: float | None = None  # until when that worker's claim holds
    # Failed attempts in a row that delivered nothing: the retry budget
    # (``attempts`` counts every failed attempt).
    attempts_without_progress: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class IncomingInstance:
    index: int
    sop_instance_uid: str
    size: int
    digest: str
    stored: float


@dataclass(frozen=True, kw_only=True, slots=True)
class IncomingTransfer:
    sender: str
    transfer_id: str
    study_instance_uid: str
    total: int
    digest: str
    receipt: bytes | None


class Ledger(Protocol):
    """What the engine asks of durable state. Every call is one transaction."""

    async def close(self) -> None: ...

    # Sending side.
    async def add_outgoing(
        self,
        transfer: OutgoingTransfer,
        instances: Sequence[OutgoingInstance],
        *,
        held: Sequence[HeldInstance] = (),
        releases: str | None = None,
    ) -> None:
        """Queue ``transfer``; in the same transaction record ``held`` (the
        instances of its study held back) and, with ``releases``, mark that
        held instance released to it (NotHeld, nothing queued, if it is not
        held any more)."""
        ...

    async def outgoing(self, transfer_id: str) -> OutgoingTransfer | None: ...
    async def unfinished_outgoing(self) -> list[OutgoingTransfer]: ...
    async def all_outgoing(
        self, limit: int = 1000, *, state: TransferState | None = None
    ) -> list[OutgoingTransfer]:
        """The newest transfers first; only those in ``state``, if given."""
        ...

    async def pending_instances(self, transfer_id: str) -> list[OutgoingInstance]: ...
    async def mark_acked(self, transfer_id: str, indexes: Sequence[int], at: float) -> None: ...
    async def set_outgoing_state(
        self,
        transfer_id: str,
        state: TransferState,
        *,
        attempts: int | None = None,
        attempts_without_progress: int | None = None,
        next_attempt: float | None = None,
        error: str | None = None,
        receipt: bytes | None = None,
    ) -> None: ...
    async def requeue_dead(self, transfer_id: str, *, now: float) -> bool:
        """A dead letter queued again, due ``now``, with a fresh retry budget;
        false if the transfer is not a dead letter."""
        ...

    # Several workers (processes, machines) sharing one ledger's sending work.
    async def claim_outgoing(
        self,
        worker: str,
        *,
        now: float,
        lease_seconds: float,
        limit: int,
        only: Sequence[str] | None = None,
    ) -> list[OutgoingTransfer]:
        """Claim, atomically, up to ``limit`` transfers for ``worker`` until
        ``now + lease_seconds``: queued ones that are due (``next_attempt <= now``)
        and unclaimed or whose lease has expired, and active ones whose lease has
        expired (their worker died mid-attempt) or that no lease holds. The most
        urgent, then the oldest, first; of ``only``'s ids alone, if given. No two
        workers ever hold the same transfer's lease at once."""
        ...

    async def release_claims(self, worker: str) -> int:
        """Give back every claim ``worker`` holds (a worker starting again: what
        it held when it stopped is due at once); how many there were."""
        ...

    async def renew_lease(
        self, worker: str, transfer_ids: Sequence[str], *, now: float, lease_seconds: float
    ) -> set[str]:
        """Extend ``worker``'s claims to ``now + lease_seconds``; returns the ids it
        still holds (a transfer another worker claimed after the lease ran out is lost)."""
        ...

    async def finished_outgoing(self, transfer_ids: Sequence[str]) -> list[OutgoingTransfer]:
        """Those of ``transfer_ids`` that are done or dead letters (whichever
        worker finished them)."""
        ...

    async def release_claim(self, worker: str, transfer_id: str) -> bool:
        """Give a transfer back after its attempt (one cut short, still active,
        is queued again, due as it was); false if ``worker`` no longer held it."""
        ...

    # Receiving side.
    async def note_incoming(
        self, sender: str, transfer_id: str, study_instance_uid: str, total: int, digest: str
    ) -> bytes | None:
        """Record an offered transfer; returns its receipt if already committed."""
        ...

    async def incoming(self, sender: str, transfer_id: str) -> IncomingTransfer | None: ...
    async def record_received(
        self, sender: str, transfer_id: str, instances: Sequence[IncomingInstance]
    ) -> None: ...
    async def received(self, sender: str, transfer_id: str) -> dict[int, IncomingInstance]: ...
    async def digests_from(self, sender: str, digests: Sequence[str]) -> set[str]:
        """Which of ``digests`` this sender has delivered before (in any transfer)."""
        ...

    async def record_partial(self, sender: str, transfer_id: str, index: int, offset: int) -> None:
        """The durable prefix of a large instance still arriving."""
        ...

    async def partial(self, sender: str, transfer_id: str, index: int) -> int: ...
    async def commit_incoming(
        self,
        sender: str,
        transfer_id: str,
        study_instance_uid: str,
        receipt: bytes,
        committed: float,
        *,
        then: AfterCommit | None = None,
        priority: str = "routine",
    ) -> bytes:
        """Make the study visible and keep its receipt, atomically, with what
        the commit owes next (``then``: a delivery into the PACS requested, or
        the transfer recorded as to be reconciled, at ``priority``), so that a
        crash right after the commit cannot lose it. Returns the receipt
        stored, which is the earlier one if the transfer was committed before."""
        ...

    async def study(self, study_instance_uid: str) -> list[tuple[str, str, int]]:
        """Committed instances of a study: (SOP Instance UID, digest, size)."""
        ...

    # The index of a node's segment store (``store``: its name, as several
    # nodes may share a ledger).
    async def segment_end(self, store: str) -> tuple[int, int] | None:
        """The store's last durable end recorded, (segment, end); None if none yet."""
        ...

    async def record_round(
        self,
        store: str,
        end: tuple[int, int],
        located: Sequence[tuple[str, Location]],
        received: Sequence[tuple[str, str, IncomingInstance]],
        reconciled: Sequence[ReconciledRow] = (),
    ) -> None:
        """One durable round, in one transaction: the new records' locations (a
        digest located before keeps its place), the instances received
        ``(sender, transfer_id, instance)``, those rewritten as they arrived
        (``reconciled``: received digest -> stored digest), and the store's new
        durable end."""
        ...

    async def locations(self, store: str, digests: Sequence[str]) -> dict[str, Location]:
        """Where the store holds those of ``digests`` it holds."""
        ...

    async def segment_usage(self, store: str) -> list[tuple[int, int, int]]:
        """Per segment holding live records: (segment, records, data bytes)."""
        ...

    async def records_in_segment(self, store: str, segment: int) -> list[tuple[str, Location]]:
        """The live records of a segment, (digest, location), in file order."""
        ...

    async def move_records(
        self,
        store: str,
        moves: Sequence[tuple[str, Location, Location]],
        end: tuple[int, int],
    ) -> int:
        """Compaction's switch, in one transaction: each (digest, old, new) row
        moves to ``new`` only if it is still at ``old``; the store's durable end
        becomes ``end``. Returns how many moved."""
        ...

    async def expired_studies(self, before: float) -> list[str]:
        """Studies whose latest commit is older than ``before``."""
        ...

    async def drop_studies(self, studies: Sequence[str]) -> int:
        """Drop committed studies, and the locations of their digests that
        nothing else names (no other study, no transfer still arriving); returns
        how many locations went."""
        ...

    async def drop_routed(self, store: str, before: float) -> int:
        """Drop the store's records of instances its DICOM SCP received and a
        transfer done before ``before`` sent on, that nothing else names (no
        committed study, no transfer arriving, none queued, active or dead);
        returns how many went."""
        ...

    # Delivery of committed studies into the local PACS.
    async def add_delivery(self, study_instance_uid: str) -> float:
        """Ask for the study to be delivered (again); returns the request's stamp."""
        ...

    async def pending_deliveries(self) -> list[tuple[str, float]]:
        """Studies still to deliver, with their latest requests' stamps."""
        ...

    async def finish_delivery(
        self, study_instance_uid: str, *, requested: float, delivered: bool, error: str
    ) -> None:
        """Done, or (``delivered`` false) a dead letter with its last error; unless
        the study was asked for again after ``requested``, which is then still due."""
        ...

    # DICOMweb (``archive.py``).
    async def store_instances(
        self, sender: str, batch_id: str, instances: Sequence[StoredAttributes], stored: float
    ) -> None:
        """Instances stored here directly (STOW-RS): into the store, attributes
        and all, at once, as from ``sender``."""
        ...

    async def unindexed(self, since: float, limit: int) -> list[tuple[str, float]]:
        """Stored blobs committed at ``since`` or later whose attributes are not
        yet recorded, the earliest first: (digest, committed)."""
        ...

    async def add_attributes(self, instances: Sequence[StoredAttributes]) -> None: ...
    async def search(self, search: Search) -> list[tuple[Any, ...]]:
        """The rows a search finds (``search.py`` says which columns, by level)."""
        ...

    async def stored_instances(self, search: Search) -> list[StoredAttributes]: ...
    async def add_token(
        self, name: str, token_hash: str, *, org: str, scope: str, expires: float | None
    ) -> bool: ...
    async def revoke_token(self, name: str) -> bool: ...
    async def token(self, token_hash: str) -> ApiToken | None: ...
    async def tokens(self) -> list[ApiToken]: ...

    # Patient links (``shares.py``).
    async def add_share_link(
        self,
        link_id: str,
        token_hash: str,
        *,
        study_uid: str,
        org: str,
        expires: float,
        pin_hash: str | None,
    ) -> bool:
        """False if the id or the token is taken."""
        ...

    async def share_link(self, token_hash: str) -> ShareLink | None: ...
    async def share_link_by_id(self, link_id: str) -> ShareLink | None: ...
    async def share_links(self) -> list[ShareLink]:
        """Every link, the newest first."""
        ...

    async def revoke_share_link(self, id_or_hash: str) -> bool:
        """Revoke the link of that id or token hash; false if none was active."""
        ...

    async def share_pin_failed(self, link_id: str, *, limit: int) -> tuple[int, bool]:
        """Count a wrong PIN, atomically; the link locks at ``limit`` wrong PINs
        in a row. Returns (wrong PINs in a row, locked)."""
        ...

    async def share_pin_passed(self, link_id: str) -> None:
        """A right PIN: the count of wrong ones starts again (unless locked)."""
        ...

    async def metrics(self) -> dict[str, list[tuple[Any, ...]]]:
        """Counts for ``/metrics``, in one transaction: ``latency`` (destination,
        then for each of ``LATENCY_BUCKETS`` the done transfers that took at
        most that long from queued to receipt, then their count and summed
        seconds), ``transfers`` (destination,
        priority, state, transfers, instances), ``sent`` (destination, instances,
        bytes acknowledged), ``received`` (sender, instances, bytes), ``store``
        (instances, bytes), ``refusals`` (audit action, count), ``deliveries``
        (state, count)."""
        ...

    # Both sides.
    async def audit(
        self,
        org: str,
        action: str,
        transfer_id: str | None,
        detail: str,
        *,
        study_uid: str | None = None,
        patient_id: str | None = None,
        remote: str | None = None,
        outcome: Outcome | None = None,
    ) -> None:
        """One audit row: about ``org`` (an organisation or caller), what it
        did or had done, from where, and how it ended (``outcome`` None: as
        the action's name implies)."""
        ...

    async def audit_trail(self, query: AuditQuery) -> list[AuditRecord]:
        """The audit rows ``query`` matches, oldest first."""
        ...

    # The quarantine: instances held back, on either side.
    async def hold(self, held: Sequence[HeldInstance]) -> None: ...
    async def held_instance(self, hold_id: str) -> HeldInstance | None: ...
    async def held_instances(
        self, state: HoldState | None = HoldState.HELD, *, limit: int = 1000
    ) -> list[HeldInstance]: ...
    async def resolve_hold(
        self, hold_id: str, state: HoldState, resolution: str | None
    ) -> None: ...
    async def held_counts(self) -> dict[str, int]: ...

    async def counts(self) -> dict[str, int]: ...

    # Patient-ID reconciliation (ledger/reconciliations.py).
    async def add_reconciliation(
        self, sender: str, transfer_id: str, study_uid: str, priority: str
    ) -> Reconciliation: ...
    async def note_reconciliation(
        self,
        sender: str,
        transfer_id: str,
        study_uid: str,
        *,
        priority: str,
        rule: str,
        foreign: tuple[str | None, str | None],
        local: tuple[str, str | None],
    ) -> None: ...
    async def reconciliation(self, sender: str, transfer_id: str) -> Reconciliation | None: ...
    async def reconciliations(
        self,
        *,
        states: Sequence[ReconcileState] = RECONCILE_STATES,
        study_uid: str | None = None,
    ) -> list[Reconciliation]: ...
    async def hold_reconciliation(
        self,
        sender: str,
        transfer_id: str,
        *,
        foreign_patient_id: str | None,
        foreign_issuer: str | None,
        reason: str,
    ) -> None: ...
    async def resolve_reconciliation(
        self, study_uid: str, *, local_patient_id: str, local_issuer: str | None, reason: str
    ) -> int: ...
    async def finish_reconciliation(
        self,
        sender: str,
        transfer_id: str,
        study_uid: str,
        instances: Sequence[ReconciledInstance],
        *,
        rule: str | None,
        foreign_patient_id: str | None,
        foreign_issuer: str | None,
        local_patient_id: str | None,
        local_issuer: str | None,
        reason: str,
        deliver: bool = False,
    ) -> int: ...
    async def reconciled_instances(
        self, sender: str, transfer_id: str
    ) -> list[ReconciledInstance]: ...
    async def reconciliation_counts(self) -> dict[str, int]: ...
    async def patient_mapping_rows(
        self, table: str, *, nhs_number: str | None, sender_id: tuple[str, str, str] | None
    ) -> list[tuple[str, str | None]]: ...
