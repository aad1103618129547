"""The events ``dicomrelay send`` tells while another process sends its
transfer, from successive readings of the transfer's row: none missed, even
when one reading spans whole attempts."""

from __future__ import annotations

import dataclasses

from dicomrelay.follow import changes
from dicomrelay.ledger import OutgoingTransfer, TransferState
from dicomrelay.transfer import EventKind

QUEUED = OutgoingTransfer(
    id="t" * 32,
    destination="RX2",
    study_instance_uid="1.2.3",
    priority="routine",
    digest="sha256",
    chunk_size=1 << 20,
    state=TransferState.QUEUED,
    attempts=0,
    next_attempt=0.0,
    created=0.0,
    total=3,
)
S, V, R, C, F = (
    EventKind.STARTED,
    EventKind.VERIFIED,
    EventKind.RETRYING,
    EventKind.COMMITTED,
    EventKind.FAILED,
)


def later(**changed: object) -> OutgoingTransfer:
    return dataclasses.replace(QUEUED, **changed)  # type: ignore[arg-type]


def kinds(before: OutgoingTransfer, now: OutgoingTransfer) -> list[EventKind]:
    return [e.kind for e in changes(before, now)]


def test_a_whole_transfer_between_two_readings() -> None:
    done = later(state=TransferState.DONE, acked=3)
    assert kinds(QUEUED, done) == [S, V, V, V, C]


def test_an_attempt_under_way_then_more_instances() -> None:
    running = later(state=TransferState.ACTIVE, acked=1)
    assert kinds(QUEUED, running) == [S, V]
    assert kinds(running, later(state=TransferState.ACTIVE, acked=2)) == [V]


def test_retries_each_told_with_the_reason() -> None:
    running = later(state=TransferState.ACTIVE)
    again = later(state=TransferState.ACTIVE, attempts=2, last_error="OSError: refused")
    events = changes(running, again)
    assert [e.kind for e in events] == [R, S, R, S]
    assert {e.detail for e in events if e.kind is R} == {"OSError: refused"}
    waiting = later(state=TransferState.QUEUED, attempts=1, last_error="x")
    assert kinds(QUEUED, waiting) == [S, R]


def test_a_dead_letter_ends_the_story() -> None:
    dead = later(state=TransferState.DEAD, attempts=2, last_error="refused for good")
    assert kinds(QUEUED, dead) == [S, R, S, F]
    assert changes(QUEUED, dead)[-1].detail == "refused for good"
    assert kinds(
        later(state=TransferState.ACTIVE), later(state=TransferState.DEAD, attempts=1)
    ) == [F]
