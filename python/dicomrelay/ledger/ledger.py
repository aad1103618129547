"""The ledger, once for both backends: each call one transaction, its body a
``Work`` of statements that a driver (``sqlite.py``, ``postgres.py``) runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from dicomrelay.audit import AuditQuery, AuditRecord, Outcome, outcome_of
from dicomrelay.ledger.archive import (
    ApiToken,
    StoredAttributes,
    attributes_from_row,
    attributes_row,
)
from dicomrelay.ledger.base import (
    AfterCommit,
    IncomingInstance,
    IncomingTransfer,
    Location,
    OutgoingInstance,
    OutgoingTransfer,
    TransferState,
)
from dicomrelay.ledger.dialect import STAMP_STEP, Dialect
from dicomrelay.ledger.quarantine import (
    HeldInstance,
    HoldState,
    QuarantineLedger,
    QuarantineStatements,
    hold_rows,
    resolve,
)
from dicomrelay.ledger.reconciliations import (
    ReconciledRow,
    ReconcileStatements,
    ReconciliationRecords,
)
from dicomrelay.ledger.search import Search, search_sql
from dicomrelay.ledger.shares import ShareLink, ShareStatements, share_from_row
from dicomrelay.ledger.statements import (
    Statements,
    audit_query,
    incoming_from_row,
    incoming_instance_from_row,
    outgoing_from_row,
    outgoing_insert_row,
    outgoing_instance_from_row,
    outgoing_instance_insert_row,
)
from dicomrelay.ledger.work import Query, Row, Work

T = TypeVar("T")


class Driver(Protocol):
    """Runs transactions on one backend."""

    @property
    def dialect(self) -> Dialect: ...

    async def run(self, work: Callable[[], Work[T]]) -> T:
        """Run ``work()`` as one transaction. ``work`` makes a fresh body each
        call: a driver may run it again (PostgreSQL, after a deadlock)."""
        ...

    async def read(self, work: Callable[[], Work[T]]) -> T:
        """Run ``work()``, which only reads, as one transaction that sees the
        last committed state without waiting for writes in progress."""
        ...

    async def close(self) -> None: ...


class SqlLedger(QuarantineLedger, ReconciliationRecords):
    """The ``Ledger`` over any driver."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._sql = Statements(driver.dialect)
        self._quarantine = QuarantineStatements(driver.dialect)
        render = driver.dialect.render
        self._shares = {k: render(v) for k, v in vars(ShareStatements).items() if k[0] != "_"}
        self._rsql = ReconcileStatements(driver.dialect)
        self._array = driver.dialect.array

    async def close(self) -> None:
        await self._driver.close()

    async def _one(self, query: Query) -> list[Row]:
        """The rows of one statement, run as a transaction of its own."""

        def work() -> Work[list[Row]]:
            return (yield query).rows

        return await self._driver.run(work)

    async def _read_one(self, query: Query) -> list[Row]:
        """The rows of one reading statement, beside any write in progress."""

        def work() -> Work[list[Row]]:
            return (yield query).rows

        return await self._driver.read(work)

    # Sending side.
    async def add_outgoing(
        self,
        transfer: OutgoingTransfer,
        instances: Sequence[OutgoingInstance],
        *,
        held: Sequence[HeldInstance] = (),
        releases: str | None = None,
    ) -> None:
        q, quarantine = self._sql, self._quarantine
        row = outgoing_insert_row(transfer, time.time())
        rows = [outgoing_instance_insert_row(transfer.id, i) for i in instances]
        held_rows = hold_rows(held)

        def work() -> Work[None]:
            if releases is not None:
                yield from resolve(quarantine, releases, HoldState.RELEASED, transfer.id)
            yield Query(q.insert_outgoing, row)
            yield Query(q.insert_outgoing_instance, rows, many=True)
            if held_rows:
                yield Query(quarantine.insert, held_rows, many=True)

        await self._driver.run(work)

    async def outgoing(self, transfer_id: str) -> OutgoingTransfer | None:
        rows = await self._one(Query(self._sql.outgoing, (transfer_id,)))
        return outgoing_from_row(rows[0]) if rows else None

    async def unfinished_outgoing(self) -> list[OutgoingTransfer]:
        rows = await self._one(Query(self._sql.unfinished_outgoing))
        return [outgoing_from_row(r) for r in rows]

    async def all_outgoing(
        self, limit: int = 1000, *, state: TransferState | None = None
    ) -> list[OutgoingTransfer]:
        if state is None:
            query = Query(self._sql.all_outgoing, (limit,))
        else:
            query = Query(self._sql.all_outgoing_in_state, (state.value, limit))
        return [outgoing_from_row(r) for r in await self._one(query)]

    async def pending_instances(self, transfer_id: str) -> list[OutgoingInstance]:
        rows = await self._one(Query(self._sql.pending_instances, (transfer_id,)))
        return [outgoing_instance_from_row(r) for r in rows]

    async def mark_acked(self, transfer_id: str, indexes: Sequence[int], at: float) -> None:
        await self._one(Query(self._sql.mark_acked, (at, transfer_id, self._array(indexes))))

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
    ) -> None:
        params = (
            state.value,
            time.time(),
            attempts,
            attempts_without_progress,
            next_attempt,
            error,
            receipt,
            transfer_id,
        )
        await self._one(Query(self._sql.set_outgoing_state, params))

    async def requeue_dead(self, transfer_id: str, *, now: float) -> bool:
        query = Query(self._sql.requeue_dead, (now, time.time(), transfer_id))

        def work() -> Work[bool]:
            return (yield query).rowcount == 1

        return await self._driver.run(work)

    # Several workers sharing one ledger's sending work.
    async def claim_outgoing(
        self,
        worker: str,
        *,
        now: float,
        lease_seconds: float,
        limit: int,
        only: Sequence[str] | None = None,
    ) -> list[OutgoingTransfer]:
        q = self._sql
        claimable = (now, now, now)
        if only is None:
            candidates = Query(q.claimable, (*claimable, limit))
        else:
            candidates = Query(q.claimable_among, (*claimable, self._array(only), limit))

        def work() -> Work[list[OutgoingTransfer]]:
            ids = [r[0] for r in (yield candidates).rows]
            if not ids:
                return []
            among = self._array(ids)
            yield Query(q.claim, (worker, now + lease_seconds, time.time(), among))
            rows = (yield Query(q.outgoing_among, (among,))).rows
            order = {i: n for n, i in enumerate(ids)}
            return sorted((outgoing_from_row(r) for r in rows), key=lambda t: order[t.id])

        return await self._driver.run(work)

    async def release_claims(self, worker: str) -> int:
        query = Query(self._sql.release_claims, (time.time(), worker))

        def work() -> Work[int]:
            return (yield query).rowcount

        return await self._driver.run(work)

    async def renew_lease(
        self, worker: str, transfer_ids: Sequence[str], *, now: float, lease_seconds: float
    ) -> set[str]:
        params = (now + lease_seconds, worker, self._array(transfer_ids))
        return {str(r[0]) for r in await self._one(Query(self._sql.renew_lease, params))}

    async def finished_outgoing(self, transfer_ids: Sequence[str]) -> list[OutgoingTransfer]:
        query = Query(self._sql.finished_outgoing, (self._array(transfer_ids),))
        return [outgoing_from_row(r) for r in await self._one(query)]

    async def release_claim(self, worker: str, transfer_id: str) -> bool:
        query = Query(self._sql.release_claim, (time.time(), transfer_id, worker))

        def work() -> Work[bool]:
            return (yield query).rowcount == 1

        return await self._driver.run(work)

    # Receiving side.
    async def note_incoming(
        self, sender: str, transfer_id: str, study_instance_uid: str, total: int, digest: str
    ) -> bytes | None:
        q = self._sql
        params = (sender, transfer_id, study_instance_uid, total, digest, time.time())

        def work() -> Work[bytes | None]:
            yield Query(q.note_incoming, params)
            receipt = (yield Query(q.incoming, (sender, transfer_id))).rows[0][3]
            return None if receipt is None else bytes(receipt)

        return await self._driver.run(work)

    async def incoming(self, sender: str, transfer_id: str) -> IncomingTransfer | None:
        rows = await self._one(Query(self._sql.incoming, (sender, transfer_id)))
        return incoming_from_row(sender, transfer_id, rows[0]) if rows else None

    async def record_received(
        self, sender: str, transfer_id: str, instances: Sequence[IncomingInstance]
    ) -> None:
        # Inline, not a call per row: this is the receiver's busiest call.
        rows = [
            (sender, transfer_id, i.index, i.sop_instance_uid, i.size, i.digest, i.stored)
            for i in instances
        ]
        await self._one(Query(self._sql.record_received, rows, many=True))

    async def received(self, sender: str, transfer_id: str) -> dict[int, IncomingInstance]:
        rows = await self._one(Query(self._sql.received, (sender, transfer_id)))
        return {i.index: i for i in map(incoming_instance_from_row, rows)}

    async def digests_from(self, sender: str, digests: Sequence[str]) -> set[str]:
        query = Query(self._sql.digests_from, (sender, self._array(digests)))
        return {str(r[0]) for r in await self._one(query)}

    async def record_partial(self, sender: str, transfer_id: str, index: int, offset: int) -> None:
        await self._one(Query(self._sql.record_partial, (sender, transfer_id, index, offset)))

    async def partial(self, sender: str, transfer_id: str, index: int) -> int:
        rows = await self._one(Query(self._sql.partial, (sender, transfer_id, index)))
        return int(rows[0][0]) if rows else 0

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
        q = self._sql
        key = (sender, transfer_id)

        def work() -> Work[bytes]:
            rows = (yield Query(q.receipt_for_commit, key)).rows
            if rows and rows[0][0] is not None:
                return bytes(rows[0][0])
            yield Query(q.commit_to_store, (study_instance_uid, committed, *key))
            yield Query(self._rsql.switch_committed, (study_instance_uid, *key))
            yield Query(q.commit_incoming, (committed, receipt, *key))
            if then == "deliver":
                yield Query(q.add_delivery, (study_instance_uid, time.time(), STAMP_STEP))
            elif then == "reconcile":
                row = (*key, study_instance_uid, priority, time.time())
                yield Query(self._rsql.add, row)
            return receipt

        return await self._driver.run(work)

    async def study(self, study_instance_uid: str) -> list[tuple[str, str, int]]:
        rows = await self._one(Query(self._sql.study, (study_instance_uid,)))
        return [(str(uid), str(digest), int(size)) for uid, digest, size in rows]

    # The segment store's index.
    async def segment_end(self, store: str) -> tuple[int, int] | None:
        rows = await self._one(Query(self._sql.segment_end, (store,)))
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

    async def record_round(
        self,
        store: str,
        end: tuple[int, int],
        located: Sequence[tuple[str, Location]],
        received: Sequence[tuple[str, str, IncomingInstance]],
        reconciled: Sequence[ReconciledRow] = (),
    ) -> None:
        q = self._sql
        places = [(store, digest, *where) for digest, where in located]
        mapped = [(*r, time.time()) for r in reconciled]
        rows = [
            (sender, transfer_id, i.index, i.sop_instance_uid, i.size, i.digest, i.stored)
            for sender, transfer_id, i in received
        ]
        segment_end = (store, *end)

        def work() -> Work[None]:
            if places:
                yield Query(q.locate, places, many=True)
            if rows:
                yield Query(q.record_received, rows, many=True)
            if mapped:
                yield Query(self._rsql.insert_instance, mapped, many=True)
            yield Query(q.set_segment_end, segment_end)

        await self._driver.run(work)

    async def locations(self, store: str, digests: Sequence[str]) -> dict[str, Location]:
        # Read beside writes: a round's dedupe check never waits for the
        # round before it to be recorded (the store remembers those digests).
        query = Query(self._sql.locations, (store, self._array(digests)))
        return {str(d): (int(s), int(o), int(n)) for d, s, o, n in await self._read_one(query)}

    async def segment_usage(self, store: str) -> list[tuple[int, int, int]]:
        rows = await self._one(Query(self._sql.segment_usage, (store,)))
        return [(int(s), int(n), int(b)) for s, n, b in rows]

    async def records_in_segment(self, store: str, segment: int) -> list[tuple[str, Location]]:
        rows = await self._one(Query(self._sql.records_in_segment, (store, segment)))
        return [(str(d), (segment, int(o), int(n))) for d, o, n in rows]

    async def move_records(
        self,
        store: str,
        moves: Sequence[tuple[str, Location, Location]],
        end: tuple[int, int],
    ) -> int:
        q = self._sql
        params = [(new[0], new[1], store, digest, old[0], old[1]) for digest, old, new in moves]
        segment_end = (store, *end)

        def work() -> Work[int]:
            moved = 0
            for p in params:  # one at a time: each row's count says whether it moved
                moved += (yield Query(q.move_record, p)).rowcount
            yield Query(q.set_segment_end, segment_end)
            return moved

        return await self._driver.run(work)

    async def expired_studies(self, before: float) -> list[str]:
        rows = await self._one(Query(self._sql.expired_studies, (before,)))
        return [str(r[0]) for r in rows]

    async def drop_studies(self, studies: Sequence[str]) -> int:
        q = self._sql

        def work() -> Work[int]:
            digests: set[str] = set()
            for study in studies:
                digests.update(str(r[0]) for r in (yield Query(q.study_digests, (study,))).rows)
                yield Query(q.drop_study, (study,))
            if not digests:
                return 0
            return (yield Query(q.drop_unreferenced, (self._array(sorted(digests)),))).rowcount

        return await self._driver.run(work)

    async def drop_routed(self, store: str, before: float) -> int:
        query = Query(self._sql.drop_routed, (store, before))

        def work() -> Work[int]:
            return (yield query).rowcount

        return await self._driver.run(work)

    # Delivery of committed studies into the local PACS.
    async def add_delivery(self, study_instance_uid: str) -> float:
        params = (study_instance_uid, time.time(), STAMP_STEP)
        rows = await self._one(Query(self._sql.add_delivery, params))
        return float(rows[0][0])

    async def pending_deliveries(self) -> list[tuple[str, float]]:
        rows = await self._one(Query(self._sql.pending_deliveries))
        return [(str(uid), float(queued)) for uid, queued in rows]

    async def finish_delivery(
        self, study_instance_uid: str, *, requested: float, delivered: bool, error: str
    ) -> None:
        state = "done" if delivered else "dead"
        params = (state, time.time(), error or None, study_instance_uid, requested)
        await self._one(Query(self._sql.finish_delivery, params))

    # DICOMweb.
    async def store_instances(
        self, sender: str, batch_id: str, instances: Sequence[StoredAttributes], stored: float
    ) -> None:
        q = self._sql
        attributes = [attributes_row(a) for a in instances]
        rows = [
            (a.study_uid, a.sop_uid, a.digest, a.size, sender, batch_id, stored) for a in instances
        ]

        def work() -> Work[None]:
            yield Query(q.insert_attributes, attributes, many=True)
            yield Query(q.store_instance, rows, many=True)

        await self._driver.run(work)

    async def unindexed(self, since: float, limit: int) -> list[tuple[str, float]]:
        rows = await self._one(Query(self._sql.unindexed, (since, limit)))
        return [(str(digest), float(committed)) for digest, committed in rows]

    async def add_attributes(self, instances: Sequence[StoredAttributes]) -> None:
        rows = [attributes_row(a) for a in instances]
        await self._one(Query(self._sql.insert_attributes, rows, many=True))

    async def search(self, search: Search) -> list[Row]:
        sql, params = search_sql(search, self._driver.dialect)
        return await self._one(Query(sql, params))

    async def stored_instances(self, search: Search) -> list[StoredAttributes]:
        """An instance-level search's matches, as records."""
        assert search.level == "instance"
        return [attributes_from_row(r) for r in await self.search(search)]

    async def add_token(
        self, name: str, token_hash: str, *, org: str, scope: str, expires: float | None
    ) -> bool:
        """False if a token of that name exists and is not revoked."""
        query = Query(self._sql.insert_token, (name, token_hash, org, scope, time.time(), expires))

        def work() -> Work[bool]:
            return (yield query).rowcount == 1

        return await self._driver.run(work)

    async def revoke_token(self, name: str) -> bool:
        query = Query(self._sql.revoke_token, (time.time(), name))

        def work() -> Work[bool]:
            return (yield query).rowcount == 1

        return await self._driver.run(work)

    async def token(self, token_hash: str) -> ApiToken | None:
        rows = await self._one(Query(self._sql.token_by_hash, (token_hash,)))
        return _token(rows[0]) if rows else None

    async def tokens(self) -> list[ApiToken]:
        return [_token(r) for r in await self._one(Query(self._sql.tokens))]

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
        """False if the id or the token is taken (the caller draws again)."""
        params = (link_id, token_hash, study_uid, org, time.time(), expires, pin_hash)
        query = Query(self._shares["insert"], params)

        def work() -> Work[bool]:
            return (yield query).rowcount == 1

        return await self._driver.run(work)

    async def share_link(self, token_hash: str) -> ShareLink | None:
        rows = await self._one(Query(self._shares["by_hash"], (token_hash,)))
        return share_from_row(rows[0]) if rows else None

    async def share_link_by_id(self, link_id: str) -> ShareLink | None:
        rows = await self._one(Query(self._shares["by_id"], (link_id,)))
        return share_from_row(rows[0]) if rows else None

    async def share_links(self) -> list[ShareLink]:
        return [share_from_row(r) for r in await self._one(Query(self._shares["every"]))]

    async def revoke_share_link(self, id_or_hash: str) -> bool:
        query = Query(self._shares["revoke"], (time.time(), id_or_hash, id_or_hash))

        def work() -> Work[bool]:
            return (yield query).rowcount == 1

        return await self._driver.run(work)

    async def share_pin_failed(self, link_id: str, *, limit: int) -> tuple[int, bool]:
        query = Query(self._shares["wrong_pin"], (limit, time.time(), link_id))
        rows = await self._one(query)
        if not rows:
            return 0, False
        failures, locked = rows[0]
        return int(failures), locked is not None

    async def share_pin_passed(self, link_id: str) -> None:
        await self._one(Query(self._shares["right_pin"], (link_id,)))

    async def metrics(self) -> dict[str, list[Row]]:
        q = self._sql

        def work() -> Work[dict[str, list[Row]]]:
            return {
                "latency": (yield Query(q.metric_latency)).rows,
                "transfers": (yield Query(q.metric_transfers)).rows,
                "sent": (yield Query(q.metric_sent)).rows,
                "received": (yield Query(q.metric_received)).rows,
                "store": (yield Query(q.metric_store)).rows,
                "refusals": (yield Query(q.metric_refusals, ("%refused",))).rows,
                "deliveries": (yield Query(q.metric_deliveries)).rows,
            }

        return await self._driver.run(work)

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
        if outcome is None:
            outcome = outcome_of(action)
        params = (
            time.time(),
            org,
            action,
            transfer_id,
            detail,
            study_uid,
            patient_id,
            remote,
            int(outcome),
        )
        await self._one(Query(self._sql.audit, params))

    async def audit_trail(self, query: AuditQuery) -> list[AuditRecord]:
        sql, params = audit_query(
            query.patient_id, query.study_uid, query.org, query.since, query.until, query.limit
        )
        rows = await self._one(Query(self._driver.dialect.render(sql), params))
        return [
            AuditRecord(
                id=int(r[0]),
                at=float(r[1]),
                org=r[2],
                action=r[3],
                transfer_id=r[4],
                detail=r[5],
                patient_id=r[6],
                remote=r[7],
                outcome=Outcome(r[8]) if r[8] is not None else outcome_of(r[3]),
                study_uid=r[9],
            )
            for r in rows
        ]

    async def counts(self) -> dict[str, int]:
        q = self._sql

        def work() -> Work[dict[str, int]]:
            out = {s.value: 0 for s in TransferState}
            for state, n in (yield Query(q.outgoing_by_state)).rows:
                out[state] = n
            out["received_committed"] = (yield Query(q.committed_incoming)).scalar()
            out["stored_instances"] = (yield Query(q.stored_instances)).scalar()
            for state, n in (yield Query(q.deliveries_by_state)).rows:
                out[f"deliveries_{state}"] = n
            out["held"] = sum(n for _, n in (yield Query(self._quarantine.held_by_kind)).rows)
            for state, n in (yield Query(self._rsql.counts)).rows:
                out[f"reconciliations_{state}"] = n
            return out

        return await self._driver.run(work)


def _token(row: Row) -> ApiToken:
    name, org, scope, created, expires, revoked = row
    return ApiToken(
        name=name, org=org, scope=scope, created=created, expires=expires, revoked=revoked
    )
