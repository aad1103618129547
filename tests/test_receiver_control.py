"""The receiving side's decisions, frame by frame, without a socket."""

from __future__ import annotations

import hashlib

import pytest

from dicomrelay._native import Channel, Hasher, Payload
from dicomrelay.errors import ProtocolError
from dicomrelay.ledger import IncomingInstance, IncomingTransfer
from dicomrelay.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Commit,
    Failure,
    Have,
    Hello,
    Kind,
    Nack,
    Offer,
    OfferedInstance,
    Welcome,
)
from dicomrelay.receipt import Receipt
from dicomrelay.receiver_control import (
    AppendChunk,
    Audit,
    CheckPeer,
    Close,
    CommitTransfer,
    DiscardPartial,
    Effect,
    Held,
    LookUpCommit,
    LookUpHeld,
    PublishPartial,
    ReceiverControl,
    RecordCheckpoint,
    RecordHeld,
    Refused,
    ResumePartial,
    SendFrame,
    StudyCommitted,
    WriteInstance,
)

TRANSFER_ID = "ab" * 16
ADDRESS = "192.0.2.7:40000"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_frame(
    slot: int, offset: int, data: bytes, claimed: bytes | None = None
) -> tuple[Payload, bool | None, bytes | None]:
    """A CHUNK frame as the native codec hands it over: the data in a native
    buffer, whether it matches the digest claimed, and that digest."""
    sender, receiver = Channel(None), Channel(None)
    digest = claimed if claimed is not None else hashlib.sha256(data).digest()
    sender.send(Kind.CHUNK, data, stream=slot, offset=offset, flags=1, digest=digest)
    [(_, _, _, _, payload, ok, got)] = receiver.receive(bytes(sender.take_outgoing()))
    return payload, ok, got


def welcomed(*, buffer: int = 1 << 30, checkpoint: int = 1 << 30) -> ReceiverControl:
    c = ReceiverControl(
        org="RX2", address=ADDRESS, write_buffer_bytes=buffer, checkpoint_bytes=checkpoint
    )
    hello = Hello(protocol=PROTOCOL_VERSION, org="RX1", digests=("sha256",))
    assert c.receive(Kind.HELLO, hello.payload()) == [CheckPeer("RX1")]
    [welcome] = c.peer_admitted("RX1")
    assert welcome == SendFrame(Kind.WELCOME, Welcome(protocol=1, org="RX2").payload())
    return c


def offer(contents: dict[int, bytes], *, chunk: int = 1 << 20, total: int | None = None) -> Offer:
    """An offer of ``contents`` by slot; each instance's index is its slot."""
    return Offer(
        transfer_id=TRANSFER_ID,
        study_instance_uid="1.2.3",
        priority="routine",
        digest="sha256",
        chunk_size=chunk,
        total=max(contents, default=-1) + 1 if total is None else total,
        instances=tuple(
            OfferedInstance(
                slot=s, index=s, sop_instance_uid=f"1.2.3.{s}", size=len(d), digest=sha256(d)
            )
            for s, d in contents.items()
        ),
    )


def offered(c: ReceiverControl, o: Offer, answer: Held | None = None) -> list[Effect]:
    assert c.receive(Kind.OFFER, o.payload()) == [LookUpHeld(o)]
    return c.held(answer or Held(), now=5.0)


def have_of(effect: Effect) -> Have:
    assert isinstance(effect, SendFrame)
    assert effect.kind is Kind.HAVE
    return Have.parse(effect.payload)


def nack_of(effect: Effect) -> Nack:
    assert isinstance(effect, SendFrame)
    assert effect.kind is Kind.NACK
    return Nack.parse(effect.payload)


def error_of(effect: Effect) -> Failure:
    assert isinstance(effect, SendFrame)
    assert effect.kind is Kind.ERROR
    return Failure.parse(effect.payload)


def send_chunk(
    c: ReceiverControl, slot: int, offset: int, data: bytes, now: float = 6.0
) -> list[Effect]:
    payload, ok, digest = chunk_frame(slot, offset, data)
    return c.chunk(slot, offset, payload, ok, digest, now)


def held_instance(index: int, data: bytes, stored: float = 1.0) -> IncomingInstance:
    return IncomingInstance(
        index=index,
        sop_instance_uid=f"1.2.3.{index}",
        size=len(data),
        digest=sha256(data),
        stored=stored,
    )


# HELLO.
def test_a_refused_peer_is_audited_as_its_certificate_says_then_closed() -> None:
    c = ReceiverControl(org="RX2", address=ADDRESS, write_buffer_bytes=1 << 20)
    hello = Hello(protocol=PROTOCOL_VERSION, org="RX1\nforged", digests=("sha256",))
    assert c.receive(Kind.HELLO, hello.payload()) == [CheckPeer("RX1\nforged")]
    audit, refusal, close = c.peer_refused("RX9", "unknown organisation 'RX9'")
    assert audit == Audit(
        "RX9",
        "refused",
        None,
        f"{ADDRESS}: unknown organisation 'RX9'; HELLO claimed 'RX1\\nforged'",
    )
    assert error_of(refusal) == Failure(
        code="refused", message="unknown organisation 'RX9'", retriable=False
    )
    assert isinstance(close, Close)
    assert isinstance(close.error, Refused)


def test_another_protocol_version_is_told_then_closed() -> None:
    c = ReceiverControl(org="RX2", address=ADDRESS, write_buffer_bytes=1 << 20)
    c.receive(Kind.HELLO, Hello(protocol=2, org="RX1", digests=()).payload())
    refusal, close = c.peer_admitted("RX1")
    assert error_of(refusal).code == "version"
    assert isinstance(close, Close)
    assert isinstance(close.error, ProtocolError)


@pytest.mark.parametrize("kind", [Kind.OFFER, Kind.COMMIT, Kind.WELCOME])
def test_the_first_frame_must_be_hello(kind: Kind) -> None:
    c = ReceiverControl(org="RX2", address=ADDRESS, write_buffer_bytes=1 << 20)
    with pytest.raises(ProtocolError, match=f"expected HELLO, got {kind.name}"):
        c.receive(kind, b"{}")
    payload, ok, digest = chunk_frame(0, 0, b"x")
    with pytest.raises(ProtocolError, match="expected HELLO, got CHUNK"):
        c.chunk(0, 0, payload, ok, digest, 0.0)


@pytest.mark.parametrize("kind", [Kind.HELLO, Kind.ACK, Kind.HAVE, Kind.RECEIPT, Kind.ERROR])
def test_frames_a_sender_does_not_send_are_protocol_errors(kind: Kind) -> None:
    with pytest.raises(ProtocolError, match=f"unexpected {kind.name}"):
        welcomed().receive(kind, b"{}")


# OFFER and HAVE.
def test_have_trims_what_this_transfer_holds_and_this_senders_content() -> None:
    contents = {0: b"held", 1: b"changed", 2: b"delivered", 3: b"wrong size", 4: b"new"}
    c = welcomed()
    answer = Held(
        received={0: held_instance(0, b"held"), 1: held_instance(1, b"before")},
        sizes={sha256(b"delivered"): 9, sha256(b"wrong size"): 3},
    )
    record, have = offered(c, offer(contents), answer)
    # Content this sender delivered in another transfer is recorded here before HAVE says so.
    assert record == RecordHeld(TRANSFER_ID, (held_instance(2, b"delivered", stored=5.0),))
    assert have_of(have) == Have(transfer_id=TRANSFER_ID, offsets={0: 4, 2: 9})
    # The others stream.
    [write] = send_chunk(c, 4, 0, b"new")
    assert isinstance(write, WriteInstance)


def test_a_committed_transfer_answers_its_offer_with_the_receipt() -> None:
    c = welcomed()
    [have] = offered(c, offer({0: b"x"}), Held(receipt=b'{"r": 1}'))
    assert have_of(have) == Have(transfer_id=TRANSFER_ID, offsets={}, receipt=b'{"r": 1}')


def test_a_slot_offered_twice_is_a_protocol_error() -> None:
    c = welcomed()
    offered(c, offer({0: b"x"}))
    with pytest.raises(ProtocolError, match="slot 0 offered twice"):
        offered(c, offer({0: b"y"}))


def test_a_frame_before_a_question_is_answered_is_the_drivers_mistake() -> None:
    c = welcomed()
    c.receive(Kind.OFFER, offer({0: b"x"}).payload())
    with pytest.raises(RuntimeError, match="before the answer"):
        c.receive(Kind.COMMIT, Commit(transfer_id=TRANSFER_ID).payload())
    with pytest.raises(RuntimeError, match="an answer to CommitTransfer"):
        c.committed(b"{}")


# CHUNK: whole instances.
def test_a_whole_instance_is_written_untouched_and_acknowledged_once_durable() -> None:
    c = welcomed()
    offered(c, offer({3: b"instance"}))
    payload, ok, digest = chunk_frame(3, 0, b"instance")
    [write] = c.chunk(3, 0, payload, ok, digest, 7.0)
    assert isinstance(write, WriteInstance)
    assert write.data is payload  # the native buffer, not a copy
    assert write.instance == held_instance(3, b"instance", stored=7.0)
    assert c.buffered == 8
    [ack] = c.durable([(3, 7.5)])
    assert ack == SendFrame(Kind.ACK, Ack(stored=((3, 7.5),)).payload())
    assert c.buffered == 0


def test_a_bad_chunk_is_refused_once_and_what_follows_it_dropped() -> None:
    c = welcomed()
    offered(c, offer({0: b"aaaabbbbcc"}, chunk=4))
    c.partial_resumed(0, 0, None)
    payload, _, _ = chunk_frame(0, 0, b"aaaa")
    [nack] = c.chunk(0, 0, payload, False, b"\0" * 32, 1.0)
    assert nack_of(nack) == Nack(slot=0, offset=0, reason="bad-digest")
    # Chunks already on the way are out of order now: no second NACK.
    assert send_chunk(c, 0, 4, b"bbbb") == []
    assert send_chunk(c, 0, 8, b"cc") == []
    # The resend from the NACK's offset is taken.
    assert isinstance(send_chunk(c, 0, 0, b"aaaa")[0], AppendChunk)


def test_an_out_of_order_chunk_is_refused_with_the_offset_expected() -> None:
    c = welcomed()
    offered(c, offer({0: b"aaaabbbbcc"}, chunk=4))
    c.partial_resumed(0, 0, None)
    assert isinstance(send_chunk(c, 0, 0, b"aaaa")[0], AppendChunk)
    c.appended()
    [nack] = send_chunk(c, 0, 8, b"cc")
    assert nack_of(nack) == Nack(slot=0, offset=4, reason="out-of-order")
    [append] = send_chunk(c, 0, 4, b"bbbb")
    assert isinstance(append, AppendChunk)
    assert append.offset == 4


def test_a_chunk_held_already_is_dropped_without_a_nack() -> None:
    c = welcomed()
    offered(c, offer({0: b"aaaabbbbcc"}, chunk=4))
    c.partial_resumed(0, 0, None)
    send_chunk(c, 0, 0, b"aaaa")
    c.appended()
    assert send_chunk(c, 0, 0, b"aaaa") == []
    [append] = send_chunk(c, 0, 4, b"bbbb")  # the stream goes on
    assert isinstance(append, AppendChunk)


def test_a_single_chunk_whose_digest_is_not_the_instances_is_asked_for_again() -> None:
    c = welcomed()
    offered(c, offer({0: b"right"}))
    [nack] = send_chunk(c, 0, 0, b"wrong")  # an intact chunk of other content
    assert nack_of(nack) == Nack(slot=0, offset=0, reason="instance digest mismatch")
    [write] = send_chunk(c, 0, 0, b"right")
    assert isinstance(write, WriteInstance)


def test_more_bytes_than_offered_is_a_protocol_error() -> None:
    c = welcomed()
    offered(c, offer({0: b"abc"}))
    with pytest.raises(ProtocolError, match="more bytes than offered"):
        send_chunk(c, 0, 0, b"abcd")


def test_a_chunk_of_a_slot_never_offered_is_a_protocol_error() -> None:
    c = welcomed()
    with pytest.raises(ProtocolError, match="slot 9, which was not offered"):
        send_chunk(c, 9, 0, b"x")


def test_write_buffer_backpressure() -> None:
    c = welcomed(buffer=25)
    offered(c, offer({0: b"a" * 10, 1: b"b" * 10, 2: b"c" * 10, 3: b"d" * 40}))
    assert [type(e) for e in send_chunk(c, 0, 0, b"a" * 10)] == [WriteInstance]
    assert [type(e) for e in send_chunk(c, 1, 0, b"b" * 10)] == [WriteInstance]
    assert not c.waiting_for_room
    assert send_chunk(c, 2, 0, b"c" * 10) == []  # 30 bytes would pass 25: it waits
    assert c.waiting_for_room
    write, ack = c.durable([(0, 1.0)])
    assert isinstance(write, WriteInstance)
    assert write.slot == 2
    assert ack_of(ack) == Ack(stored=((0, 1.0),))
    assert not c.waiting_for_room
    # One instance larger than the buffer goes alone, once nothing else is waiting.
    assert send_chunk(c, 3, 0, b"d" * 40) == []
    c.durable([(1, 2.0)])
    assert c.waiting_for_room
    write, _ = c.durable([(2, 3.0)])
    assert isinstance(write, WriteInstance)
    assert write.slot == 3
    assert c.buffered == 40


def ack_of(effect: Effect) -> Ack:
    assert isinstance(effect, SendFrame)
    assert effect.kind is Kind.ACK
    return Ack.parse(effect.payload)


def test_a_failed_write_is_a_retriable_error_never_an_acknowledgement() -> None:
    c = welcomed(buffer=10)
    offered(c, offer({0: b"a" * 10, 1: b"b" * 10}))
    send_chunk(c, 0, 0, b"a" * 10)
    assert send_chunk(c, 1, 0, b"b" * 10) == []
    write, error = c.write_failed(0, "cannot store 1.2.3.0: disk full")
    assert isinstance(write, WriteInstance)
    assert write.slot == 1
    assert error_of(error) == Failure(
        code="storage", message="cannot store 1.2.3.0: disk full", retriable=True
    )


# CHUNK: large instances, in partial files.
LARGE = b"0123456789abcdefghij"  # 20 bytes in chunks of 4, checkpoints every 10


def large_offered(checkpoint: int = 10) -> ReceiverControl:
    c = welcomed(checkpoint=checkpoint)
    [resume] = offered(c, offer({0: LARGE}, chunk=4))
    assert resume == ResumePartial(0, TRANSFER_ID, 0, f"RX1-{TRANSFER_ID}-0", "sha256")
    [have] = c.partial_resumed(0, 0, None)
    assert have_of(have).offsets == {}
    return c


def stream_large(c: ReceiverControl, start: int = 0, data: bytes = LARGE) -> list[Effect]:
    """Chunks from ``start`` to the end, each append answered: the appends (the
    data passed through untouched) and what followed each."""
    out: list[Effect] = []
    for offset in range(start, len(data), 4):
        payload, ok, digest = chunk_frame(0, offset, data[offset : offset + 4])
        [append] = c.chunk(0, offset, payload, ok, digest, 9.0)
        assert isinstance(append, AppendChunk)
        assert (append.key, append.offset, append.data) == (f"RX1-{TRANSFER_ID}-0", offset, payload)
        out += [append, *c.appended()]
    return out


def test_a_large_instance_is_checkpointed_then_published() -> None:
    c = large_offered()
    effects = stream_large(c)
    key = f"RX1-{TRANSFER_ID}-0"
    # The appends that pass a checkpoint (10, 20) are fsynced and recorded; the
    # last one completes the instance, which is published instead.
    checkpoints = [e.offset for e in effects if isinstance(e, AppendChunk) and e.checkpoint]
    assert checkpoints == [8]
    assert [e for e in effects if not isinstance(e, AppendChunk)] == [
        RecordCheckpoint(TRANSFER_ID, 0, 12),
        PublishPartial(0, key, TRANSFER_ID, held_instance(0, LARGE, stored=9.0)),
    ]
    [ack] = c.durable([(0, 9.5)])
    assert ack_of(ack) == Ack(stored=((0, 9.5),))


def test_a_large_instance_resumes_from_its_checkpoint() -> None:
    c = welcomed(checkpoint=10)
    offered(c, offer({0: LARGE}, chunk=4))
    kept = Hasher("sha256")
    kept.update(LARGE[:12])
    [have] = c.partial_resumed(0, 12, kept)
    assert have_of(have).offsets == {0: 12}
    assert stream_large(c, start=12)[-1] == PublishPartial(
        0, f"RX1-{TRANSFER_ID}-0", TRANSFER_ID, held_instance(0, LARGE, stored=9.0)
    )


def test_a_large_instance_whose_digest_is_wrong_starts_again_from_nothing() -> None:
    c = large_offered(checkpoint=1 << 30)
    tampered = LARGE[:-1] + b"!"
    after = stream_large(c, data=tampered)
    key = f"RX1-{TRANSFER_ID}-0"
    discard, forget, nack = [e for e in after if not isinstance(e, AppendChunk)]
    assert (discard, forget) == (DiscardPartial(key), RecordCheckpoint(TRANSFER_ID, 0, 0))
    assert nack_of(nack) == Nack(slot=0, offset=0, reason="instance digest mismatch")
    assert stream_large(c)[-1] == PublishPartial(
        0, key, TRANSFER_ID, held_instance(0, LARGE, stored=9.0)
    )


def test_a_partial_that_cannot_be_written_is_an_error_and_its_chunks_are_dropped() -> None:
    c = large_offered()
    send_chunk(c, 0, 0, LARGE[:4])
    [error] = c.write_failed(0, "cannot store x: disk full")
    assert error_of(error).retriable
    assert send_chunk(c, 0, 4, LARGE[4:8]) == []  # already on the way


# COMMIT.
def incoming(total: int, receipt: bytes | None = None) -> IncomingTransfer:
    return IncomingTransfer(
        sender="RX1",
        transfer_id=TRANSFER_ID,
        study_instance_uid="1.2.3",
        total=total,
        digest="sha256",
        receipt=receipt,
    )


def commit(c: ReceiverControl) -> None:
    assert c.receive(Kind.COMMIT, Commit(transfer_id=TRANSFER_ID).payload()) == [
        LookUpCommit(TRANSFER_ID)
    ]


def test_commit_signs_records_and_returns_the_receipt_the_ledger_keeps() -> None:
    c = welcomed()
    commit(c)
    received = {1: held_instance(1, b"b", 2.0), 0: held_instance(0, b"a", 1.0)}
    [effect] = c.commit_looked_up(incoming(2), received, now=10.0)
    assert isinstance(effect, CommitTransfer)
    receipt: Receipt = effect.receipt
    assert (receipt.sender, receipt.receiver, receipt.committed_at) == ("RX1", "RX2", 10.0)
    assert [i.sop_instance_uid for i in receipt.instances] == ["1.2.3.0", "1.2.3.1"]
    assert receipt.signature is None  # the driver signs: the key stays out of here
    audit, sent, announced = c.committed(b'{"kept": 1}')
    assert audit == Audit("RX1", "received", TRANSFER_ID, "2 instances of 1.2.3")
    assert sent == SendFrame(Kind.RECEIPT, b'{"kept": 1}')
    assert announced == StudyCommitted("1.2.3", "RX1", TRANSFER_ID)


def test_a_committed_transfer_answers_its_commit_with_the_same_receipt() -> None:
    c = welcomed()
    commit(c)
    assert c.commit_looked_up(incoming(2, b'{"r": 1}'), {}, now=10.0) == [
        SendFrame(Kind.RECEIPT, b'{"r": 1}')
    ]


def test_an_incomplete_transfer_is_not_committed() -> None:
    c = welcomed()
    commit(c)
    [error] = c.commit_looked_up(incoming(3), {0: held_instance(0, b"a")}, now=10.0)
    assert error_of(error) == Failure(
        code="incomplete", message="1 of 3 instances held", retriable=True, transfer_id=TRANSFER_ID
    )


def test_a_commit_of_a_transfer_never_offered_is_a_protocol_error() -> None:
    c = welcomed()
    commit(c)
    with pytest.raises(ProtocolError, match="which was not offered"):
        c.commit_looked_up(None, {}, now=10.0)
