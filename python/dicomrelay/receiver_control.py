"""The receiving side of one connection, sans-IO: frames in, effects out.

``ReceiverControl`` decides what a connection does next: whom to welcome,
what an offer finds already held, what to do with each chunk (refuse it, keep
it in a partial file, write the whole instance), when to acknowledge, and what
a commit answers. It owns no ledger, store, socket or clock: it asks questions
as effects (look up what is held for an offer, check the peer, resume a
partial file, look up a transfer to commit) and the async driver in
``receiver`` answers them, with the facts, before it feeds the next frame.
Storage answers ("these slots are durable", "this write failed") come from
the group committer at any time in between.

Every input returns the effects to perform, in order: the inputs come from two
places (the peer's frames and the store's answers), and each one's effects
belong to it. Chunk data is a native buffer passed through untouched.

Guarantees kept here (docs/protocol.md): an ACK only for what the store said
is durable; HAVE trims only what this transfer holds or content this sender
delivered before; one NACK per refusal; large instances resume from their last
checkpoint; at most ``write_buffer_bytes`` wait to become durable (one
instance alone may be larger), and frames wait while they do; a committed
transfer answers with its receipt, as often as it is asked.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TypeVar, cast

from dicomrelay._native import Hasher, Payload
from dicomrelay.config import DigestName
from dicomrelay.errors import DicomrelayError, ProtocolError
from dicomrelay.ledger import IncomingInstance, IncomingTransfer
from dicomrelay.policy import PolicyRefused
from dicomrelay.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Commit,
    Failure,
    Have,
    Hello,
    InboundInstance,
    Kind,
    Nack,
    Offer,
    OfferedInstance,
    Verdict,
    Welcome,
)
from dicomrelay.receipt import Receipt, ReceivedInstance

# Large instances are made durable (and their offset recorded) every this many bytes.
CHECKPOINT_BYTES = 64 << 20
CLAIM_SHOWN = 64  # characters of a name a peer claims that an audit row keeps


class Refused(DicomrelayError):
    """A peer this node will not talk to."""


def claimed(name: str) -> str:
    """A name a peer sent, fit for an audit row: quoted, escaped (no forged
    lines), and cut short."""
    shown = repr(name[:CLAIM_SHOWN])
    return shown if len(name) <= CLAIM_SHOWN else f"{shown}... ({len(name)} characters)"


# Effects: what the driver is to do, in the order given.
@dataclass(frozen=True, slots=True)
class SendFrame:
    """Send one control frame."""

    kind: Kind
    payload: bytes


@dataclass(frozen=True, slots=True)
class CheckPeer:
    """Question: may the peer on this connection, which claims to be
    ``claimed``, send to this node? Answer ``peer_admitted`` or ``peer_refused``."""

    claimed: str


@dataclass(frozen=True, slots=True)
class LookUpHeld:
    """Question: record ``offer``'s transfer as offered and find what is held for
    it: its receipt if committed, else the instances this transfer holds and the
    sizes of the stored instances among the offered digests that this sender (only
    this one) delivered before. Answer ``held``."""

    offer: Offer


@dataclass(frozen=True, slots=True)
class ResumePartial:
    """Question: the durable prefix an earlier attempt left of a large instance:
    its checkpoint in the ledger, and the partial file ``key`` cut back to it and
    hashed. Answer ``partial_resumed`` (offset 0 when there is none, or it is
    unreadable)."""

    slot: int
    transfer_id: str
    index: int
    key: str
    algorithm: DigestName


@dataclass(frozen=True, slots=True)
class RecordHeld:
    """Record ``instances`` as received in this transfer: content already stored."""

    transfer_id: str
    instances: tuple[IncomingInstance, ...]


@dataclass(frozen=True, slots=True)
class WriteInstance:
    """Make ``data`` durable as the record of ``instance``, record it, then answer
    ``durable`` or ``write_failed`` for ``slot``."""

    slot: int
    transfer_id: str
    instance: IncomingInstance
    data: Payload


@dataclass(frozen=True, slots=True)
class AppendChunk:
    """Question: write ``data`` at ``offset`` of the partial file ``key``
    (fsynced when ``checkpoint``). Answer ``appended``, or ``write_failed`` for
    ``slot``."""

    slot: int
    key: str
    offset: int
    data: Payload
    checkpoint: bool


@dataclass(frozen=True, slots=True)
class RecordCheckpoint:
    """Record the durable prefix of a large instance still arriving (0: none)."""

    transfer_id: str
    index: int
    offset: int


@dataclass(frozen=True, slots=True)
class DiscardPartial:
    key: str


@dataclass(frozen=True, slots=True)
class PublishPartial:
    """Put the complete, verified partial file ``key`` in the store durably,
    record it, then answer ``durable`` or ``write_failed`` for ``slot``."""

    slot: int
    key: str
    transfer_id: str
    instance: IncomingInstance


@dataclass(frozen=True, slots=True)
class LookUpCommit:
    """Question: the incoming transfer and the instances it holds. Answer
    ``commit_looked_up``."""

    transfer_id: str


@dataclass(frozen=True, slots=True)
class CommitTransfer:
    """Sign ``receipt`` with this node's key (when it has one), make the study
    visible and keep the receipt in one ledger transaction. Answer ``committed``
    with the receipt kept (an earlier one, if the transfer was committed before)."""

    receipt: Receipt


@dataclass(frozen=True, slots=True)
class Audit:
    org: str
    action: str
    transfer_id: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class StudyCommitted:
    """A study is committed and visible: for whoever delivers it onwards
    (and reconciles it first), with the transfer that carried it."""

    study_instance_uid: str
    sender: str
    transfer_id: str
    priority: str = "routine"  # as the sender offered it


@dataclass(frozen=True, slots=True)
class Close:
    """End the connection, reporting ``error`` (after the effects before it)."""

    error: DicomrelayError


Effect = (
    SendFrame
    | CheckPeer
    | LookUpHeld
    | ResumePartial
    | RecordHeld
    | WriteInstance
    | AppendChunk
    | RecordCheckpoint
    | DiscardPartial
    | PublishPartial
    | LookUpCommit
    | CommitTransfer
    | Audit
    | StudyCommitted
    | Close
)

Q = TypeVar("Q", CheckPeer, LookUpHeld, AppendChunk, LookUpCommit, CommitTransfer)


@dataclass(frozen=True, slots=True)
class Held:
    """The answer to ``LookUpHeld``."""

    receipt: bytes | None = None  # the transfer was committed: nothing else matters
    received: dict[int, IncomingInstance] = field(default_factory=dict)  # by index
    sizes: dict[str, int | None] = field(default_factory=dict)  # of this sender's digests


@dataclass(slots=True)
class _LargeSlot:
    """A multi-chunk instance's whole-instance digest, as its chunks arrive."""

    algorithm: DigestName
    hasher: Hasher


@dataclass(slots=True)
class _HaveToSend:
    """An offer's answer, waiting for its large instances' partials to resume."""

    transfer_id: str
    offsets: dict[int, int]
    resuming: set[int]


def _failure(code: str, message: str, *, retriable: bool, transfer: str | None = None) -> SendFrame:
    f = Failure(code=code, message=message, retriable=retriable, transfer_id=transfer)
    return SendFrame(Kind.ERROR, f.payload())


def _nack(slot: int, offset: int, reason: str) -> SendFrame:
    return SendFrame(Kind.NACK, Nack(slot=slot, offset=offset, reason=reason).payload())


class ReceiverControl:
    """The decisions of one connection on the receiving side: this node is
    ``org``; the peer connected from ``address``."""

    def __init__(
        self,
        *,
        org: str,
        address: str,
        write_buffer_bytes: int,
        checkpoint_bytes: int = CHECKPOINT_BYTES,
    ) -> None:
        self.org = org
        self.address = address
        self.write_buffer_bytes = write_buffer_bytes
        self.checkpoint_bytes = checkpoint_bytes
        self.sender = ""  # the organisation admitted, after HELLO
        self._hello: Hello | None = None
        self._welcomed = False
        self._question: Effect | None = None  # the one waiting for its answer
        self._slots: dict[int, InboundInstance] = {}  # offered, not yet whole
        self._large: dict[int, _LargeSlot] = {}
        self._have: _HaveToSend | None = None
        self.buffered = 0  # bytes handed to the writer, not yet durable
        self._writing: dict[int, int] = {}  # slot -> bytes being written
        self._waiting: deque[WriteInstance] = deque()  # whole, waiting for room
        self._failed: set[int] = set()  # slots whose partial could not be written
        self._after_append: list[Effect] = []
        self._priorities: dict[str, str] = {}  # each offered transfer's

    @property
    def waiting_for_room(self) -> bool:
        """Backpressure: feed no frame until ``durable`` or ``write_failed`` makes
        room. (It starts only with a chunk that returned no effects.)"""
        return bool(self._waiting)

    # Frames in.
    def receive(self, kind: Kind, payload: bytes) -> list[Effect]:
        """A control frame from the sender. Raises ProtocolError for a frame out
        of place."""
        if self._question is not None:
            raise RuntimeError(f"a frame before the answer to {self._question}")
        if not self._welcomed:
            if self._hello is not None or kind is not Kind.HELLO:
                raise ProtocolError(f"expected HELLO, got {kind.name}")
            self._hello = Hello.parse(payload)
            return self._ask(CheckPeer(self._hello.org))
        if kind is Kind.OFFER:
            return self._ask(LookUpHeld(Offer.parse(payload)))
        if kind is Kind.COMMIT:
            return self._ask(LookUpCommit(Commit.parse(payload).transfer_id))
        raise ProtocolError(f"unexpected {kind.name} from a sender")

    def chunk(
        self,
        slot: int,
        offset: int,
        data: Payload,
        digest_ok: bool | None,
        digest: bytes | None,
        now: float,
    ) -> list[Effect]:
        """A CHUNK frame: ``digest_ok`` is the codec's check of the chunk's digest,
        ``digest`` the one it claimed."""
        inbound = self._slots.get(slot)
        if inbound is None:
            if slot in self._failed:
                return []  # its ERROR is out: the sender gives up on this attempt
            if not self._welcomed:
                raise ProtocolError("expected HELLO, got CHUNK")
            raise ProtocolError(f"chunk for slot {slot}, which was not offered")
        if self._question is not None:
            raise RuntimeError(f"a frame before the answer to {self._question}")
        size = len(data)
        if offset + size <= inbound.received:
            return []  # bytes held already (a repeat): asking again would only repeat them
        verdict = inbound.judge(offset, size, digest_ok)
        if verdict is Verdict.OVERRUN:
            raise ProtocolError(f"slot {slot}: more bytes than offered")
        if verdict is Verdict.BAD_DIGEST or verdict is Verdict.OUT_OF_ORDER:
            # Chunks sent after the refused one are already on the way: one NACK is enough.
            if verdict is Verdict.OUT_OF_ORDER and inbound.refused:
                return []
            inbound.refused = True
            return [_nack(slot, inbound.received, verdict.value)]
        inbound.refused = False
        offered = inbound.offered
        large = self._large.get(slot)
        if large is None:
            # The whole instance in one chunk: the chunk's verified digest is the instance's.
            if digest is None or digest.hex() != offered.digest:
                return [self._refuse_instance(slot, inbound)]
            del self._slots[slot]
            # The hot path, one call per instance: the row and the write built here.
            instance = IncomingInstance(
                index=offered.index,
                sop_instance_uid=offered.sop_instance_uid,
                size=offered.size,
                digest=offered.digest,
                stored=now,
            )
            write = WriteInstance(slot, inbound.transfer_id, instance, data)
            # Backpressure: past write_buffer_bytes it waits (one instance alone may pass).
            if self._waiting or (self.buffered and self.buffered + size > self.write_buffer_bytes):
                self._waiting.append(write)
                return []
            self.buffered += size
            self._writing[slot] = size
            return [write]
        large.hasher.update(memoryview(data))
        key = self._partial_key(inbound.transfer_id, offered.index)
        # A checkpoint makes the bytes so far durable, so a later attempt resumes there.
        checkpoint = verdict is Verdict.APPEND and inbound.received % self.checkpoint_bytes < size
        then: list[Effect] = []  # once the bytes are written
        if checkpoint:
            then.append(RecordCheckpoint(inbound.transfer_id, offered.index, inbound.received))
        if verdict is Verdict.COMPLETE:
            del self._slots[slot]
            del self._large[slot]
            if large.hasher.hexdigest() != offered.digest:
                then.append(DiscardPartial(key))
                then.append(RecordCheckpoint(inbound.transfer_id, offered.index, 0))
                self._large[slot] = _LargeSlot(large.algorithm, Hasher(large.algorithm))
                then.append(self._refuse_instance(slot, inbound))
            else:
                instance = _incoming(offered, now)
                then.append(PublishPartial(slot, key, inbound.transfer_id, instance))
        self._after_append = then
        return self._ask(AppendChunk(slot, key, offset, data, checkpoint))

    # Answers in.
    def appended(self) -> list[Effect]:
        """The answer to ``AppendChunk``: the bytes are written (and fsynced, if asked)."""
        self._answered(AppendChunk)
        then, self._after_append = self._after_append, []
        return then

    def peer_admitted(self, org: str) -> list[Effect]:
        """The answer to ``CheckPeer``: the peer is ``org``."""
        self._answered(CheckPeer)
        assert self._hello is not None
        if self._hello.protocol != PROTOCOL_VERSION:
            message = f"this node speaks protocol {PROTOCOL_VERSION}"
            return [
                _failure("version", message, retriable=False),
                Close(ProtocolError(f"peer speaks protocol {self._hello.protocol}")),
            ]
        self.sender = org
        self._welcomed = True
        welcome = Welcome(protocol=PROTOCOL_VERSION, org=self.org)
        return [SendFrame(Kind.WELCOME, welcome.payload())]

    def peer_refused(self, proven: str, reason: str) -> list[Effect]:
        """The answer to ``CheckPeer``: refused for ``reason``; ``proven`` is who
        the peer is as far as its certificate says (the audit names it)."""
        self._answered(CheckPeer)
        assert self._hello is not None
        detail = f"{self.address}: {reason}; HELLO claimed {claimed(self._hello.org)}"
        return [
            Audit(proven, "refused", None, detail),
            _failure("refused", reason, retriable=False),
            Close(Refused(reason)),
        ]

    def held(self, answer: Held, now: float) -> list[Effect]:
        """The answer to ``LookUpHeld``."""
        offer = self._answered(LookUpHeld).offer
        self._priorities[offer.transfer_id] = offer.priority
        if answer.receipt is not None:
            have = Have(transfer_id=offer.transfer_id, offsets={}, receipt=answer.receipt)
            return [SendFrame(Kind.HAVE, have.payload())]
        received, sizes = answer.received, answer.sizes
        offsets: dict[int, int] = {}
        already: list[IncomingInstance] = []
        out: list[Effect] = []
        for item in offer.instances:
            if item.slot in self._slots:
                raise ProtocolError(f"slot {item.slot} offered twice")
            got = received.get(item.index)
            if got is not None and got.digest == item.digest:
                offsets[item.slot] = item.size
            elif sizes.get(item.digest) == item.size:
                # Content this sender delivered before, in any transfer, need not
                # travel again. (Only its own: a digest alone must not let one
                # organisation claim bytes that another sent.)
                offsets[item.slot] = item.size
                already.append(_incoming(item, now))
            else:
                self._slots[item.slot] = InboundInstance(
                    transfer_id=offer.transfer_id, offered=item
                )
                if item.size > offer.chunk_size:
                    algorithm = cast(DigestName, offer.digest)  # Offer.parse checked the name
                    self._large[item.slot] = _LargeSlot(algorithm, Hasher(algorithm))
                    key = self._partial_key(offer.transfer_id, item.index)
                    out.append(
                        ResumePartial(item.slot, offer.transfer_id, item.index, key, algorithm)
                    )
        if already:
            out.insert(0, RecordHeld(offer.transfer_id, tuple(already)))
        resuming = {e.slot for e in out if isinstance(e, ResumePartial)}
        self._have = _HaveToSend(offer.transfer_id, offsets, resuming)
        if resuming:
            self._question = out[-1]  # the last one answered sends the HAVE
            return out
        return [*out, self._send_have()]

    def partial_resumed(self, slot: int, offset: int, hasher: Hasher | None) -> list[Effect]:
        """The answer to ``ResumePartial``: ``hasher`` has hashed the ``offset``
        bytes kept (None, offset 0: start from nothing)."""
        have = self._have
        if have is None or slot not in have.resuming:
            raise RuntimeError(f"no partial of slot {slot} was asked for")
        have.resuming.discard(slot)
        if offset and hasher is not None:
            self._slots[slot].received = offset
            self._large[slot].hasher = hasher
            have.offsets[slot] = offset
        if have.resuming:
            return []
        self._question = None
        return [self._send_have()]

    def durable(self, stored: list[tuple[int, float]]) -> list[Effect]:
        """The store's answer: these slots' instances are durable and recorded,
        at these times."""
        for slot, _ in stored:
            self.buffered -= self._writing.pop(slot, 0)
        ack = SendFrame(Kind.ACK, Ack(stored=tuple(stored)).payload())
        return [*self._make_room(), ack] if self._waiting else [ack]

    def write_failed(self, slot: int, reason: str) -> list[Effect]:
        """The store's answer: ``slot``'s bytes could not be made durable (a full
        disk): never acknowledged; the sender will offer it again."""
        if isinstance(self._question, AppendChunk) and self._question.slot == slot:
            self._question = None
            self._after_append = []
        self.buffered -= self._writing.pop(slot, 0)
        if self._slots.pop(slot, None) is not None:
            self._large.pop(slot, None)
            self._failed.add(slot)
        return [*self._make_room(), _failure("storage", reason, retriable=True)]

    def commit_looked_up(
        self,
        incoming: IncomingTransfer | None,
        received: dict[int, IncomingInstance],
        now: float,
    ) -> list[Effect]:
        """The answer to ``LookUpCommit``."""
        transfer_id = self._answered(LookUpCommit).transfer_id
        if incoming is None:
            raise ProtocolError(f"commit of transfer {transfer_id}, which was not offered")
        if incoming.receipt is not None:
            return [SendFrame(Kind.RECEIPT, incoming.receipt)]
        if len(received) < incoming.total:
            message = f"{len(received)} of {incoming.total} instances held"
            return [_failure("incomplete", message, retriable=True, transfer=transfer_id)]
        receipt = Receipt(
            transfer_id=transfer_id,
            sender=self.sender,
            receiver=self.org,
            study_instance_uid=incoming.study_instance_uid,
            digest_algorithm=incoming.digest,
            committed_at=now,
            instances=tuple(
                ReceivedInstance(
                    sop_instance_uid=i.sop_instance_uid,
                    digest=i.digest,
                    size=i.size,
                    stored_at=i.stored,
                )
                for i in sorted(received.values(), key=lambda i: i.index)
            ),
        )
        return self._ask(CommitTransfer(receipt))

    def committed(self, stored: bytes) -> list[Effect]:
        """The answer to ``CommitTransfer``: the receipt the ledger keeps."""
        receipt = self._answered(CommitTransfer).receipt
        study = receipt.study_instance_uid
        detail = f"{len(receipt.instances)} instances of {study}"
        return [
            Audit(self.sender, "received", receipt.transfer_id, detail),
            SendFrame(Kind.RECEIPT, stored),
            StudyCommitted(
                study,
                self.sender,
                receipt.transfer_id,
                self._priorities.get(receipt.transfer_id, "routine"),
            ),
        ]

    def policy_refused(self, reason: str) -> list[Effect]:
        """The driver's verdict on an instance arriving: this node's inbound
        rules refuse it, so the transfer ends (nothing more of it is stored,
        and it is never committed); the sender is told it is no use retrying."""
        return [
            _failure("policy", reason, retriable=False),
            Close(PolicyRefused(reason)),
        ]

    # Decisions.
    def _ask(self, question: Effect) -> list[Effect]:
        self._question = question
        return [question]

    def _answered(self, kind: type[Q]) -> Q:
        """The question an answer answers; answering another is the driver's mistake."""
        question = self._question
        if not isinstance(question, kind):
            raise RuntimeError(f"an answer to {kind.__name__}, but the question is {question}")
        self._question = None
        return question

    def _send_have(self) -> SendFrame:
        have = self._have
        assert have is not None
        self._have = None
        return SendFrame(
            Kind.HAVE, Have(transfer_id=have.transfer_id, offsets=have.offsets).payload()
        )

    def _refuse_instance(self, slot: int, inbound: InboundInstance) -> SendFrame:
        """Ask for the whole instance again; the slot stays open from byte 0."""
        inbound.received = 0
        inbound.refused = True
        self._slots[slot] = inbound
        return _nack(slot, 0, "instance digest mismatch")

    def _make_room(self) -> list[Effect]:
        out: list[Effect] = []
        while self._waiting:
            size = len(self._waiting[0].data)
            if self.buffered and self.buffered + size > self.write_buffer_bytes:
                break
            write = self._waiting.popleft()
            self.buffered += size
            self._writing[write.slot] = size
            out.append(write)
        return out

    def _partial_key(self, transfer_id: str, index: int) -> str:
        return f"{self.sender}-{transfer_id}-{index}"


def _incoming(offered: OfferedInstance, now: float) -> IncomingInstance:
    return IncomingInstance(
        index=offered.index,
        sop_instance_uid=offered.sop_instance_uid,
        size=offered.size,
        digest=offered.digest,
        stored=now,
    )
