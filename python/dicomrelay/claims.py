"""Sending work shared by the workers (processes or machines) of one ledger:
each holds leases on the transfers it claimed, renews them while it works,
and gives each back after its attempt. A worker that dies stops renewing;
once its leases run out, another worker claims those transfers and resumes
them from what the receiver already holds. Every node is such a worker: a
serving node and a ``dicomrelay send`` that sends its transfer itself share
one ledger this way.

A worker may lose a lease it still uses (it stalled past the lease, and
another worker took the transfer over): ``renew`` reports those so that the
node stops their attempts. Even when two attempts overlap, the receiver
stores nothing twice and returns one receipt.
"""

from __future__ import annotations

from dicomrelay.ledger import Ledger, OutgoingTransfer


def renew_interval(lease_seconds: float, poll_seconds: float) -> float:
    """How often a worker renews: well within the lease, and at least as often as
    it polls for work."""
    return min(poll_seconds, lease_seconds / 3)


class Leases:
    """One worker's claims on a shared ledger's outgoing transfers."""

    def __init__(
        self,
        ledger: Ledger,
        worker: str,
        *,
        lease_seconds: float,
        budget: int,
        only: set[str] | None = None,
    ) -> None:
        """``only``: claim none but these transfers (it may grow); None: any."""
        self.ledger = ledger
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.budget = budget  # transfers held at once, queued here or running
        self.only = only
        self.held: set[str] = set()

    async def claim(self, now: float) -> list[OutgoingTransfer]:
        """Claim due transfers (any worker's, the most urgent first) up to the budget."""
        room = self.budget - len(self.held)
        wanted = None if self.only is None else sorted(self.only - self.held)
        if room <= 0 or wanted == []:
            return []
        claimed = await self.ledger.claim_outgoing(
            self.worker, now=now, lease_seconds=self.lease_seconds, limit=room, only=wanted
        )
        self.held.update(t.id for t in claimed)
        return claimed

    async def renew(self, now: float) -> set[str]:
        """Extend every lease held; returns the transfers whose leases were lost."""
        asked = set(self.held)
        if not asked:
            return set()
        kept = await self.ledger.renew_lease(
            self.worker, sorted(asked), now=now, lease_seconds=self.lease_seconds
        )
        lost = (asked & self.held) - kept  # one released meanwhile is not lost
        self.held -= lost
        return lost

    async def release(self, transfer_id: str) -> None:
        """Give a transfer back after an attempt (one cut short is queued
        again): any worker may claim it once it is due."""
        if transfer_id in self.held:
            self.held.discard(transfer_id)
            await self.ledger.release_claim(self.worker, transfer_id)
