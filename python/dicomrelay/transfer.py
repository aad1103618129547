"""A caller's handle on one outgoing transfer: its events and its receipt."""

from __future__ import annotations

import enum
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from dicomrelay.errors import DicomrelayError, PolicyRefused
from dicomrelay.ledger.quarantine import HeldInstance
from dicomrelay.receipt import Receipt


class TransferFailed(DicomrelayError):
    """The transfer is a dead letter: out of attempts, or refused for good."""


class RefusedByReceiver(TransferFailed, PolicyRefused):
    """The receiving organisation's inbound rules refused the study: a dead
    letter at once (its rules will not change their mind on a retry). Caught
    as either a failed transfer or a policy refusal."""


# How the ledger records why a transfer failed, written and read back here
# only: a receiver's policy refusal starts with this, so that a process that
# learns of the dead letter from the ledger alone (``dicomrelay send``
# following a serving node) raises the same typed error as the one that sent.
RECEIVER_POLICY_REFUSAL = "refused by the receiver's policy: "


def failure_reason(error: BaseException) -> str:
    """What the ledger keeps as the reason an attempt failed. ``code`` is the
    one the receiver's ERROR frame carried (``sender_control.AttemptFailed``)."""
    if getattr(error, "code", None) == "policy":
        return RECEIVER_POLICY_REFUSAL + getattr(error, "receiver_message", str(error))
    return f"{type(error).__name__}: {error}"


def transfer_failed(transfer_id: str, reason: str | None) -> TransferFailed:
    """The error a dead letter raises, typed by the reason the ledger keeps."""
    message = f"transfer {transfer_id} failed: {reason or 'dead letter'}"
    if reason is not None and reason.startswith(RECEIVER_POLICY_REFUSAL):
        return RefusedByReceiver(message)
    return TransferFailed(message)


class UnknownTransfer(DicomrelayError):
    """No transfer of that id in the ledger."""


class NotADeadLetter(DicomrelayError):
    """Only a dead letter can be queued again (``dicomrelay retry``)."""


class EventKind(enum.StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    INSTANCE_SENT = "instance_sent"
    VERIFIED = "verified"  # the receiver holds the instance durably
    COMMITTED = "committed"
    RETRYING = "retrying"
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    kind: EventKind
    transfer_id: str
    at: float = field(default_factory=time.time)
    index: int | None = None  # the instance, for instance events
    detail: str = ""
    latency: float | None = None  # VERIFIED: seconds from its first byte sent to durable


class Transfer:
    """Returned by ``Node.send``. ``await wait()`` gives the signed receipt."""

    def __init__(self, transfer_id: str, *, held: tuple[HeldInstance, ...] = ()) -> None:
        """``held``: the instances of its study held in quarantine instead of
        sent (their pixels may show identity; see ``dicomrelay.quarantine``)."""
        self.id = transfer_id
        self.held = held
        self._done = anyio.Event()
        self._receipt: Receipt | None = None
        self._error: str | None = None
        self._subscribers: list[MemoryObjectSendStream[Event]] = []
        # Every event so far, until the transfer ends: a subscriber that starts
        # after ``send`` returned still sees its ``queued`` event first.
        self._history: list[Event] = []

    def __repr__(self) -> str:
        return f"Transfer({self.id!r})"

    async def wait(self) -> Receipt:
        await self._done.wait()
        if self._receipt is None:
            raise transfer_failed(self.id, self._error)
        return self._receipt

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def events(self) -> AsyncIterator[Event]:
        """Every event of the transfer, from the first (``queued`` for one this
        node queued) until it is committed or failed; nothing once it ended."""
        send, receive = anyio.create_memory_object_stream[Event](math.inf)
        if self.done:
            send.close()
        else:
            for event in self._history:
                send.send_nowait(event)
            self._subscribers.append(send)
        async with receive:
            async for event in receive:
                yield event

    def publish(self, event: Event) -> None:
        for s in self._subscribers:
            s.send_nowait(event)
        if event.kind in (EventKind.COMMITTED, EventKind.FAILED):
            for s in self._subscribers:
                s.close()
            self._subscribers.clear()
            self._history.clear()
        else:
            self._history.append(event)

    def finish(self, receipt: Receipt | None, error: str | None = None) -> None:
        self._receipt = receipt
        self._error = error
        self._done.set()
