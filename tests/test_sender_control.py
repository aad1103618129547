"""The sending side's decisions, frame by frame, without a socket."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomrelay.errors import PolicyRefused, ProtocolError
from dicomrelay.ledger import OutgoingInstance, OutgoingTransfer, TransferState
from dicomrelay.protocol import Ack, Failure, Have, Kind, Nack, Offer
from dicomrelay.sender_control import (
    MAX_RESENDS,
    Acknowledged,
    AttemptFailed,
    Effect,
    Finished,
    SenderControl,
    SendFrame,
    StreamInstance,
)
from dicomrelay.transfer import RefusedByReceiver, TransferFailed, failure_reason, transfer_failed

TRANSFER_ID = "ab" * 16
CHUNK = 1000


def transfer(total: int) -> OutgoingTransfer:
    return OutgoingTransfer(
        id=TRANSFER_ID,
        destination="RX2",
        study_instance_uid="1.2.3",
        priority="routine",
        digest="sha256",
        chunk_size=CHUNK,
        state=TransferState.ACTIVE,
        attempts=0,
        next_attempt=0.0,
        created=0.0,
        total=total,
    )


def instances(*sizes: int) -> list[OutgoingInstance]:
    return [
        OutgoingInstance(
            index=n,
            path=f"/src/{n}.dcm",
            sop_instance_uid=f"1.2.3.{n}",
            size=size,
            digest=f"{n:064x}",
            chunk_digests=tuple(f"{c:064x}" for c in range(-(-size // CHUNK))),
        )
        for n, size in enumerate(sizes)
    ]


def control(
    sizes: list[int], *, batch: int = 2, window: int = 10**9, now: float = 0.0
) -> SenderControl:
    return SenderControl(
        transfer(len(sizes)), instances(*sizes), offer_batch=batch, window_bytes=window, now=now
    )


def offers(effects: list[Effect]) -> list[list[int]]:
    """The slots of each OFFER among ``effects``."""
    return [
        [i.slot for i in Offer.parse(e.payload).instances]
        for e in effects
        if isinstance(e, SendFrame) and e.kind is Kind.OFFER
    ]


def streams(effects: list[Effect]) -> list[tuple[int, int]]:
    return [(e.slot, e.start) for e in effects if isinstance(e, StreamInstance)]


def have(offsets: dict[int, int], receipt: bytes | None = None) -> bytes:
    return Have(transfer_id=TRANSFER_ID, offsets=offsets, receipt=receipt).payload()


def ack(*slots: int) -> bytes:
    return Ack(stored=tuple((s, 1.0) for s in slots)).payload()


def test_one_offer_is_kept_ahead_of_the_batch_being_streamed() -> None:
    c = control([10] * 6, batch=2)
    assert offers(c.effects(0)) == [[0, 1], [2, 3]]
    assert c.effects(0) == []  # nothing streams before its HAVE
    c.receive(Kind.HAVE, have({}), 1)
    first = c.effects(1)
    assert streams(first) == [(0, 0), (1, 0)]
    assert offers(first) == []  # two batches still open: the one streaming, the one offered
    assert offers(c.effects(1)) == [[4, 5]]  # batch 0 handed out: the next goes ahead
    c.receive(Kind.HAVE, have({}), 2)
    assert streams(c.effects(2)) == [(2, 0), (3, 0)]


def test_have_trims_what_the_receiver_holds() -> None:
    c = control([2500, 2500, 2500], batch=3)
    c.effects(0)
    c.receive(Kind.HAVE, have({0: 2500, 1: 1700}), 1)
    effects = c.effects(1)
    # Held whole: acknowledged at once; held in part: resumed from its chunk boundary.
    assert [e for e in effects if isinstance(e, Acknowledged)] == [Acknowledged(((0, 0.0),))]
    assert streams(effects) == [(1, 1000), (2, 0)]
    assert c.in_flight == 1500 + 2500


def test_the_window_holds_back_instances_until_acknowledgements() -> None:
    c = control([600, 600, 600, 1500], batch=4, window=1000)
    c.effects(0)
    c.receive(Kind.HAVE, have({}), 0)
    assert streams(c.effects(0)) == [(0, 0)]  # a second 600 would pass 1000
    assert c.effects(0) == []
    c.receive(Kind.ACK, ack(0), 1)
    assert streams(c.effects(1)) == [(1, 0)]
    c.receive(Kind.ACK, ack(1), 2)
    assert streams(c.effects(2)) == [(2, 0)]
    c.receive(Kind.ACK, ack(2), 3)
    # Larger than the window: it goes out whole, alone.
    assert streams(c.effects(3)) == [(3, 0)]


def test_acknowledgements_carry_latency_from_the_first_byte() -> None:
    c = control([10, 10], batch=2)
    c.effects(0)
    c.receive(Kind.HAVE, have({}), 5.0)
    c.effects(5.0)
    c.receive(Kind.ACK, ack(1, 0), 7.5)
    assert c.effects(7.5)[0] == Acknowledged(((1, 2.5), (0, 2.5)))


def test_commit_once_after_every_acknowledgement_then_the_receipt() -> None:
    c = control([10, 10], batch=1)
    c.effects(0)
    c.receive(Kind.HAVE, have({}), 0)
    c.effects(0)
    c.receive(Kind.HAVE, have({}), 0)
    c.effects(0)
    c.receive(Kind.ACK, ack(0), 1)
    assert not [e for e in c.effects(1) if isinstance(e, SendFrame)]
    c.receive(Kind.ACK, ack(1), 2)
    effects = c.effects(2)
    assert effects[-1] == SendFrame(Kind.COMMIT, effects[-1].payload)  # type: ignore[union-attr]
    assert c.effects(2) == []  # COMMIT goes once
    c.receive(Kind.RECEIPT, b'{"receipt": 1}', 3)
    assert c.effects(3) == [Finished(b'{"receipt": 1}')]
    assert c.finished
    assert c.effects(4) == []


def test_nothing_left_to_send_commits_at_once() -> None:
    c = control([])
    (commit,) = c.effects(0)
    assert isinstance(commit, SendFrame)
    assert commit.kind is Kind.COMMIT


def test_a_committed_transfer_finishes_from_its_have() -> None:
    c = control([10, 10, 10], batch=1)
    c.effects(0)
    c.receive(Kind.HAVE, have({}, receipt=b'{"r": 1}'), 1)
    assert c.effects(1) == [Finished(b'{"r": 1}')]


def test_a_nack_resends_from_its_offset_first() -> None:
    c = control([3000, 3000], batch=2, window=3000)
    c.effects(0)
    c.receive(Kind.HAVE, have({}), 0)
    assert streams(c.effects(0)) == [(0, 0)]
    c.receive(Kind.NACK, Nack(slot=0, offset=2000, reason="digest").payload(), 1)
    # The resend of slot 0 (1000 bytes) goes before slot 1, which waits for room.
    assert streams(c.effects(1)) == [(0, 2000)]
    assert c.in_flight == 1000


def test_an_instance_refused_too_often_fails_the_attempt() -> None:
    c = control([3000])
    c.effects(0)
    c.receive(Kind.HAVE, have({}), 0)
    c.effects(0)
    nack = Nack(slot=0, offset=0, reason="digest").payload()
    for _ in range(MAX_RESENDS):
        c.receive(Kind.NACK, nack, 1)
        assert streams(c.effects(1)) == [(0, 0)]
    with pytest.raises(AttemptFailed, match="refused 4 times") as failed:
        c.receive(Kind.NACK, nack, 2)
    assert failed.value.retriable


@pytest.mark.parametrize("retriable", [True, False])
def test_an_error_frame_fails_the_attempt(retriable: bool) -> None:
    c = control([10])
    c.effects(0)
    error = Failure(code="storage", message="disk full", retriable=retriable, transfer_id=None)
    with pytest.raises(AttemptFailed, match="storage: disk full") as failed:
        c.receive(Kind.ERROR, error.payload(), 1)
    assert failed.value.retriable is retriable


def test_a_receivers_policy_refusal_is_recorded_and_raised_typed() -> None:
    """The ERROR frame's code decides the reason the ledger keeps, and the
    reason read back (by this process or another) decides the error raised."""
    c = control([10])
    c.effects(0)
    refusal = Failure(
        code="policy", message="no rule allows MR from RX1", retriable=False, transfer_id=None
    )
    with pytest.raises(AttemptFailed) as failed:
        c.receive(Kind.ERROR, refusal.payload(), 1)
    reason = failure_reason(failed.value)
    assert reason == "refused by the receiver's policy: no rule allows MR from RX1"
    error = transfer_failed(TRANSFER_ID, reason)
    assert isinstance(error, RefusedByReceiver)
    assert isinstance(error, PolicyRefused)
    assert isinstance(error, TransferFailed)
    assert str(error) == f"transfer {TRANSFER_ID} failed: {reason}"

    storage = Failure(code="storage", message="disk full", retriable=False, transfer_id=None)
    with pytest.raises(AttemptFailed) as failed:
        c.receive(Kind.ERROR, storage.payload(), 2)
    other = transfer_failed(TRANSFER_ID, failure_reason(failed.value))
    assert type(other) is TransferFailed
    assert str(other).endswith("failed: AttemptFailed: receiver: storage: disk full")


@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        (Kind.OFFER, b"{}", "unexpected OFFER"),
        (Kind.RECEIPT, b"{}", "RECEIPT before COMMIT"),
        (Kind.HAVE, Have(transfer_id="cd" * 16, offsets={}).payload(), "another transfer"),
    ],
)
def test_frames_out_of_place_are_protocol_errors(kind: Kind, payload: bytes, message: str) -> None:
    c = control([10])
    c.effects(0)
    with pytest.raises(ProtocolError, match=message):
        c.receive(kind, payload, 1)


def test_a_have_without_an_offer_is_a_protocol_error() -> None:
    c = control([10])
    with pytest.raises(ProtocolError, match="HAVE without an OFFER"):
        c.receive(Kind.HAVE, have({}), 0)


def test_stalls_are_measured_from_the_last_progress() -> None:
    c = control([10], now=100.0)
    assert not c.stalled(129.0, timeout=30)
    assert c.stalled(131.0, timeout=30)
    c.streamed(10, 131.0)
    assert not c.stalled(160.0, timeout=30)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=5000), max_size=40),
    batch=st.integers(min_value=1, max_value=8),
    window=st.integers(min_value=500, max_value=20000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_any_receiver_behaviour_ends_in_one_commit_with_everything_acknowledged(
    sizes: list[int], batch: int, window: int, seed: int
) -> None:
    """A receiver that holds random instances already, acknowledges in random
    order and NACKs at random: every instance is acknowledged exactly once,
    the window is never exceeded but by one instance alone, and COMMIT goes
    once, last."""
    rng = random.Random(seed)
    c = control(sizes, batch=batch, window=window)
    offered: list[list[int]] = []
    streamed: list[int] = []
    acknowledged: list[int] = []
    commits = 0
    nacks: dict[int, int] = {}
    for _step in range(10_000):
        for e in c.effects(0):
            if isinstance(e, SendFrame) and e.kind is Kind.OFFER:
                offered += offers([e])
            elif isinstance(e, SendFrame) and e.kind is Kind.COMMIT:
                assert sorted(acknowledged) == list(range(len(sizes)))
                commits += 1
            elif isinstance(e, StreamInstance):
                streamed.append(e.slot)
                assert c.in_flight <= window or c.in_flight == sizes[e.slot] - e.start
            elif isinstance(e, Acknowledged):
                acknowledged += [i for i, _ in e.indexes]
        if commits:
            break
        choices = []
        if offered:
            choices.append("have")
        if streamed:
            choices += ["ack", "nack"]
        move = rng.choice(choices)
        if move == "have":
            slots = offered.pop(0)
            held = {
                s: rng.choice([0, sizes[s], sizes[s] // 2]) for s in slots if rng.random() < 0.3
            }
            c.receive(Kind.HAVE, have(held), 0)
        elif move == "ack":
            s = streamed.pop(rng.randrange(len(streamed)))
            c.receive(Kind.ACK, ack(s), 0)
        else:
            s = streamed.pop(rng.randrange(len(streamed)))
            nacks[s] = nacks.get(s, 0) + 1
            if nacks[s] > MAX_RESENDS:
                c.receive(Kind.ACK, ack(s), 0)  # this one, the receiver takes after all
            else:
                c.receive(Kind.NACK, Nack(slot=s, offset=0, reason="test").payload(), 0)
    assert commits == 1
    assert sorted(acknowledged) == list(range(len(sizes)))
