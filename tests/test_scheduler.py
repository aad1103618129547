"""The scheduler's decisions, as pure functions: no clock, no I/O."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dicomrelay.ledger import TransferState
from dicomrelay.scheduler import Candidate, after_failure, plan, retry_delay


def cand(id_: str, dest: str = "RX2", priority: str = "routine", created: float = 0.0,
         next_attempt: float = 0.0) -> Candidate:  # fmt: skip
    return Candidate(
        id=id_, destination=dest, priority=priority, created=created, next_attempt=next_attempt
    )


def test_urgent_overtakes_older_routine_and_bulk() -> None:
    queued = [
        cand("bulk", priority="bulk", created=1),
        cand("routine", created=2),
        cand("urgent", priority="urgent", created=3),
    ]
    assert plan(queued, {}, limit=2, now=10).start == ("urgent", "routine")
    assert plan(queued, {}, limit=1, now=10).start == ("urgent",)


def test_a_full_destination_holds_back_only_its_own_transfers() -> None:
    queued = [cand("a1", "A", created=1), cand("b1", "B", created=2)]
    decision = plan(queued, {"A": 2}, limit=2, now=10)
    assert decision.start == ("b1",)


def test_urgent_has_a_lane_beyond_the_limit() -> None:
    queued = [cand("r", created=1), cand("u", priority="urgent", created=2)]
    assert plan(queued, {"RX2": 2}, limit=2, now=10).start == ("u",)


def test_future_retries_wait_and_set_the_wake_time() -> None:
    queued = [cand("later", next_attempt=50), cand("sooner", next_attempt=20), cand("now")]
    decision = plan(queued, {}, limit=5, now=10)
    assert decision.start == ("now",)
    assert decision.wake_at == 20


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    assert retry_delay(1, base=1, cap=100, unit=0.0) == 0.5
    assert retry_delay(1, base=1, cap=100, unit=0.999) < 1.0
    assert retry_delay(4, base=1, cap=100, unit=0.0) == 4.0
    assert retry_delay(30, base=1, cap=100, unit=0.999) <= 100


@given(
    attempts=st.integers(0, 20),
    without=st.integers(0, 20),
    progressed=st.booleans(),
    retriable=st.booleans(),
    max_attempts=st.integers(1, 10),
    unit=st.floats(0, 0.999999),
)
def test_failure_requeues_with_a_later_attempt_or_dead_letters(
    attempts: int, without: int, progressed: bool, retriable: bool, max_attempts: int, unit: float
) -> None:
    out = after_failure(
        attempts=attempts,
        attempts_without_progress=without,
        progressed=progressed,
        retriable=retriable,
        max_attempts=max_attempts,
        now=1000.0,
        base=0.5,
        cap=60,
        unit=unit,
    )
    assert out.attempts == attempts + 1
    expected_without = 0 if progressed else without + 1
    assert out.attempts_without_progress == expected_without
    if not retriable or expected_without >= max_attempts:
        assert out.state is TransferState.DEAD
    else:
        assert out.state is TransferState.QUEUED
        assert 1000.0 < out.next_attempt <= 1060.0


def test_only_attempts_without_progress_spend_the_budget() -> None:
    """Eight failures in a row that each delivered something never dead-letter
    (a receiver restarted eight times mid-study); the budget counts the
    fruitless ones since the last that delivered, and progress starts it again."""
    common = {"retriable": True, "max_attempts": 3, "now": 0.0, "base": 1.0, "cap": 8.0}
    attempts, without = 0, 0
    for _ in range(8):
        out = after_failure(
            attempts=attempts, attempts_without_progress=without, progressed=True, unit=0.0,
            **common,  # type: ignore[arg-type]
        )  # fmt: skip
        attempts, without = out.attempts, out.attempts_without_progress
        assert (out.state, without, out.next_attempt) == (TransferState.QUEUED, 0, 0.5)
    states = []
    for _ in range(3):
        out = after_failure(
            attempts=attempts, attempts_without_progress=without, progressed=False, unit=0.0,
            **common,  # type: ignore[arg-type]
        )  # fmt: skip
        attempts, without = out.attempts, out.attempts_without_progress
        states.append((out.state, without))
    assert states == [
        (TransferState.QUEUED, 1),
        (TransferState.QUEUED, 2),
        (TransferState.DEAD, 3),
    ]
    assert attempts == 11


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["A", "B", "C"]),
            st.sampled_from(["urgent", "routine", "bulk"]),
            st.floats(0, 100),
            st.floats(0, 100),
        ),
        max_size=30,
    ),
    st.integers(1, 4),
    st.dictionaries(st.sampled_from(["A", "B", "C"]), st.integers(0, 6)),
)
def test_plan_fills_each_destination_exactly_to_its_limit(
    rows: list[tuple[str, str, float, float]], limit: int, active: dict[str, int]
) -> None:
    """Routine and bulk work fills a destination up to its limit and no further;
    urgent work alone may take the one slot beyond it; and nothing due is left
    waiting while its destination has room for it."""
    queued = [cand(f"t{i}", d, p, c, n) for i, (d, p, c, n) in enumerate(rows)]
    by_id = {c.id: c for c in queued}
    decision = plan(queued, active, limit=limit, now=50)
    started = [by_id[tid] for tid in decision.start]
    assert len(set(decision.start)) == len(started)
    assert all(c.next_attempt <= 50 for c in started)
    for dest in ("A", "B", "C"):
        mine = [c for c in started if c.destination == dest]
        running = active.get(dest, 0) + len(mine)
        if any(c.priority != "urgent" for c in mine):
            assert running <= limit, (dest, running)
        elif mine:
            assert running <= limit + 1, (dest, running)
        for c in queued:
            if c.destination == dest and c.next_attempt <= 50 and c not in started:
                room = limit + 1 if c.priority == "urgent" else limit
                assert running >= room, f"{c.id} left waiting with room at {dest}"
