"""The ledger's tables, in each dialect: the same tables and columns in both
(SQLite's REAL is PostgreSQL's double precision, BLOB its BYTEA)."""

from __future__ import annotations

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS outgoing (
    id TEXT PRIMARY KEY,
    destination TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    priority TEXT NOT NULL,
    digest TEXT NOT NULL,
    chunk_size INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    attempts_without_progress INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    total INTEGER NOT NULL,
    last_error TEXT,
    receipt BLOB,
    claimed_by TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS outgoing_state ON outgoing (state);
CREATE TABLE IF NOT EXISTS outgoing_instances (
    transfer_id TEXT NOT NULL REFERENCES outgoing (id),
    idx INTEGER NOT NULL,
    path TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    size INTEGER NOT NULL,
    digest TEXT NOT NULL,
    chunk_digests TEXT NOT NULL,
    acked REAL,
    PRIMARY KEY (transfer_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS incoming (
    sender TEXT NOT NULL,
    transfer_id TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    total INTEGER NOT NULL,
    digest TEXT NOT NULL,
    first_seen REAL NOT NULL,
    committed REAL,
    receipt BLOB,
    PRIMARY KEY (sender, transfer_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS incoming_instances (
    sender TEXT NOT NULL,
    transfer_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    sop_uid TEXT NOT NULL,
    size INTEGER NOT NULL,
    digest TEXT NOT NULL,
    stored REAL NOT NULL,
    PRIMARY KEY (sender, transfer_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS incoming_digest ON incoming_instances (sender, digest);
CREATE TABLE IF NOT EXISTS incoming_partials (
    sender TEXT NOT NULL,
    transfer_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    durable INTEGER NOT NULL,
    PRIMARY KEY (sender, transfer_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS store (
    study_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    sender TEXT NOT NULL,
    transfer_id TEXT NOT NULL,
    committed REAL NOT NULL,
    PRIMARY KEY (study_uid, sop_uid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    queued REAL NOT NULL,
    finished REAL,
    last_error TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    org TEXT NOT NULL,
    action TEXT NOT NULL,
    transfer_id TEXT,
    detail TEXT NOT NULL
);
"""

# Columns added since the first release: (table, column, type) for older files.
SQLITE_ADDED_COLUMNS = (
    ("outgoing", "claimed_by", "TEXT"),
    ("outgoing", "lease_until", "REAL"),
    ("outgoing", "attempts_without_progress", "INTEGER NOT NULL DEFAULT 0"),
)


# Times are seconds since the epoch, as double precision (SQLite's REAL), so a
# stamp handed out (add_delivery) compares equal when it comes back.
POSTGRES_SCHEMA = (
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
        next_attempt DOUBLE PRECISION NOT NULL DEFAULT 0,
        created DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL,
        total INTEGER NOT NULL,
        last_error TEXT,
        receipt BYTEA,
        claimed_by TEXT,
        lease_until DOUBLE PRECISION
    )""",
    "CREATE INDEX IF NOT EXISTS outgoing_state ON outgoing (state, next_attempt)",
    """CREATE TABLE IF NOT EXISTS outgoing_instances (
        transfer_id TEXT NOT NULL REFERENCES outgoing (id),
        idx INTEGER NOT NULL,
        path TEXT NOT NULL,
        sop_uid TEXT NOT NULL,
        size BIGINT NOT NULL,
        digest TEXT NOT NULL,
        chunk_digests TEXT NOT NULL,
        acked DOUBLE PRECISION,
        PRIMARY KEY (transfer_id, idx)
    )""",
    """CREATE TABLE IF NOT EXISTS incoming (
        sender TEXT NOT NULL,
        transfer_id TEXT NOT NULL,
        study_uid TEXT NOT NULL,
        total INTEGER NOT NULL,
        digest TEXT NOT NULL,
        first_seen DOUBLE PRECISION NOT NULL,
        committed DOUBLE PRECISION,
        receipt BYTEA,
        PRIMARY KEY (sender, transfer_id)
    )""",
    """CREATE TABLE IF NOT EXISTS incoming_instances (
        sender TEXT NOT NULL,
        transfer_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        sop_uid TEXT NOT NULL,
        size BIGINT NOT NULL,
        digest TEXT NOT NULL,
        stored DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (sender, transfer_id, idx)
    )""",
    "CREATE INDEX IF NOT EXISTS incoming_digest ON incoming_instances (sender, digest)",
    """CREATE TABLE IF NOT EXISTS incoming_partials (
        sender TEXT NOT NULL,
        transfer_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        durable BIGINT NOT NULL,
        PRIMARY KEY (sender, transfer_id, idx)
    )""",
    """CREATE TABLE IF NOT EXISTS store (
        study_uid TEXT NOT NULL,
        sop_uid TEXT NOT NULL,
        digest TEXT NOT NULL,
        size BIGINT NOT NULL,
        sender TEXT NOT NULL,
        transfer_id TEXT NOT NULL,
        committed DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (study_uid, sop_uid)
    )""",
    """CREATE TABLE IF NOT EXISTS deliveries (
        study_uid TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        queued DOUBLE PRECISION NOT NULL,
        finished DOUBLE PRECISION,
        last_error TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS audit (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        org TEXT NOT NULL,
        action TEXT NOT NULL,
        transfer_id TEXT,
        detail TEXT NOT NULL
    )""",
    # Columns added since the first release, for older schemas (looked up
    # first: ALTER TABLE locks the table even when there is nothing to add).
    """DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM information_schema.columns
            WHERE table_schema = current_schema() AND table_name = 'outgoing'
            AND column_name = 'attempts_without_progress') THEN
            ALTER TABLE outgoing ADD COLUMN attempts_without_progress INTEGER NOT NULL DEFAULT 0;
        END IF;
    END $$""",
)
