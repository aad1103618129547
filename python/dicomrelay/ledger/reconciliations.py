"""The ledger's record of patient-ID reconciliation (migration 6): which
committed transfers an inbound rule reconciles and in what state, what the
store holds in place of each received instance, and the operator's mapping
table. A mixin of ``SqlLedger``: the same statements on both backends."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from dicomrelay.ledger.dialect import STAMP_STEP, Dialect
from dicomrelay.ledger.work import Query, Row, Work

if TYPE_CHECKING:
    from dicomrelay.ledger.ledger import Driver
    from dicomrelay.ledger.statements import Statements

T = TypeVar("T")
ReconcileState = Literal["pending", "held", "resolving", "reconciled"]
RECONCILE_STATES: tuple[ReconcileState, ...] = ("pending", "held", "resolving", "reconciled")
_COLUMNS = (
    "sender, transfer_id, study_uid, state, priority, rule, foreign_patient_id, foreign_issuer,"
    " local_patient_id, local_issuer, reason, updated"
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Reconciliation:
    """One committed transfer's reconciliation."""

    sender: str
    transfer_id: str
    study_uid: str
    state: ReconcileState
    priority: str  # as the sender offered the transfer (inbound rules may name it)
    rule: str | None  # the rule that reconciled it
    foreign_patient_id: str | None
    foreign_issuer: str | None
    local_patient_id: str | None
    local_issuer: str | None
    reason: str | None
    updated: float

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, kw_only=True, slots=True)
class ReconciledInstance:
    """A received instance and the rewritten one stored in its place."""

    sop_uid: str
    received_digest: str
    reconciled_digest: str
    size: int


# An instance rewritten as it arrived, for the round that stores it: (sender,
# transfer id, received digest, reconciled digest, study UID, SOP UID, size).
ReconciledRow = tuple[str, str, str, str, str, str, int]


def _reconciliation(row: Row) -> Reconciliation:
    return Reconciliation(
        sender=row[0],
        transfer_id=row[1],
        study_uid=row[2],
        state=row[3],
        priority=row[4],
        rule=row[5],
        foreign_patient_id=row[6],
        foreign_issuer=row[7],
        local_patient_id=row[8],
        local_issuer=row[9],
        reason=row[10],
        updated=float(row[11]),
    )


class ReconcileStatements:
    def __init__(self, dialect: Dialect) -> None:
        sql = dialect.render
        self.add = sql(
            f"INSERT INTO reconciliations ({_COLUMNS})"
            " VALUES (?, ?, ?, 'pending', ?, NULL, NULL, NULL, NULL, NULL, NULL, ?)"
            " ON CONFLICT (sender, transfer_id) DO NOTHING"
        )
        self.one = sql(
            f"SELECT {_COLUMNS} FROM reconciliations WHERE sender = ? AND transfer_id = ?"
        )
        self.in_states = sql(
            f"SELECT {_COLUMNS} FROM reconciliations WHERE state {{in_texts}} ORDER BY updated"
        )
        self.of_study = sql(
            f"SELECT {_COLUMNS} FROM reconciliations WHERE study_uid = ? ORDER BY updated"
        )
        self.hold = sql(
            "UPDATE reconciliations SET state = 'held', foreign_patient_id = ?,"
            " foreign_issuer = ?, reason = ?, updated = ?"
            " WHERE sender = ? AND transfer_id = ? AND state IN ('pending', 'resolving')"
        )
        self.resolve = sql(
            "UPDATE reconciliations SET state = 'resolving', local_patient_id = ?,"
            " local_issuer = ?, reason = ?, updated = ? WHERE study_uid = ? AND state = 'held'"
        )
        self.insert_instance = sql(
            "INSERT INTO reconciled_instances (sender, transfer_id, received_digest,"
            " reconciled_digest, study_uid, sop_uid, size, reconciled)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (sender, transfer_id, received_digest) DO UPDATE SET"
            " reconciled_digest = excluded.reconciled_digest, size = excluded.size,"
            " reconciled = excluded.reconciled"
        )
        # Only a row still holding what was received switches (a later commit
        # of the same instance is another transfer's to reconcile).
        self.switch = sql(
            "UPDATE store SET digest = ?, size = ?"
            " WHERE study_uid = ? AND sop_uid = ? AND digest = ? AND sender = ? AND transfer_id = ?"
        )
        self.done = sql(
            "UPDATE reconciliations SET state = 'reconciled', rule = ?, foreign_patient_id = ?,"
            " foreign_issuer = ?, local_patient_id = ?, local_issuer = ?, reason = ?,"
            " updated = ? WHERE sender = ? AND transfer_id = ?"
        )
        self.instances = sql(
            "SELECT sop_uid, received_digest, reconciled_digest, size FROM reconciled_instances"
            " WHERE sender = ? AND transfer_id = ? ORDER BY sop_uid"
        )
        self.counts = sql("SELECT state, count(*) FROM reconciliations GROUP BY state")
        # A plan made as the transfer arrived: the rule, and whom it maps to whom.
        self.note = sql(
            f"INSERT INTO reconciliations ({_COLUMNS})"
            " VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, NULL, ?)"
            " ON CONFLICT (sender, transfer_id) DO UPDATE SET rule = excluded.rule,"
            " foreign_patient_id = excluded.foreign_patient_id,"
            " foreign_issuer = excluded.foreign_issuer,"
            " local_patient_id = excluded.local_patient_id,"
            " local_issuer = excluded.local_issuer, updated = excluded.updated"
            " WHERE reconciliations.state = 'pending'"
        )
        # At commit: the store's new rows name the instances rewritten as they
        # arrived, not what was received (every SET sees the row as it was).
        mapped = (
            " FROM reconciled_instances r WHERE r.sender = store.sender"
            " AND r.transfer_id = store.transfer_id AND r.received_digest = store.digest"
        )
        self.switch_committed = sql(
            f"UPDATE store SET digest = (SELECT r.reconciled_digest{mapped}),"
            f" size = (SELECT r.size{mapped})"
            " WHERE study_uid = ? AND sender = ? AND transfer_id = ?"
            f" AND EXISTS (SELECT 1{mapped})"
        )


class ReconciliationRecords:
    """``SqlLedger``'s reconciliation calls (it provides the driver)."""

    _driver: Driver
    _sql: Statements
    _array: Callable[[Iterable[Any]], Any]
    _rsql: ReconcileStatements

    async def _one(self, query: Query) -> list[Row]:
        def work() -> Work[list[Row]]:
            return (yield query).rows

        return await self._driver.run(work)

    async def add_reconciliation(
        self, sender: str, transfer_id: str, study_uid: str, priority: str
    ) -> Reconciliation:
        """Record a committed transfer as to be reconciled (pending), unless it
        is recorded already; its row as it stands."""
        q = self._rsql
        key = (sender, transfer_id)

        def work() -> Work[Reconciliation]:
            yield Query(q.add, (*key, study_uid, priority, time.time()))
            return _reconciliation((yield Query(q.one, key)).rows[0])

        return await self._driver.run(work)

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
    ) -> None:
        """A transfer is being reconciled as it arrives, by ``rule``, from the
        patient ``foreign`` to ``local`` ((patient ID, issuer) each): recorded
        pending (a row still pending gets the plan)."""
        params = (
            sender,
            transfer_id,
            study_uid,
            priority,
            rule,
            *foreign,
            *local,
            time.time(),
        )
        await self._one(Query(self._rsql.note, params))

    async def reconciliation(self, sender: str, transfer_id: str) -> Reconciliation | None:
        rows = await self._one(Query(self._rsql.one, (sender, transfer_id)))
        return _reconciliation(rows[0]) if rows else None

    async def reconciliations(
        self,
        *,
        states: Sequence[ReconcileState] = RECONCILE_STATES,
        study_uid: str | None = None,
    ) -> list[Reconciliation]:
        """By study (every state), else those in ``states``; oldest first."""
        if study_uid is not None:
            rows = await self._one(Query(self._rsql.of_study, (study_uid,)))
        else:
            rows = await self._one(Query(self._rsql.in_states, (self._array(list(states)),)))
        return [_reconciliation(r) for r in rows]

    async def hold_reconciliation(
        self,
        sender: str,
        transfer_id: str,
        *,
        foreign_patient_id: str | None,
        foreign_issuer: str | None,
        reason: str,
    ) -> None:
        """No local patient found (or the mapping failed): held for an operator."""
        params = (foreign_patient_id, foreign_issuer, reason, time.time(), sender, transfer_id)
        await self._one(Query(self._rsql.hold, params))

    async def resolve_reconciliation(
        self, study_uid: str, *, local_patient_id: str, local_issuer: str | None, reason: str
    ) -> int:
        """An operator names the local patient of a held study: its held
        transfers become ``resolving`` (the node applies it); how many."""
        q = self._rsql
        params = (local_patient_id, local_issuer, reason, time.time(), study_uid)

        def work() -> Work[int]:
            return (yield Query(q.resolve, params)).rowcount

        return await self._driver.run(work)

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
    ) -> int:
        """In one transaction: each received digest's reconciled digest kept,
        the store's rows switched to the reconciled instances (where they still
        hold what this transfer received), the transfer marked reconciled, the
        received records nothing names any more dropped (garbage for
        compaction) and, with ``deliver``, the study's delivery into the PACS
        requested. Returns how many store rows switched."""
        q, s = self._rsql, self._sql
        now = time.time()
        rows = [
            (
                sender,
                transfer_id,
                i.received_digest,
                i.reconciled_digest,
                study_uid,
                i.sop_uid,
                i.size,
                now,
            )
            for i in instances
        ]
        switches = [
            (
                i.reconciled_digest,
                i.size,
                study_uid,
                i.sop_uid,
                i.received_digest,
                sender,
                transfer_id,
            )
            for i in instances
            if i.reconciled_digest != i.received_digest
        ]
        done = (
            rule,
            foreign_patient_id,
            foreign_issuer,
            local_patient_id,
            local_issuer,
            reason,
            now,
            sender,
            transfer_id,
        )
        replaced = sorted({sw[4] for sw in switches})

        def work() -> Work[int]:
            if rows:
                yield Query(q.insert_instance, rows, many=True)
            switched = 0
            for params in switches:
                switched += (yield Query(q.switch, params)).rowcount
            yield Query(q.done, done)
            if deliver:
                yield Query(s.add_delivery, (study_uid, now, STAMP_STEP))
            if replaced:
                yield Query(s.drop_unreferenced, (self._array(replaced),))
            return switched

        return await self._driver.run(work)

    async def reconciled_instances(self, sender: str, transfer_id: str) -> list[ReconciledInstance]:
        rows = await self._one(Query(self._rsql.instances, (sender, transfer_id)))
        return [
            ReconciledInstance(
                sop_uid=r[0], received_digest=r[1], reconciled_digest=r[2], size=int(r[3])
            )
            for r in rows
        ]

    async def reconciliation_counts(self) -> dict[str, int]:
        rows = await self._one(Query(self._rsql.counts))
        return {str(state): int(n) for state, n in rows}

    async def patient_mapping_rows(
        self, table: str, *, nhs_number: str | None, sender_id: tuple[str, str, str] | None
    ) -> list[tuple[str, str | None]]:
        """The local patients an operator's mapping ``table`` (the CSV file's
        columns; the name checked by the caller) names for one NHS number, or
        one (sender, issuer, patient ID); a sender of "" is the rows for any."""
        render = self._driver.dialect.render
        select = f"SELECT local_patient_id, local_issuer FROM {table}"
        if nhs_number is not None:
            query = Query(render(select + " WHERE replace(nhs_number, ' ', '') = ?"), (nhs_number,))
        else:
            assert sender_id is not None
            sender, issuer, patient_id = sender_id
            where = " WHERE patient_id = ? AND coalesce(issuer, '') = ?" + (
                " AND upper(sender) = ?" if sender else " AND coalesce(sender, '') = ?"
            )
            query = Query(render(select + where), (patient_id, issuer, sender))
        rows = await self._one(query)
        return [(str(p), None if i is None else str(i)) for p, i in rows]
