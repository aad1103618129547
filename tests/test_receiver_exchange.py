"""The receiving side's decisions over whole exchanges, without a socket: a
sender that misbehaves and a store that fails, across attempts."""

from __future__ import annotations

import dataclasses
import hashlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from dicomrelay._native import Channel, Hasher
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
)
from dicomrelay.receipt import Receipt
from dicomrelay.receiver_control import (
    AppendChunk,
    Audit,
    CheckPeer,
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
    ResumePartial,
    SendFrame,
    StudyCommitted,
    WriteInstance,
)
from test_receiver_control import ADDRESS, TRANSFER_ID, offer

# Property: a sender that resumes across attempts, a store that fails at random.
MAX_RESENDS = 3  # as the sender's: NACKs of one instance before an attempt gives up
CALM_AFTER = 8  # attempts after which the disk has room and the link is clean


class Exchange:
    """A receiver's ledger and store, kept across attempts, and a sender's
    view, driving one ``ReceiverControl`` per attempt; it checks every effect."""

    def __init__(
        self,
        contents: list[bytes],
        chunk: int,
        buffer: int,
        rng: random.Random,
        rates: tuple[float, float],
    ) -> None:
        self.contents = contents
        self.chunk = chunk
        self.buffer = buffer
        self.rng = rng
        self.fail_rate, self.perturb_rate = rates
        self.offer = offer(dict(enumerate(contents)), chunk=chunk)
        self.acked: set[int] = set()  # the sender's ledger
        self.receipt: bytes | None = None
        # The receiver's ledger and store.
        self.noted = False
        self.received: dict[int, IncomingInstance] = {}
        self.checkpoints: dict[int, int] = {}
        self.committed: bytes | None = None
        self.blobs: dict[str, bytes] = {}
        self.partials: dict[str, bytearray] = {}
        self.attempt = 0
        self.tainted: dict[int, int] = {}  # index -> offset of a tampered chunk kept

    def calm(self) -> bool:
        return self.attempt > CALM_AFTER

    def fails(self) -> bool:
        return not self.calm() and self.rng.random() < self.fail_rate

    def record(self, instance: IncomingInstance) -> None:
        assert instance.index not in self.received, "an instance recorded twice"
        assert self.blobs.get(instance.digest) == self.contents[instance.index]
        self.received[instance.index] = instance

    def run_attempt(self) -> None:
        self.attempt += 1
        self.c = ReceiverControl(
            org="RX2",
            address=ADDRESS,
            write_buffer_bytes=self.buffer,
            checkpoint_bytes=3 * self.chunk,
        )
        self.to_sender: list[SendFrame] = []
        self.writing: list[tuple[int, IncomingInstance]] = []  # at the committer
        self.written: set[int] = set()  # slots handed to the store this attempt
        self.durable_slots: set[int] = set()  # slots the store said are durable
        self.acked_slots: set[int] = set()
        hello = Hello(protocol=PROTOCOL_VERSION, org="RX1", digests=("sha256",))
        self.perform(self.c.receive(Kind.HELLO, hello.payload()))
        pending = [i for i in self.offer.instances if i.index not in self.acked]
        o = dataclasses.replace(self.offer, instances=tuple(pending))
        try:
            self.perform(self.c.receive(Kind.OFFER, o.payload()))
            starts = self.read_have(o)
            resends = dict.fromkeys(starts, 0)
            while starts:
                nacks = self.stream(starts)
                for slot in nacks:
                    resends[slot] += 1
                    if resends[slot] > MAX_RESENDS:
                        raise Ended
                starts = {s: offset for s, (offset, _) in nacks.items()}
            self.settle()
            if self.acked >= set(range(len(self.contents))):
                self.commit()
        except Ended:
            pass
        # The committer finishes what it was given; its acknowledgements go nowhere.
        for slot, instance in self.writing:
            self.complete(slot, instance, answer=False)

    def read_have(self, o: Offer) -> dict[int, int]:
        frames, self.to_sender = self.to_sender, []
        [have_frame] = [f for f in frames if f.kind is Kind.HAVE]
        have = Have.parse(have_frame.payload)
        if have.receipt is not None:
            assert have.receipt == self.committed
            self.receipt = have.receipt
            return {}
        starts = {}
        for i in o.instances:
            held = have.offsets.get(i.slot, 0)
            # HAVE trims only what is held: this transfer's rows, this sender's
            # stored content, or a checkpoint of a partial file.
            if held == i.size:
                assert (
                    i.index in self.received or self.blobs.get(i.digest) == self.contents[i.index]
                )
                assert i.index in self.received, "content held is recorded before HAVE says so"
                self.acked.add(i.index)
            else:
                assert held == 0 or held == self.checkpoints.get(i.index), (held, self.checkpoints)
                starts[i.slot] = held
        return starts

    def stream(self, starts: dict[int, int]) -> dict[int, tuple[int, str]]:
        """One pass of chunks from each slot's start, interleaved, some perturbed:
        the NACKs due, and those received."""
        sender, receiver = Channel(None), Channel(None)
        due: dict[int, tuple[int, str]] = {}
        sequences: list[list[tuple[int, int, bytes, bytes]]] = []
        for slot, start in starts.items():
            data = self.contents[slot]
            if slot in self.tainted:  # a tampered chunk kept in its partial file
                due[slot] = (0, "instance digest mismatch")
            offsets = list(range(start, len(data), self.chunk)) or [0]
            sequence = []
            for n, off in enumerate(offsets):
                piece = data[off : off + self.chunk]
                if slot not in due and not self.calm() and self.rng.random() < self.perturb_rate:
                    last = n == len(offsets) - 1
                    move = self.rng.choice(
                        # A pass's first chunk is never lost: after a NACK, one out of
                        # order is taken for one sent before the resend (no second NACK).
                        ["corrupt", "tamper"] + ([] if last or n == 0 else ["lose", "repeat"])
                    )
                    if move == "corrupt":
                        sequence.append((slot, off, piece, b"\0" * 32))
                        due[slot] = (off, "bad-digest")
                        continue
                    if move == "tamper":
                        bad = bytes([piece[0] ^ 1]) + piece[1:]
                        sequence.append((slot, off, bad, hashlib.sha256(bad).digest()))
                        due[slot] = (0, "instance digest mismatch")
                        if len(data) > self.chunk:
                            self.tainted[slot] = off
                        continue
                    if move == "lose":
                        due[slot] = (off, "out-of-order")
                        continue
                    if move == "repeat" and n > 0:
                        prev = offsets[n - 1]
                        sequence.append(
                            (
                                slot,
                                prev,
                                data[prev : prev + self.chunk],
                                hashlib.sha256(data[prev : prev + self.chunk]).digest(),
                            )
                        )
                        # held already: dropped, nothing to ask for
                sequence.append((slot, off, piece, hashlib.sha256(piece).digest()))
            sequences.append(sequence)
        # Interleave the instances, each in its own order.
        merged = []
        while sequences:
            seq = self.rng.choice(sequences)
            merged.append(seq.pop(0))
            if not seq:
                sequences.remove(seq)
        for slot, off, piece, digest in merged:
            sender.send(Kind.CHUNK, piece, stream=slot, offset=off, flags=1, digest=digest)
        frames = receiver.receive(bytes(sender.take_outgoing())) if merged else []
        for _, _, slot, off, payload, ok, claimed in frames:
            self.last_payload = payload
            self.perform(self.c.chunk(slot, off, payload, ok, claimed, float(self.attempt)))
            while self.c.waiting_for_room or (self.writing and self.rng.random() < 0.3):
                self.complete_one()
        self.settle()
        got = {}
        frames_out, self.to_sender = self.to_sender, []
        for f in frames_out:
            if f.kind is Kind.NACK:
                nack = Nack.parse(f.payload)
                assert nack.slot not in got, "one NACK per refusal"
                got[nack.slot] = (nack.offset, nack.reason)
            elif f.kind is Kind.ACK:
                self.take_acks(f)
            elif f.kind is Kind.ERROR:
                assert Failure.parse(f.payload).code == "storage"
                raise Ended
        assert got == due
        return got

    def take_acks(self, frame: SendFrame) -> None:
        for slot, _ in Ack.parse(frame.payload).stored:
            assert slot in self.durable_slots, "acknowledged before durable"
            assert slot not in self.acked_slots, "acknowledged twice"
            self.acked_slots.add(slot)
            self.acked.add(self.offer.instances[slot].index)

    def settle(self) -> None:
        while self.writing:
            self.complete_one()
        for f in [f for f in self.to_sender if f.kind is Kind.ACK]:
            self.to_sender.remove(f)
            self.take_acks(f)
        if any(f.kind is Kind.ERROR for f in self.to_sender):
            raise Ended

    def complete_one(self) -> None:
        slot, instance = self.writing.pop(self.rng.randrange(len(self.writing)))
        self.complete(slot, instance, answer=True)

    def complete(self, slot: int, instance: IncomingInstance, *, answer: bool) -> None:
        if self.fails():
            if answer:
                self.perform(self.c.write_failed(slot, "disk full"))
            return
        self.blobs[instance.digest] = self.contents[instance.index]
        self.record(instance)
        if answer:
            self.durable_slots.add(slot)
            self.perform(self.c.durable([(slot, instance.stored)]))

    def commit(self) -> None:
        self.perform(self.c.receive(Kind.COMMIT, Commit(transfer_id=TRANSFER_ID).payload()))
        [frame] = self.to_sender
        assert frame.kind is Kind.RECEIPT
        receipt = Receipt.from_json(frame.payload)
        assert [(i.sop_instance_uid, i.digest, i.size) for i in receipt.instances] == [
            (i.sop_instance_uid, i.digest, i.size) for i in self.offer.instances
        ]
        self.receipt = frame.payload

    def perform(self, effects: list[Effect]) -> None:
        for e in effects:
            whole = sum(1 for _, i in self.writing if i.size <= self.chunk)
            assert self.c.buffered <= self.buffer or whole <= 1, "backpressure"
            if isinstance(e, SendFrame):
                self.to_sender.append(e)
            elif isinstance(e, CheckPeer):
                self.perform(self.c.peer_admitted("RX1"))
            elif isinstance(e, LookUpHeld):
                self.noted = True
                if self.committed is not None:
                    self.perform(self.c.held(Held(receipt=self.committed), 0.0))
                    continue
                mine = {i.digest for i in self.received.values()}
                sizes: dict[str, int | None] = {
                    d: len(self.blobs[d])
                    for d in (i.digest for i in e.offer.instances)
                    if d in mine
                }
                self.perform(self.c.held(Held(received=dict(self.received), sizes=sizes), 0.0))
            elif isinstance(e, RecordHeld):
                for instance in e.instances:
                    self.record(instance)
            elif isinstance(e, ResumePartial):
                offset = self.checkpoints.get(e.index, 0)
                part = self.partials.get(e.key, bytearray())
                if len(part) < offset:
                    offset = 0  # unreadable: from nothing
                del part[offset:]
                if self.tainted.get(e.index, -1) >= offset:
                    del self.tainted[e.index]  # cut off
                hasher = Hasher(e.algorithm)
                hasher.update(bytes(part))
                self.perform(self.c.partial_resumed(e.slot, offset, hasher if offset else None))
            elif isinstance(e, WriteInstance):
                assert e.slot not in self.written, "written twice"
                self.written.add(e.slot)
                assert bytes(e.data) == self.contents[e.instance.index]
                self.writing.append((e.slot, e.instance))
            elif isinstance(e, AppendChunk):
                assert e.data is self.last_payload, "chunk data passed through untouched"
                if self.fails():
                    self.perform(self.c.write_failed(e.slot, "disk full"))
                    continue
                part = self.partials.setdefault(e.key, bytearray())
                if e.offset == 0:
                    part.clear()
                assert len(part) == e.offset
                part += bytes(e.data)
                self.perform(self.c.appended())
            elif isinstance(e, RecordCheckpoint):
                self.checkpoints[e.index] = e.offset
            elif isinstance(e, DiscardPartial):
                self.partials.pop(e.key, None)
                self.tainted.pop(int(e.key.rsplit("-", 1)[1]), None)
            elif isinstance(e, PublishPartial):
                assert e.slot not in self.written, "written twice"
                self.written.add(e.slot)
                assert bytes(self.partials.pop(e.key)) == self.contents[e.instance.index]
                self.writing.append((e.slot, e.instance))
            elif isinstance(e, LookUpCommit):
                incoming_transfer = IncomingTransfer(
                    sender="RX1",
                    transfer_id=TRANSFER_ID,
                    study_instance_uid="1.2.3",
                    total=len(self.contents),
                    digest="sha256",
                    receipt=self.committed,
                )
                self.perform(self.c.commit_looked_up(incoming_transfer, dict(self.received), 99.0))
            elif isinstance(e, CommitTransfer):
                if self.committed is None:
                    self.committed = e.receipt.to_json()
                self.perform(self.c.committed(self.committed))
            elif isinstance(e, Audit | StudyCommitted):
                pass
            else:
                raise AssertionError(f"unexpected {e}")


class Ended(Exception):
    """The sender's attempt ends (an ERROR, or an instance refused too often)."""


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=12),
    same=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=3),
    chunk=st.integers(min_value=4, max_value=24),
    buffer=st.integers(min_value=1, max_value=120),
    fail_rate=st.floats(min_value=0, max_value=0.2),
    perturb_rate=st.floats(min_value=0, max_value=0.3),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_any_sender_and_store_behaviour_acknowledges_only_what_is_durable(
    sizes: list[int],
    same: list[tuple[int, int]],
    chunk: int,
    buffer: int,
    fail_rate: float,
    perturb_rate: float,
    seed: int,
) -> None:
    """A sender that streams chunks in order, some corrupted, tampered with,
    lost or repeated, across attempts that a store failing at random ends:
    every acknowledgement follows the instance's durable write, each instance
    is written and recorded once, NACKs come once per refusal and only when
    due, HAVE trims only what is held, and the receipt lists exactly the
    offered instances; asked again, the same receipt."""
    rng = random.Random(seed)
    contents = [bytes(rng.getrandbits(8) for _ in range(n)) for n in sizes]
    for a, b in same:  # the same content twice in one study: kept once, recorded twice
        if a < len(contents) and b < len(contents):
            contents[b] = contents[a]
    exchange = Exchange(contents, chunk, buffer, rng, (fail_rate, perturb_rate))
    while exchange.receipt is None:
        assert exchange.attempt < CALM_AFTER + 3, "no commit once the store and link are calm"
        exchange.run_attempt()
    assert sorted(exchange.received) == list(range(len(contents)))
    receipt = exchange.receipt
    exchange.receipt = None
    exchange.run_attempt()  # everything acknowledged: the offer finds the receipt
    assert exchange.receipt == receipt
    exchange.acked.clear()
    exchange.run_attempt()  # a sender that lost its acknowledgements: the receipt again
    assert exchange.receipt == receipt
