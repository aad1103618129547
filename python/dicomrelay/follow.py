"""Following a transfer that another process sends (``dicomrelay send`` beside
a serving node): its events, told from the ledger's record of it.

Whoever sends the transfer, on this machine or another worker's, writes its
progress to the ledger; reading its one row a few times a second is how a
waiting ``send`` sees it, without a channel to each possible sender.
"""

from __future__ import annotations

import time

from dicomrelay.ledger import Ledger, OutgoingTransfer, TransferState
from dicomrelay.transfer import Event, EventKind, UnknownTransfer


def changes(before: OutgoingTransfer | None, now: OutgoingTransfer) -> list[Event]:
    """The events between two readings of a transfer's row: each attempt begun
    (a reading can miss a whole attempt), each failed one, the instances the
    receiver came to hold, and how it ended."""
    tid = now.id
    events: list[Event] = []
    was_running = before is not None and before.state is TransferState.ACTIVE
    failed = now.attempts - (0 if before is None else before.attempts)
    for n in range(failed):
        if n or not was_running:
            events.append(Event(kind=EventKind.STARTED, transfer_id=tid))
        dead = n == failed - 1 and now.state is TransferState.DEAD
        kind = EventKind.FAILED if dead else EventKind.RETRYING
        events.append(Event(kind=kind, transfer_id=tid, detail=now.last_error or ""))
    if now.state in (TransferState.ACTIVE, TransferState.DONE) and (failed or not was_running):
        events.append(Event(kind=EventKind.STARTED, transfer_id=tid, detail=now.claimed_by or ""))
    acked_before = 0 if before is None else before.acked
    events.extend(
        Event(kind=EventKind.VERIFIED, transfer_id=tid) for _ in range(now.acked - acked_before)
    )
    if now.state is TransferState.DONE:
        events.append(Event(kind=EventKind.COMMITTED, transfer_id=tid))
    elif now.state is TransferState.DEAD and not failed:
        events.append(Event(kind=EventKind.FAILED, transfer_id=tid, detail=now.last_error or ""))
    return events


class Follower:
    """Reads a transfer's row when asked, and says what changed since the last reading."""

    def __init__(self, ledger: Ledger, transfer: OutgoingTransfer) -> None:
        self.ledger = ledger
        self.row = transfer  # as queued: its queued event is the caller's to tell
        self._waiting_since: float | None = None

    @property
    def finished(self) -> bool:
        return self.row.state in (TransferState.DONE, TransferState.DEAD)

    async def poll(self) -> list[Event]:
        row = await self.ledger.outgoing(self.row.id)
        if row is None:
            raise UnknownTransfer(f"transfer {self.row.id} is no longer in the ledger")
        events = changes(self.row, row)
        self.row = row
        return events

    def unattended_for(self, now: float | None = None) -> float:
        """Seconds the transfer has been due with no worker holding it (queued
        and unclaimed, or its holder's lease run out): a sign that no node is
        there to send it."""
        now = time.time() if now is None else now
        t = self.row
        idle = (t.state is TransferState.QUEUED and t.claimed_by is None) or (
            t.lease_until is not None and t.lease_until < now
        )
        if self.finished or not idle or t.next_attempt > now:
            self._waiting_since = None
            return 0.0
        if self._waiting_since is None:
            self._waiting_since = now
        return now - self._waiting_since
