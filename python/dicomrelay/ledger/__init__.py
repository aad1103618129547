"""The ledger: every transfer, instance, attempt and receipt, durable.

``Ledger`` is the interface the engine uses; ``SqliteLedger`` the embedded
default, ``dicomrelay.ledger.postgres.PostgresLedger`` the shared one (for
several workers or machines); ``open_ledger`` opens the one a node is
configured with. Nothing outside this package may assume which backend is in use.
"""

from __future__ import annotations

from pathlib import Path

from dicomrelay.errors import ConfigurationError
from dicomrelay.ledger.base import (
    IncomingInstance,
    IncomingTransfer,
    Ledger,
    OutgoingInstance,
    OutgoingTransfer,
    TransferState,
)
from dicomrelay.ledger.sqlite import SqliteLedger

POSTGRES_SCHEMES = ("postgresql://", "postgres://")

__all__ = [
    "POSTGRES_SCHEMES",
    "IncomingInstance",
    "IncomingTransfer",
    "Ledger",
    "OutgoingInstance",
    "OutgoingTransfer",
    "SqliteLedger",
    "TransferState",
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
