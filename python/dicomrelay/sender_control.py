"""The sending side of one attempt, sans-IO: frames in, effects out.

``SenderControl`` decides what an attempt does next (offer a batch, stream an
instance from a byte, send COMMIT, report acknowledgements, finish) from the
frames the receiver sent and the bytes in flight; it never touches a socket,
a file or a clock of its own. The async driver in ``sender`` performs its
effects and feeds it frames, and the same machine is tested frame by frame
without one.

Pipelining (docs/protocol.md): one OFFER is kept ahead of the batch being
streamed, so its HAVE travels while data does; at most ``window_bytes`` are
unacknowledged, checked per instance (acknowledgements come per instance, so
one larger than the window goes out whole while nothing else is in flight).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from dicomrelay.errors import DicomrelayError, ProtocolError
from dicomrelay.ledger import OutgoingInstance, OutgoingTransfer
from dicomrelay.protocol import Ack, Commit, Failure, Have, Kind, Nack, Offer, OfferedInstance

MAX_RESENDS = 3  # NACKs of one instance before the attempt gives up
OFFERS_AHEAD = 2  # batches offered and not yet wholly streamed


class AttemptFailed(DicomrelayError):
    """One attempt failed; ``retriable`` says whether another may succeed.
    ``code`` and ``receiver_message`` are the receiver's, when it ended the
    attempt with an ERROR frame (docs/protocol.md: code ``policy`` when its
    inbound rules refuse the study)."""

    def __init__(
        self,
        message: str,
        *,
        retriable: bool,
        code: str | None = None,
        receiver_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.code = code
        self.receiver_message = message if receiver_message is None else receiver_message


# Effects: what the driver is to do, in the order given.
@dataclass(frozen=True, slots=True)
class SendFrame:
    """Send one control frame."""

    kind: Kind
    payload: bytes


@dataclass(frozen=True, slots=True)
class StreamInstance:
    """Send ``instance`` as CHUNK frames on ``slot``, from byte ``start`` (a
    chunk boundary) to its end; report each chunk with ``streamed``."""

    slot: int
    instance: OutgoingInstance
    start: int


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """Instances the receiver holds durably: (index, seconds from first byte sent)."""

    indexes: tuple[tuple[int, float], ...]


@dataclass(frozen=True, slots=True)
class Finished:
    """The receiver's signed receipt (raw JSON), to verify and record."""

    receipt: bytes


Effect = SendFrame | StreamInstance | Acknowledged | Finished


@dataclass(slots=True)
class _Slot:
    number: int  # connection-local, named in OFFER, CHUNK, HAVE, ACK and NACK
    instance: OutgoingInstance
    start: int = 0  # the byte to send from (after HAVE or NACK)
    resends: int = 0
    first_sent: float | None = None  # when its first chunk was handed out


class SenderControl:
    """The decisions of one attempt to send ``instances`` (the ones not yet
    acknowledged) of ``transfer`` and commit it."""

    def __init__(
        self,
        transfer: OutgoingTransfer,
        instances: list[OutgoingInstance],
        *,
        offer_batch: int,
        window_bytes: int,
        now: float,
    ) -> None:
        self.transfer = transfer
        self.window_bytes = window_bytes
        self._batches: deque[list[tuple[int, OutgoingInstance]]] = deque()
        for start in range(0, len(instances), offer_batch):
            batch = instances[start : start + offer_batch]
            self._batches.append([(start + n, inst) for n, inst in enumerate(batch)])
        self._slots = {s: _Slot(s, inst) for batch in self._batches for s, inst in batch}
        self._awaiting_have: deque[list[int]] = deque()  # offered batches, in order
        self._to_stream: deque[int] = deque()  # slots whose HAVE is in, in order
        self._resend: deque[int] = deque()
        self._acked: list[tuple[int, float]] = []  # not yet reported
        self.in_flight = 0  # bytes handed out to stream, not yet acknowledged
        self._commit_sent = False
        self._receipt: bytes | None = None
        self.finished = False
        self.last_progress = now

    # Frames in.
    def receive(self, kind: Kind, payload: bytes, now: float) -> None:
        """A control frame from the receiver. Raises AttemptFailed for a refusal
        or a hopeless instance, ProtocolError for a frame out of place."""
        if kind is Kind.HAVE:
            self._have(Have.parse(payload), now)
        elif kind is Kind.ACK:
            self._acknowledge([s for s, _ in Ack.parse(payload).stored], now)
        elif kind is Kind.NACK:
            self._nack(Nack.parse(payload))
        elif kind is Kind.RECEIPT:
            if not self._commit_sent:
                raise ProtocolError("RECEIPT before COMMIT")
            self._receipt = payload
        elif kind is Kind.ERROR:
            f = Failure.parse(payload)
            raise AttemptFailed(
                f"receiver: {f.code}: {f.message}",
                retriable=f.retriable,
                code=f.code,
                receiver_message=f.message,
            )
        else:
            raise ProtocolError(f"unexpected {kind.name} from a receiver")

    def take_acknowledged(self) -> list[tuple[int, float]]:
        """The acknowledgements not yet reported, now (rather than with the next effects)."""
        acked, self._acked = self._acked, []
        return acked

    def streamed(self, nbytes: int, now: float) -> None:
        """A chunk went out: progress, as far as a stalled peer is concerned."""
        self.last_progress = now

    def stalled(self, now: float, timeout: float) -> bool:
        return now - self.last_progress > timeout

    # Effects out.
    def effects(self, now: float) -> list[Effect]:
        """What to do now; an empty list: wait for a frame."""
        out: list[Effect] = []
        if self.finished:
            return out
        if self._acked:
            out.append(Acknowledged(tuple(self._acked)))
            self._acked = []
        if self._receipt is not None:
            self.finished = True
            out.append(Finished(self._receipt))
            return out
        while self._batches and len(self._awaiting_have) + self._streaming() < OFFERS_AHEAD:
            out.append(self._offer(self._batches.popleft()))
        # Resends first; the rest waits for acknowledgements once the window is full.
        if self._hand_out(self._resend, out, now):
            self._hand_out(self._to_stream, out, now)
        everything_acknowledged = not (self._slots or self._batches or self._awaiting_have)
        if everything_acknowledged and not self._commit_sent:
            self._commit_sent = True
            out.append(SendFrame(Kind.COMMIT, Commit(transfer_id=self.transfer.id).payload()))
        return out

    # Decisions.
    def _streaming(self) -> int:
        """Batches whose HAVE is in but whose instances are still being handed out."""
        return 1 if self._to_stream else 0

    def _offer(self, batch: list[tuple[int, OutgoingInstance]]) -> SendFrame:
        t = self.transfer
        offer = Offer(
            transfer_id=t.id,
            study_instance_uid=t.study_instance_uid,
            priority=t.priority,
            digest=t.digest,
            chunk_size=t.chunk_size,
            total=t.total,
            instances=tuple(
                OfferedInstance(
                    slot=s,
                    index=i.index,
                    sop_instance_uid=i.sop_instance_uid,
                    size=i.size,
                    digest=i.digest,
                )
                for s, i in batch
            ),
        )
        self._awaiting_have.append([s for s, _ in batch])
        return SendFrame(Kind.OFFER, offer.payload())

    def _fits(self, slot: _Slot) -> bool:
        size = slot.instance.size - self._chunk_start(slot)
        return not self.in_flight or self.in_flight + min(size, self.window_bytes) <= (
            self.window_bytes
        )

    def _chunk_start(self, slot: _Slot) -> int:
        return slot.start - slot.start % self.transfer.chunk_size

    def _hand_out(self, queue: deque[int], out: list[Effect], now: float) -> bool:
        """Stream what the window admits from ``queue``; False once it is full."""
        while queue:
            slot = self._slots.get(queue[0])
            if slot is None:  # acknowledged meanwhile
                queue.popleft()
                continue
            if not self._fits(slot):
                return False
            queue.popleft()
            out.append(self._stream(slot, now))
        return True

    def _stream(self, slot: _Slot, now: float) -> StreamInstance:
        start = self._chunk_start(slot)
        slot.start = start
        if slot.first_sent is None:
            slot.first_sent = now
        self.in_flight += slot.instance.size - start
        return StreamInstance(slot.number, slot.instance, start)

    def _have(self, have: Have, now: float) -> None:
        if have.transfer_id != self.transfer.id:
            raise ProtocolError("HAVE names another transfer")
        if not self._awaiting_have:
            raise ProtocolError("HAVE without an OFFER")
        slots = self._awaiting_have.popleft()
        self.last_progress = now
        if have.receipt is not None:
            # Committed by an earlier attempt: nothing more travels.
            self._receipt = have.receipt
            return
        done = []
        for s in slots:
            held = have.offsets.get(s, 0)
            if held >= self._slots[s].instance.size:
                done.append(s)
            else:
                self._slots[s].start = held
                self._to_stream.append(s)
        self._acknowledge(done, now)

    def _acknowledge(self, slots: list[int], now: float) -> None:
        for s in slots:
            slot = self._slots.pop(s, None)
            if slot is None:
                continue
            latency = now - slot.first_sent if slot.first_sent is not None else 0.0
            self._acked.append((slot.instance.index, latency))
            if slot.first_sent is not None:
                self.in_flight = max(0, self.in_flight - (slot.instance.size - slot.start))
        self.last_progress = now

    def _nack(self, nack: Nack) -> None:
        slot = self._slots.get(nack.slot)
        if slot is None:
            return
        slot.resends += 1
        if slot.resends > MAX_RESENDS:
            raise AttemptFailed(
                f"instance {slot.instance.sop_instance_uid} refused {slot.resends} times"
                f" ({nack.reason})",
                retriable=True,
            )
        self.in_flight = max(0, self.in_flight - (slot.instance.size - slot.start))
        slot.start = nack.offset
        self._resend.append(nack.slot)
