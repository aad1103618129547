"""The ledger: every transfer, instance, attempt and receipt, durable.

``Ledger`` is the interface the engine uses. One implementation
(``ledger.py``) runs the same statements (``statements.py``) and migrations
(``migrations.py``) on either backend, their SQL differing only where
``dialect.py`` says: ``SqliteLedger`` the embedded default,
``dicomrelay.ledger.postgres.PostgresLedger`` the shared one (for several
workers or machines), ``memory_ledger()`` SQLite in memory, for tests.
``open_ledger`` opens the one a node is configured with. Nothing outside this
package may assume which backend is in use.
"""

from __future__ import annotations

from pathlib import Path

from dicomrelay.errors import ConfigurationError
from dicomrelay.ledger.base import (
    AfterCommit,
    IncomingInstance,
    IncomingTransfer,
    Ledger,
    Location,
    OutgoingInstance,
    OutgoingTransfer,
    TransferState,
)
from dicomrelay.ledger.quarantine import HeldInstance, HoldState
from dicomrelay.ledger.sqlite import SqliteLedger, memory_ledger

POSTGRES_SCHEMES = ("postgresql://", "postgres://")

__all__ = [
    "POSTGRES_SCHEMES",
    "AfterCommit",
    "HeldInstance",
    "HoldState",
    "IncomingInstance",
    "IncomingTransfer",
    "Ledger",
    "Location",
    "OutgoingInstance",
    "OutgoingTransfer",
    "SqliteLedger",
    "TransferState",
    "memory_ledger",
    "open_ledger",
]


async def open_ledger(url: str | None, *, data_dir: Path, schema: str = "dicomrelay") -> Ledger:
    """``url`` None: SQLite in ``data_dir/ledger.sqlite``; a ``postgresql://``
    URL: PostgreSQL, its tables in ``schema`` (created if missing)."""
    if url is None:
        return SqliteLedger(data_dir / "ledger.sqlite")
    if url.startswith(POSTGRES_SCHEMES):
        # Imported here: psycopg is needed only by nodes that use PostgreSQL.
        from dicomrelay.ledger.postgres import PostgresLedger

        return await PostgresLedger.open(url, schema=schema)
    raise ConfigurationError(f"a ledger URL starts with postgresql://, not {url.split(':')[0]!r}")
