"""Scheduling decisions as pure functions of state: which transfers start now,
when to look again, and what a failure does to a transfer. The node performs
what these return."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dicomrelay.ledger import OutgoingTransfer, TransferState

PRIORITY_RANK = {"urgent": 0, "routine": 1, "bulk": 2}


@dataclass(frozen=True, kw_only=True, slots=True)
class Candidate:
    """A queued transfer, as the scheduler sees it."""

    id: str
    destination: str
    priority: str
    created: float
    next_attempt: float

    @classmethod
    def of(cls, t: OutgoingTransfer, *, next_attempt: float) -> Candidate:
        """A transfer from the ledger, due at ``next_attempt``."""
        return cls(
            id=t.id,
            destination=t.destination,
            priority=t.priority,
            created=t.created,
            next_attempt=next_attempt,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    start: tuple[str, ...]
    wake_at: float | None  # the earliest future retry, if any is waiting


def plan(queued: Iterable[Candidate], active: Mapping[str, int], limit: int, now: float) -> Plan:
    """Start the most urgent, oldest due transfers that fit their destination's limit.

    Urgent work overtakes everything queued, and has one slot beyond the limit
    so it never waits behind a destination full of routine transfers. A
    destination at its limit holds back only its own transfers.
    """
    running = dict(active)
    start: list[str] = []
    wake_at: float | None = None
    for c in sorted(queued, key=lambda c: (PRIORITY_RANK[c.priority], c.created, c.id)):
        if c.next_attempt > now:
            wake_at = c.next_attempt if wake_at is None else min(wake_at, c.next_attempt)
            continue
        cap = limit + 1 if c.priority == "urgent" else limit
        if running.get(c.destination, 0) < cap:
            running[c.destination] = running.get(c.destination, 0) + 1
            start.append(c.id)
    return Plan(start=tuple(start), wake_at=wake_at)


def retry_delay(attempt: int, *, base: float, cap: float, unit: float) -> float:
    """Exponential backoff with equal jitter: half the step fixed, half random.

    ``attempt`` counts failures so far (1 for the first); ``unit`` is uniform in [0, 1).
    """
    step = min(cap, base * 2.0 ** max(0, attempt - 1))
    return step / 2 + unit * step / 2


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    state: TransferState
    attempts: int
    attempts_without_progress: int
    next_attempt: float


def after_failure(
    *,
    attempts: int,
    attempts_without_progress: int,
    progressed: bool,
    retriable: bool,
    max_attempts: int,
    now: float,
    base: float,
    cap: float,
    unit: float,
) -> Outcome:
    """A failed attempt: queue the transfer again after a backoff, or make it a
    dead letter when the failure will not go away or ``max_attempts`` attempts
    in a row delivered nothing. An attempt that delivered instances (the
    receiver restarting mid-study, a flaky link) spends none of that budget and
    is retried after the shortest backoff."""
    attempts += 1
    without = 0 if progressed else attempts_without_progress + 1
    if not retriable or without >= max_attempts:
        return Outcome(
            state=TransferState.DEAD,
            attempts=attempts,
            attempts_without_progress=without,
            next_attempt=now,
        )
    delay = retry_delay(max(1, without), base=base, cap=cap, unit=unit)
    return Outcome(
        state=TransferState.QUEUED,
        attempts=attempts,
        attempts_without_progress=without,
        next_attempt=now + delay,
    )
