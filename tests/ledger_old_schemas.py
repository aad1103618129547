"""The ledger's tables as earlier releases created them, verbatim (from the
project's history): what the migrations must bring up to date."""

from __future__ import annotations

# The first release (SQLite only): no claims, partials, deliveries or digest index.
SQLITE_FIRST_RELEASE = """
CREATE TABLE IF NOT EXISTS outgoing (
    id TEXT PRIMARY KEY,
    destination TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    priority TEXT NOT NULL,
    digest TEXT NOT NULL,
    chunk_size INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    total INTEGER NOT NULL,
    last_error TEXT,
    receipt BLOB
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
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    org TEXT NOT NULL,
    action TEXT NOT NULL,
    transfer_id TEXT,
    detail TEXT NOT NULL
);
"""

# With claims and PostgreSQL, before the retry budget (attempts_without_progress).
SQLITE_BEFORE_RETRY_BUDGET = """
CREATE TABLE IF NOT EXISTS outgoing (
    id TEXT PRIMARY KEY,
    destination TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    priority TEXT NOT NULL,
    digest TEXT NOT NULL,
    chunk_size INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
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

# The last release before numbered migrations.
SQLITE_LAST_UNNUMBERED = """
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

POSTGRES_BEFORE_RETRY_BUDGET = (
    """CREATE TABLE IF NOT EXISTS outgoing (
        id TEXT PRIMARY KEY,
        destination TEXT NOT NULL,
        study_uid TEXT NOT NULL,
        priority TEXT NOT NULL,
        digest TEXT NOT NULL,
        chunk_size INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt DOUBLE PRECISION NOT NULL DEFAULT 0,
        created DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL,
        total INTEGER NOT NULL,
        last_error TEXT,
        receipt BYTEA,
        claimed_by TEXT,
        lease_until DOUBLE PRECISION
    )""",
    """CREATE INDEX IF NOT EXISTS outgoing_state ON outgoing (state, next_attempt)""",
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
    """CREATE INDEX IF NOT EXISTS incoming_digest ON incoming_instances (sender, digest)""",
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
)

POSTGRES_LAST_UNNUMBERED = (
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
    """CREATE INDEX IF NOT EXISTS outgoing_state ON outgoing (state, next_attempt)""",
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
    """CREATE INDEX IF NOT EXISTS incoming_digest ON incoming_instances (sender, digest)""",
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
    """DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM information_schema.columns
            WHERE table_schema = current_schema() AND table_name = 'outgoing'
            AND column_name = 'attempts_without_progress') THEN
            ALTER TABLE outgoing ADD COLUMN attempts_without_progress INTEGER NOT NULL DEFAULT 0;
        END IF;
    END $$""",
)
