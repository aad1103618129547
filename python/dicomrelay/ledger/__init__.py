"""The ledger: every transfer, instance, attempt and receipt, durable.

``Ledger`` is the interface the engine uses; ``SqliteLedger`` the embedded
default. Nothing outside this package may assume which backend is in use.
"""

from dicomrelay.ledger.base import (
    IncomingInstance,
    IncomingTransfer,
    Ledger,
    OutgoingInstance,
    OutgoingTransfer,
    TransferState,
)
from dicomrelay.ledger.sqlite import SqliteLedger

__all__ = [
    "IncomingInstance",
    "IncomingTransfer",
    "Ledger",
    "OutgoingInstance",
    "OutgoingTransfer",
    "SqliteLedger",
    "TransferState",
]
