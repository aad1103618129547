"""Every statement the ledger runs, written once for both backends, and the
records built from their rows.

``?`` marks a parameter and ``{name}`` a fragment that differs between
backends (see ``dialect.py``); ``Statements(dialect)`` holds them rendered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dicomrelay.ledger.archive import ATTRIBUTE_COLUMNS
from dicomrelay.ledger.base import (
    IncomingInstance,
    IncomingTransfer,
    OutgoingInstance,
    OutgoingTransfer,
    TransferState,
)
from dicomrelay.ledger.dialect import Dialect

OUTGOING_COLUMNS = (
    "id, destination, study_uid, priority, digest, chunk_size, state, attempts,"
    " next_attempt, created, total, last_error, receipt, claimed_by, lease_until,"
    " attempts_without_progress,"
    " (SELECT count(*) FROM outgoing_instances i"
    " WHERE i.transfer_id = o.id AND i.acked IS NOT NULL)"
)
# The upper bounds (seconds) of the transfer latency histogram's buckets.
LATENCY_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
OUTGOING_INSTANCE_COLUMNS = "idx, path, sop_uid, size, digest, chunk_digests, origin"
INCOMING_INSTANCE_COLUMNS = "idx, sop_uid, size, digest, stored"

# claim_outgoing hands out the most urgent, then the oldest (as the scheduler does).
PRIORITY_ORDER = "CASE priority WHEN 'urgent' THEN 0 WHEN 'routine' THEN 1 ELSE 2 END, created, id"

# What claim_outgoing may take: due queued transfers nobody holds, and active
# ones whose holder stopped renewing (or, left by a release that held no
# lease, never had one). Parameters: now, three times.
CLAIMABLE = (
    "((state = 'queued' AND next_attempt <= ? AND (claimed_by IS NULL OR lease_until <= ?))"
    " OR (state = 'active' AND (claimed_by IS NULL OR lease_until <= ?)))"
)

# Given back, an attempt cut short (still active) is queued again, due as it was.
# A finished transfer keeps its last update: when it was committed (or died).
RELEASE = (
    "UPDATE outgoing SET claimed_by = NULL, lease_until = NULL,"
    " updated = CASE WHEN state IN ('done', 'dead') THEN updated ELSE ? END,"
    " state = CASE WHEN state = 'active' THEN 'queued' ELSE state END"
)


AUDIT_COLUMNS = (
    "a.id, a.at, a.org, a.action, a.transfer_id, a.detail, a.patient_id, a.remote, a.outcome,"
    " coalesce(a.study_uid, (SELECT o.study_uid FROM outgoing o WHERE o.id = a.transfer_id),"
    " (SELECT min(i.study_uid) FROM incoming i WHERE i.transfer_id = a.transfer_id))"
)
# A study's rows: those naming it, and those of the transfers that carried it
# (a de-identified copy too: its transfer is named by the row that made it).
AUDIT_OF_STUDY = (
    "(a.study_uid = ? OR a.transfer_id IN (SELECT id FROM outgoing WHERE study_uid = ?)"
    " OR a.transfer_id IN (SELECT transfer_id FROM incoming WHERE study_uid = ?)"
    " OR a.transfer_id IN (SELECT s.transfer_id FROM audit s WHERE s.study_uid = ?))"
)
# A patient's rows: those naming the patient, and the rows of every study a row
# names with the patient (and of the transfers that carried those studies).
AUDIT_OF_PATIENT = (
    "(a.patient_id = ? OR a.study_uid IN ({studies})"
    " OR a.transfer_id IN (SELECT id FROM outgoing WHERE study_uid IN ({studies}))"
    " OR a.transfer_id IN (SELECT transfer_id FROM incoming WHERE study_uid IN ({studies}))"
    " OR a.transfer_id IN (SELECT s.transfer_id FROM audit s WHERE s.study_uid IN ({studies})))"
).replace("{studies}", "SELECT p.study_uid FROM audit p WHERE p.patient_id = ?")


def audit_query(
    patient_id: str | None,
    study_uid: str | None,
    org: str | None,
    since: float | None,
    until: float | None,
    limit: int,
) -> tuple[str, tuple[Any, ...]]:
    """The audit rows matching every condition given, oldest first (``?``
    placeholders: render with the dialect)."""
    where: list[str] = []
    params: list[Any] = []
    if patient_id is not None:
        where.append(AUDIT_OF_PATIENT)
        params += [patient_id] * 5
    if study_uid is not None:
        where.append(AUDIT_OF_STUDY)
        params += [study_uid] * 4
    if org is not None:
        where.append("a.org = ?")
        params.append(org)
    if since is not None:
        where.append("a.at >= ?")
        params.append(since)
    if until is not None:
        where.append("a.at < ?")
        params.append(until)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    sql = f"SELECT {AUDIT_COLUMNS} FROM audit a{clause} ORDER BY a.at, a.id LIMIT ?"
    return sql, (*params, limit)


class Statements:
    """The ledger's statements in one dialect. States appear as TransferState's
    values: they are stored, so they never change."""

    def __init__(self, dialect: Dialect) -> None:
        sql = dialect.render
        # Sending side.
        self.insert_outgoing = sql(
            "INSERT INTO outgoing (id, destination, study_uid, priority, digest, chunk_size,"
            " state, attempts, next_attempt, created, updated, total)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self.insert_outgoing_instance = sql(
            f"INSERT INTO outgoing_instances (transfer_id, {OUTGOING_INSTANCE_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self.outgoing = sql(f"SELECT {OUTGOING_COLUMNS} FROM outgoing o WHERE id = ?")
        self.unfinished_outgoing = sql(
            f"SELECT {OUTGOING_COLUMNS} FROM outgoing o WHERE state IN ('queued', 'active')"
            " ORDER BY created"
        )
        self.all_outgoing = sql(
            f"SELECT {OUTGOING_COLUMNS} FROM outgoing o ORDER BY created DESC LIMIT ?"
        )
        self.all_outgoing_in_state = sql(
            f"SELECT {OUTGOING_COLUMNS} FROM outgoing o WHERE state = ?"
            " ORDER BY created DESC LIMIT ?"
        )
        self.pending_instances = sql(
            f"SELECT {OUTGOING_INSTANCE_COLUMNS} FROM outgoing_instances"
            " WHERE transfer_id = ? AND acked IS NULL ORDER BY idx"
        )
        self.mark_acked = sql(
            "UPDATE outgoing_instances SET acked = ? WHERE transfer_id = ? AND idx {in_integers}"
        )
        # The casts type a NULL parameter for PostgreSQL (coalesce keeps the column then).
        self.set_outgoing_state = sql(
            "UPDATE outgoing SET state = ?, updated = ?,"
            " attempts = coalesce(CAST(? AS INTEGER), attempts),"
            " attempts_without_progress = coalesce(CAST(? AS INTEGER), attempts_without_progress),"
            " next_attempt = coalesce(CAST(? AS {real}), next_attempt),"
            " last_error = coalesce(CAST(? AS TEXT), last_error),"
            " receipt = coalesce(CAST(? AS {blob}), receipt)"
            " WHERE id = ?"
        )
        self.requeue_dead = sql(
            "UPDATE outgoing SET state = 'queued', attempts_without_progress = 0,"
            " next_attempt = ?, updated = ?, claimed_by = NULL, lease_until = NULL"
            " WHERE id = ? AND state = 'dead'"
        )

        # Several workers sharing the sending work.
        claim = f"SELECT id FROM outgoing WHERE {CLAIMABLE}"
        locked = f" ORDER BY {PRIORITY_ORDER} LIMIT ?{{for_update_skip_locked}}"
        self.claimable = sql(claim + locked)
        self.claimable_among = sql(claim + " AND id {in_texts}" + locked)
        self.claim = sql(
            "UPDATE outgoing SET claimed_by = ?, lease_until = ?, updated = ? WHERE id {in_texts}"
        )
        self.outgoing_among = sql(
            f"SELECT {OUTGOING_COLUMNS} FROM outgoing o WHERE id {{in_texts}}"
        )
        self.release_claims = sql(RELEASE + " WHERE claimed_by = ?")
        self.release_claim = sql(RELEASE + " WHERE id = ? AND claimed_by = ?")
        self.renew_lease = sql(
            "UPDATE outgoing SET lease_until = ? WHERE claimed_by = ? AND id {in_texts}"
            " RETURNING id"
        )
        self.finished_outgoing = sql(
            f"SELECT {OUTGOING_COLUMNS} FROM outgoing o"
            " WHERE state IN ('done', 'dead') AND id {in_texts}"
        )

        # Receiving side.
        self.note_incoming = sql(
            "INSERT INTO incoming (sender, transfer_id, study_uid, total, digest, first_seen)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sender, transfer_id) DO NOTHING"
        )
        self.incoming = sql(
            "SELECT study_uid, total, digest, receipt FROM incoming"
            " WHERE sender = ? AND transfer_id = ?"
        )
        self.receipt_for_commit = sql(
            "SELECT receipt FROM incoming WHERE sender = ? AND transfer_id = ?{for_update}"
        )
        self.record_received = sql(
            f"INSERT INTO incoming_instances (sender, transfer_id, {INCOMING_INSTANCE_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sender, transfer_id, idx) DO NOTHING"
        )
        self.received = sql(
            f"SELECT {INCOMING_INSTANCE_COLUMNS} FROM incoming_instances"
            " WHERE sender = ? AND transfer_id = ?"
        )
        self.digests_from = sql(
            "SELECT DISTINCT digest FROM incoming_instances WHERE sender = ? AND digest {in_texts}"
        )
        self.record_partial = sql(
            "INSERT INTO incoming_partials (sender, transfer_id, idx, durable) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (sender, transfer_id, idx) DO UPDATE SET durable = excluded.durable"
        )
        self.partial = sql(
            "SELECT durable FROM incoming_partials WHERE sender = ? AND transfer_id = ? AND idx = ?"
        )
        # A version committed later replaces the one held (a corrected instance
        # re-sent under its UID): the store is what the receipt names. Within one
        # transfer the last index of a UID wins (how: ``dialect.py``).
        self.commit_to_store = sql(
            "INSERT INTO store (study_uid, sop_uid, digest, size, sender, transfer_id, committed)"
            " SELECT ?, sop_uid, digest, size, sender, transfer_id, ?"
            " FROM {received_in_commit_order}"
            " ON CONFLICT (study_uid, sop_uid) DO UPDATE SET digest = excluded.digest,"
            " size = excluded.size, sender = excluded.sender,"
            " transfer_id = excluded.transfer_id, committed = excluded.committed"
        )
        self.commit_incoming = sql(
            "UPDATE incoming SET committed = ?, receipt = ? WHERE sender = ? AND transfer_id = ?"
        )
        self.study = sql(
            "SELECT sop_uid, digest, size FROM store WHERE study_uid = ? ORDER BY sop_uid"
        )

        # The segment store: each digest's location, and where the last durable
        # round ended, per store.
        self.segment_end = sql("SELECT segment, end_offset FROM segment_ends WHERE store = ?")
        self.set_segment_end = sql(
            "INSERT INTO segment_ends (store, segment, end_offset) VALUES (?, ?, ?)"
            " ON CONFLICT (store) DO UPDATE SET segment = excluded.segment,"
            " end_offset = excluded.end_offset"
        )
        # A digest located already keeps its place (a copy written again is garbage).
        self.locate = sql(
            "INSERT INTO segment_records (store, digest, segment, record_offset, length)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (store, digest) DO NOTHING"
        )
        self.locations = sql(
            "SELECT digest, segment, record_offset, length FROM segment_records"
            " WHERE store = ? AND digest {in_texts}"
        )
        self.segment_usage = sql(
            "SELECT segment, count(*), sum(length) FROM segment_records WHERE store = ?"
            " GROUP BY segment ORDER BY segment"
        )
        self.records_in_segment = sql(
            "SELECT digest, record_offset, length FROM segment_records"
            " WHERE store = ? AND segment = ? ORDER BY record_offset"
        )
        # Compaction's switch: only a row still where compaction read it moves.
        self.move_record = sql(
            "UPDATE segment_records SET segment = ?, record_offset = ?"
            " WHERE store = ? AND digest = ? AND segment = ? AND record_offset = ?"
        )
        # Retention.
        self.expired_studies = sql(
            "SELECT study_uid FROM store GROUP BY study_uid HAVING max(committed) < ?"
        )
        self.study_digests = sql("SELECT DISTINCT digest FROM store WHERE study_uid = ?")
        self.drop_study = sql("DELETE FROM store WHERE study_uid = ?")
        # Of the digests given, the locations nothing names any more: no committed
        # study, and no transfer still arriving (its instances are not in store yet).
        self.drop_unreferenced = sql(
            "DELETE FROM segment_records WHERE digest {in_texts}"
            " AND NOT EXISTS (SELECT 1 FROM store s WHERE s.digest = segment_records.digest)"
            " AND NOT EXISTS (SELECT 1 FROM incoming_instances i JOIN incoming t"
            " ON t.sender = i.sender AND t.transfer_id = i.transfer_id"
            " WHERE i.digest = segment_records.digest AND t.committed IS NULL)"
        )

        # What this node's DICOM SCP stored and routed on: once the transfer
        # that sent it is done, before the parameter, a digest nothing else
        # names (no committed study, no transfer arriving, no transfer still
        # to send or that may be sent again) goes. A transfer sends a stored
        # instance itself (its path ``store:``) or a copy made from it (a
        # de-identified one in its spool: the stored digest is its origin).
        self.drop_routed = sql(
            "DELETE FROM segment_records WHERE store = ? AND digest IN"
            " (SELECT coalesce(o.origin, o.digest) FROM outgoing t"
            " JOIN outgoing_instances o ON o.transfer_id = t.id"
            " WHERE t.state = 'done' AND t.updated < ?"
            " AND (o.origin IS NOT NULL OR substr(o.path, 1, 6) = 'store:'))"
            " AND NOT EXISTS (SELECT 1 FROM store s WHERE s.digest = segment_records.digest)"
            " AND NOT EXISTS (SELECT 1 FROM incoming_instances i JOIN incoming t"
            " ON t.sender = i.sender AND t.transfer_id = i.transfer_id"
            " WHERE i.digest = segment_records.digest AND t.committed IS NULL)"
            " AND NOT EXISTS (SELECT 1 FROM outgoing_instances o JOIN outgoing t"
            " ON t.id = o.transfer_id WHERE o.digest = segment_records.digest"
            " AND t.state IN ('queued', 'active', 'dead'))"
            " AND NOT EXISTS (SELECT 1 FROM outgoing_instances o JOIN outgoing t"
            " ON t.id = o.transfer_id WHERE o.origin = segment_records.digest"
            " AND t.state IN ('queued', 'active', 'dead'))"
        )

        # Delivery into the local PACS. Stamps only increase (by the parameter,
        # a microsecond, at least), so a finished delivery can tell a later request.
        self.add_delivery = sql(
            "INSERT INTO deliveries (study_uid, state, queued) VALUES (?, 'pending', ?)"
            " ON CONFLICT (study_uid) DO UPDATE SET state = 'pending', finished = NULL,"
            " queued = {greatest}(excluded.queued, deliveries.queued + ?) RETURNING queued"
        )
        self.pending_deliveries = sql(
            "SELECT study_uid, queued FROM deliveries WHERE state = 'pending' ORDER BY queued"
        )
        self.finish_delivery = sql(
            "UPDATE deliveries SET state = ?, finished = ?, last_error = ?"
            " WHERE study_uid = ? AND queued = ?"
        )

        # DICOMweb: what a stored blob says of itself, instances stored over
        # STOW-RS (a later version of a UID replaces the one held, as a commit
        # does), and API tokens.
        self.insert_attributes = sql(
            f"INSERT INTO instance_attributes ({ATTRIBUTE_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (digest) DO NOTHING"
        )
        self.store_instance = sql(
            "INSERT INTO store (study_uid, sop_uid, digest, size, sender, transfer_id, committed)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (study_uid, sop_uid) DO UPDATE SET digest = excluded.digest,"
            " size = excluded.size, sender = excluded.sender,"
            " transfer_id = excluded.transfer_id, committed = excluded.committed"
        )
        self.unindexed = sql(
            "SELECT s.digest, s.committed FROM store s WHERE s.committed >= ? AND NOT EXISTS"
            " (SELECT 1 FROM instance_attributes a WHERE a.digest = s.digest)"
            " ORDER BY s.committed LIMIT ?"
        )
        self.insert_token = sql(
            "INSERT INTO api_tokens (name, token_hash, org, scope, created, expires)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
            " token_hash = excluded.token_hash, org = excluded.org, scope = excluded.scope,"
            " created = excluded.created, expires = excluded.expires, revoked = NULL"
            " WHERE api_tokens.revoked IS NOT NULL"
        )
        self.revoke_token = sql(
            "UPDATE api_tokens SET revoked = ? WHERE name = ? AND revoked IS NULL"
        )
        self.token_by_hash = sql(
            "SELECT name, org, scope, created, expires, revoked FROM api_tokens"
            " WHERE token_hash = ?"
        )
        self.tokens = sql(
            "SELECT name, org, scope, created, expires, revoked FROM api_tokens ORDER BY name"
        )

        # Metrics (``/metrics``): what the ledger knows, counted.
        self.metric_transfers = sql(
            "SELECT destination, priority, state, count(*), coalesce(sum(total), 0)"
            " FROM outgoing GROUP BY destination, priority, state"
        )
        # Latency from queued to receipt of each done transfer (its last update
        # is its commit), counted into the histogram's buckets in the database.
        buckets = ", ".join(
            f"sum(CASE WHEN updated - created <= {b!r} THEN 1 ELSE 0 END)" for b in LATENCY_BUCKETS
        )
        self.metric_latency = sql(
            f"SELECT destination, {buckets}, count(*), coalesce(sum(updated - created), 0)"
            " FROM outgoing WHERE state = 'done' GROUP BY destination"
        )
        self.metric_sent = sql(
            "SELECT o.destination, count(*), coalesce(sum(i.size), 0) FROM outgoing_instances i"
            " JOIN outgoing o ON o.id = i.transfer_id WHERE i.acked IS NOT NULL"
            " GROUP BY o.destination"
        )
        self.metric_received = sql(
            "SELECT sender, count(*), coalesce(sum(size), 0) FROM incoming_instances"
            " GROUP BY sender"
        )
        self.metric_store = sql("SELECT count(*), coalesce(sum(size), 0) FROM store")
        self.metric_refusals = sql(
            "SELECT action, count(*) FROM audit WHERE action LIKE ? GROUP BY action"
        )
        self.metric_deliveries = sql("SELECT state, count(*) FROM deliveries GROUP BY state")

        # Both sides.
        self.audit = sql(
            "INSERT INTO audit (at, org, action, transfer_id, detail, study_uid, patient_id,"
            " remote, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self.outgoing_by_state = sql("SELECT state, count(*) FROM outgoing GROUP BY state")
        self.committed_incoming = sql("SELECT count(*) FROM incoming WHERE committed IS NOT NULL")
        self.stored_instances = sql("SELECT count(*) FROM store")
        self.deliveries_by_state = sql("SELECT state, count(*) FROM deliveries GROUP BY state")


# Records from rows, and rows from records.
def outgoing_from_row(row: Sequence[Any]) -> OutgoingTransfer:
    """An outgoing transfer from a row of ``OUTGOING_COLUMNS``."""
    (
        id_,
        dest,
        study,
        prio,
        digest,
        chunk,
        state,
        attempts,
        nxt,
        created,
        total,
        err,
        rec,
        claimed_by,
        lease_until,
        without_progress,
        acked,
    ) = row
    return OutgoingTransfer(
        id=id_,
        destination=dest,
        study_instance_uid=study,
        priority=prio,
        digest=digest,
        chunk_size=chunk,
        state=TransferState(state),
        attempts=attempts,
        next_attempt=nxt,
        created=created,
        total=total,
        acked=acked,
        last_error=err,
        receipt=None if rec is None else bytes(rec),
        claimed_by=claimed_by,
        lease_until=lease_until,
        attempts_without_progress=without_progress,
    )


def outgoing_instance_from_row(row: Sequence[Any]) -> OutgoingInstance:
    """An outgoing instance from a row of ``OUTGOING_INSTANCE_COLUMNS``."""
    idx, path, uid, size, digest, chunks, origin = row
    return OutgoingInstance(
        index=idx,
        path=path,
        sop_instance_uid=uid,
        size=size,
        digest=digest,
        chunk_digests=tuple(chunks.split(",")) if chunks else (),
        origin=origin,
    )


def incoming_from_row(sender: str, transfer_id: str, row: Sequence[Any]) -> IncomingTransfer:
    """An incoming transfer from a row of ``Statements.incoming``."""
    study, total, digest, receipt = row
    return IncomingTransfer(
        sender=sender,
        transfer_id=transfer_id,
        study_instance_uid=study,
        total=total,
        digest=digest,
        receipt=None if receipt is None else bytes(receipt),
    )


def incoming_instance_from_row(row: Sequence[Any]) -> IncomingInstance:
    """An incoming instance from a row of ``INCOMING_INSTANCE_COLUMNS``."""
    idx, uid, size, digest, stored = row
    return IncomingInstance(
        index=idx, sop_instance_uid=uid, size=size, digest=digest, stored=stored
    )


def outgoing_insert_row(transfer: OutgoingTransfer, updated: float) -> tuple[Any, ...]:
    """The parameters of ``Statements.insert_outgoing`` for a new transfer."""
    t = transfer
    return (
        t.id,
        t.destination,
        t.study_instance_uid,
        t.priority,
        t.digest,
        t.chunk_size,
        t.state.value,
        t.attempts,
        t.next_attempt,
        t.created,
        updated,
        t.total,
    )


def outgoing_instance_insert_row(transfer_id: str, i: OutgoingInstance) -> tuple[Any, ...]:
    """The parameters of ``Statements.insert_outgoing_instance`` for one instance."""
    return (
        transfer_id,
        i.index,
        i.path,
        i.sop_instance_uid,
        i.size,
        i.digest,
        ",".join(i.chunk_digests),
        i.origin,
    )
