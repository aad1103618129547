"""The ledger's tables, for both backends, as a list of numbered migrations
applied when a ledger opens.

A ledger records the migrations it has had in ``schema_version``; opening one
runs, in one transaction, those it lacks. The first stands for every release
before the list began: its tables are created only where missing and its
columns added only where missing, so any ledger those releases made (a SQLite
file or a PostgreSQL schema) opens as if it had been made by this list.

A migration, once released, never changes: the tables change by appending one.
Types and fragments in braces are the dialect's (``dialect.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dicomrelay.ledger.dialect import Dialect
from dicomrelay.ledger.work import Query, Work


@dataclass(frozen=True, slots=True)
class AddColumn:
    """A column added to a table that lacks it (looked up first: on PostgreSQL,
    ALTER TABLE locks the table even when there is nothing to add)."""

    table: str
    column: str
    definition: str


Step = str | AddColumn


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    steps: tuple[Step, ...]


MIGRATIONS = (
    Migration(
        1,
        "the tables of the releases before migrations were numbered",
        (
            """CREATE TABLE IF NOT EXISTS outgoing (
                id TEXT PRIMARY KEY,
                destination TEXT NOT NULL,
                study_uid TEXT NOT NULL,
                priority TEXT NOT NULL,
                digest TEXT NOT NULL,
                chunk_size INTEGER NOT NULL,
                state TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                attempts_without_progress INTEGER NOT NULL DEFAULT 0,
                next_attempt {real} NOT NULL DEFAULT 0,
                created {real} NOT NULL,
                updated {real} NOT NULL,
                total INTEGER NOT NULL,
                last_error TEXT,
                receipt {blob},
                claimed_by TEXT,
                lease_until {real}
            )""",
            # Added to the first releases' outgoing table since.
            AddColumn("outgoing", "claimed_by", "TEXT"),
            AddColumn("outgoing", "lease_until", "{real}"),
            AddColumn("outgoing", "attempts_without_progress", "INTEGER NOT NULL DEFAULT 0"),
            # (SQLite's had only state; migration 2 makes them one.)
            "CREATE INDEX IF NOT EXISTS outgoing_state ON outgoing (state)",
            """CREATE TABLE IF NOT EXISTS outgoing_instances (
                transfer_id TEXT NOT NULL REFERENCES outgoing (id),
                idx INTEGER NOT NULL,
                path TEXT NOT NULL,
                sop_uid TEXT NOT NULL,
                size BIGINT NOT NULL,
                digest TEXT NOT NULL,
                chunk_digests TEXT NOT NULL,
                acked {real},
                PRIMARY KEY (transfer_id, idx)
            ){without_rowid}""",
            """CREATE TABLE IF NOT EXISTS incoming (
                sender TEXT NOT NULL,
                transfer_id TEXT NOT NULL,
                study_uid TEXT NOT NULL,
                total INTEGER NOT NULL,
                digest TEXT NOT NULL,
                first_seen {real} NOT NULL,
                committed {real},
                receipt {blob},
                PRIMARY KEY (sender, transfer_id)
            ){without_rowid}""",
            """CREATE TABLE IF NOT EXISTS incoming_instances (
                sender TEXT NOT NULL,
                transfer_id TEXT NOT NULL,
                idx INTEGER NOT NULL,
                sop_uid TEXT NOT NULL,
                size BIGINT NOT NULL,
                digest TEXT NOT NULL,
                stored {real} NOT NULL,
                PRIMARY KEY (sender, transfer_id, idx)
            ){without_rowid}""",
            "CREATE INDEX IF NOT EXISTS incoming_digest ON incoming_instances (sender, digest)",
            """CREATE TABLE IF NOT EXISTS incoming_partials (
                sender TEXT NOT NULL,
                transfer_id TEXT NOT NULL,
                idx INTEGER NOT NULL,
                durable BIGINT NOT NULL,
                PRIMARY KEY (sender, transfer_id, idx)
            ){without_rowid}""",
            """CREATE TABLE IF NOT EXISTS store (
                study_uid TEXT NOT NULL,
                sop_uid TEXT NOT NULL,
                digest TEXT NOT NULL,
                size BIGINT NOT NULL,
                sender TEXT NOT NULL,
                transfer_id TEXT NOT NULL,
                committed {real} NOT NULL,
                PRIMARY KEY (study_uid, sop_uid)
            ){without_rowid}""",
            """CREATE TABLE IF NOT EXISTS deliveries (
                study_uid TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                queued {real} NOT NULL,
                finished {real},
                last_error TEXT
            ){without_rowid}""",
            """CREATE TABLE IF NOT EXISTS audit (
                id {serial_key},
                at {real} NOT NULL,
                org TEXT NOT NULL,
                action TEXT NOT NULL,
                transfer_id TEXT,
                detail TEXT NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        "one index of due transfers on both backends (claims look up state and next attempt)",
        (
            "DROP INDEX IF EXISTS outgoing_state",
            "CREATE INDEX outgoing_due ON outgoing (state, next_attempt)",
        ),
    ),
    Migration(
        3,
        "the audit trail names the study, patient, remote address and outcome, indexed",
        (
            AddColumn("audit", "study_uid", "TEXT"),
            AddColumn("audit", "patient_id", "TEXT"),
            AddColumn("audit", "remote", "TEXT"),
            AddColumn("audit", "outcome", "INTEGER"),
            "CREATE INDEX audit_at ON audit (at)",
            "CREATE INDEX audit_study ON audit (study_uid)",
            "CREATE INDEX audit_patient ON audit (patient_id)",
        ),
    ),
    Migration(
        4,
        "instances in a segment store: each digest's location, and the store's durable end",
        (
            # One row per digest a store holds (content-addressed: every instance
            # row with that digest shares it), keyed by the store, so several
            # nodes may share one ledger. Compaction switches a row to a new place.
            """CREATE TABLE segment_records (
                store TEXT NOT NULL,
                digest TEXT NOT NULL,
                segment BIGINT NOT NULL,
                record_offset BIGINT NOT NULL,
                length BIGINT NOT NULL,
                PRIMARY KEY (store, digest)
            ){without_rowid}""",
            "CREATE INDEX segment_records_by_segment ON segment_records (store, segment)",
            # Where each store's last durable round ended: written in the same
            # transaction as that round's rows; a store opens there.
            """CREATE TABLE segment_ends (
                store TEXT PRIMARY KEY,
                segment BIGINT NOT NULL,
                end_offset BIGINT NOT NULL
            ){without_rowid}""",
            # Retention asks which committed studies are older than N days, and
            # whether anything else still names a dropped study's digests: by
            # digest alone, which the sender-first index cannot answer (the new
            # one serves digests_from as well).
            "CREATE INDEX store_committed ON store (committed)",
            "CREATE INDEX store_digest ON store (digest)",
            "DROP INDEX IF EXISTS incoming_digest",
            "CREATE INDEX incoming_by_digest ON incoming_instances (digest, sender)",
        ),
    ),
    Migration(
        5,
        "DICOMweb: the attributes searched for, per stored blob; API tokens, hashed",
        (
            # What a stored instance says of itself (its header, as the
            # scanner reads it), keyed by its blob's digest: the store's rows
            # name the blobs, so this is what QIDO-RS searches and WADO-RS
            # finds pixel data by.
            """CREATE TABLE instance_attributes (
                digest TEXT PRIMARY KEY,
                study_uid TEXT NOT NULL,
                series_uid TEXT NOT NULL,
                sop_uid TEXT NOT NULL,
                sop_class_uid TEXT NOT NULL,
                patient_id TEXT,
                patient_name TEXT,
                accession_number TEXT,
                modality TEXT,
                study_date TEXT,
                charset TEXT,
                transfer_syntax TEXT NOT NULL,
                rows_ INTEGER,
                columns_ INTEGER,
                frames INTEGER,
                bits_allocated INTEGER,
                pixel_offset BIGINT,
                pixel_length BIGINT,
                encapsulated INTEGER NOT NULL,
                size BIGINT NOT NULL
            ){without_rowid}""",
            "CREATE INDEX instance_attributes_study ON instance_attributes (study_uid)",
            "CREATE INDEX instance_attributes_patient ON instance_attributes (patient_id)",
            "CREATE INDEX instance_attributes_accession ON instance_attributes (accession_number)",
            # (The indexer reads the store by commit time: migration 4 made that index.)
            """CREATE TABLE api_tokens (
                name TEXT PRIMARY KEY,
                token_hash TEXT NOT NULL,
                org TEXT NOT NULL,
                scope TEXT NOT NULL,
                created {real} NOT NULL,
                expires {real},
                revoked {real}
            ){without_rowid}""",
            "CREATE UNIQUE INDEX api_tokens_hash ON api_tokens (token_hash)",
        ),
    ),
    Migration(
        6,
        "the quarantine: instances held back instead of sent or stored, and why",
        (
            # One row per held instance, on either side (``direction``); the
            # row stays once released or deleted, as the record of what was done.
            """CREATE TABLE quarantine (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                direction TEXT NOT NULL,
                org TEXT NOT NULL,
                study_uid TEXT NOT NULL,
                sop_uid TEXT NOT NULL,
                patient_id TEXT,
                digest TEXT NOT NULL,
                size BIGINT NOT NULL,
                location TEXT NOT NULL,
                reason TEXT NOT NULL,
                context TEXT NOT NULL,
                held {real} NOT NULL,
                state TEXT NOT NULL,
                resolved {real},
                resolution TEXT
            ){without_rowid}""",
            "CREATE INDEX quarantine_state ON quarantine (state, held)",
            "CREATE INDEX quarantine_study ON quarantine (study_uid)",
        ),
    ),
    Migration(
        7,
        "patient links: one study each, hashed, expiring, revocable, PIN attempts counted",
        (
            """CREATE TABLE share_links (
                id TEXT PRIMARY KEY,
                token_hash TEXT NOT NULL,
                study_uid TEXT NOT NULL,
                org TEXT NOT NULL,
                created {real} NOT NULL,
                expires {real} NOT NULL,
                revoked {real},
                pin_hash TEXT,
                pin_failures INTEGER NOT NULL DEFAULT 0,
                locked {real}
            ){without_rowid}""",
            "CREATE UNIQUE INDEX share_links_hash ON share_links (token_hash)",
        ),
    ),
    Migration(
        8,
        "patient-ID reconciliation: studies held or reconciled, received digest -> stored "
        "digest, and the operator's patient mapping table",
        (
            # One row per committed transfer an inbound rule reconciles: pending
            # (committed, not yet rewritten), held (no match: an operator
            # decides), resolving (an operator named the patient), reconciled.
            """CREATE TABLE reconciliations (
                sender TEXT NOT NULL,
                transfer_id TEXT NOT NULL,
                study_uid TEXT NOT NULL,
                state TEXT NOT NULL,
                priority TEXT NOT NULL,
                rule TEXT,
                foreign_patient_id TEXT,
                foreign_issuer TEXT,
                local_patient_id TEXT,
                local_issuer TEXT,
                reason TEXT,
                updated {real} NOT NULL,
                PRIMARY KEY (sender, transfer_id)
            ){without_rowid}""",
            "CREATE INDEX reconciliations_state ON reconciliations (state)",
            "CREATE INDEX reconciliations_study ON reconciliations (study_uid)",
            # What was received (the receipt's digest) and what the store holds
            # in its place, the rewritten instance.
            """CREATE TABLE reconciled_instances (
                sender TEXT NOT NULL,
                transfer_id TEXT NOT NULL,
                received_digest TEXT NOT NULL,
                reconciled_digest TEXT NOT NULL,
                study_uid TEXT NOT NULL,
                sop_uid TEXT NOT NULL,
                size BIGINT NOT NULL,
                reconciled {real} NOT NULL,
                PRIMARY KEY (sender, transfer_id, received_digest)
            ){without_rowid}""",
            "CREATE INDEX reconciled_by_digest ON reconciled_instances (reconciled_digest)",
            # A mapping the operator may fill (or replace by a view): the CSV
            # file's columns. A rule names it with table = "patient_mapping".
            """CREATE TABLE patient_mapping (
                local_patient_id TEXT NOT NULL,
                local_issuer TEXT,
                nhs_number TEXT,
                sender TEXT,
                issuer TEXT,
                patient_id TEXT
            )""",
            "CREATE INDEX patient_mapping_nhs ON patient_mapping (nhs_number)",
            "CREATE INDEX patient_mapping_id ON patient_mapping (patient_id)",
        ),
    ),
    Migration(
        9,
        "an outgoing instance spooled from the store (a de-identified copy) names its origin, "
        "the stored digest, so that retention drops the original once it is sent",
        (
            AddColumn("outgoing_instances", "origin", "TEXT"),
            "CREATE INDEX outgoing_instances_origin ON outgoing_instances (origin)",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version

VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied {real} NOT NULL
)"""


def migrate(dialect: Dialect) -> Work[list[int]]:
    """Apply the migrations the ledger lacks; the versions applied. Run as one
    transaction, by one opener at a time (the drivers see to that)."""
    sql = dialect.render
    yield Query(sql(VERSION_TABLE))
    have = int((yield Query("SELECT coalesce(max(version), 0) FROM schema_version")).scalar())
    # A ledger migrated by a newer release is used as it is: its migrations
    # only ever add, so a worker not yet upgraded keeps working beside it.
    applied: list[int] = []
    for migration in MIGRATIONS[have:]:
        for step in migration.steps:
            if isinstance(step, AddColumn):
                columns = (yield Query(sql("{columns_of_table}"), (step.table,))).rows
                if step.column not in {c[0] for c in columns}:
                    yield Query(
                        sql(f"ALTER TABLE {step.table} ADD COLUMN {step.column} {step.definition}")
                    )
            else:
                yield Query(sql(step))
        yield Query(
            sql("INSERT INTO schema_version (version, description, applied) VALUES (?, ?, ?)"),
            (migration.version, migration.description, time.time()),
        )
        applied.append(migration.version)
    return applied
