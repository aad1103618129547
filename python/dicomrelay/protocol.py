"""The node-to-node wire protocol, version 1, sans-IO (see docs/protocol.md).

Frames are coded in Rust (``dicomrelay._native.Channel``); this module defines
the message kinds, their JSON payloads (parsed as untrusted input), and the pure
per-instance bookkeeping both sides share. Nothing here touches a socket.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from dicomrelay.errors import ProtocolError

PROTOCOL_VERSION = 1
_TRANSFER_ID = re.compile(r"^[0-9a-f]{32}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
DIGEST_FLAGS = {"sha256": 1, "blake3": 2}
PRIORITIES = ("urgent", "routine", "bulk")


class Kind(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    OFFER = 3
    CHUNK = 4  # the Rust codec checks this kind's digest
    HAVE = 5
    ACK = 6
    NACK = 7
    COMMIT = 8
    RECEIPT = 9
    ERROR = 10


T = TypeVar("T")


def _get(d: dict[str, Any], name: str, kind: type[T]) -> T:
    value = d.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"field {name!r} must be {kind.__name__}, got {value!r:.60}")
    return value


def _object(payload: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"payload is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise ProtocolError("payload must be a JSON object")
    return value


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message)


@dataclass(frozen=True, kw_only=True, slots=True)
class Hello:
    """The client's first frame. ``org`` is a claim, trusted only on an insecure
    plaintext connection; with TLS the certificate names the organisation."""

    protocol: int
    org: str
    digests: tuple[str, ...]

    def payload(self) -> bytes:
        return encode({"protocol": self.protocol, "org": self.org, "digests": list(self.digests)})

    @classmethod
    def parse(cls, payload: bytes) -> Hello:
        d = _object(payload)
        digests = _get(d, "digests", list)
        return cls(
            protocol=_get(d, "protocol", int),
            org=_get(d, "org", str),
            digests=tuple(map(str, digests)),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Welcome:
    protocol: int
    org: str

    def payload(self) -> bytes:
        return encode({"protocol": self.protocol, "org": self.org})

    @classmethod
    def parse(cls, payload: bytes) -> Welcome:
        d = _object(payload)
        return cls(protocol=_get(d, "protocol", int), org=_get(d, "org", str))


@dataclass(frozen=True, kw_only=True, slots=True)
class OfferedInstance:
    slot: int  # connection-local stream number of this instance's chunks
    index: int  # position in the transfer
    sop_instance_uid: str
    size: int
    digest: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Offer:
    transfer_id: str
    study_instance_uid: str
    priority: str
    digest: str
    chunk_size: int
    total: int  # instances in the whole transfer (this offer may carry some of them)
    instances: tuple[OfferedInstance, ...]

    def payload(self) -> bytes:
        return encode(
            {
                "transfer": self.transfer_id,
                "study": self.study_instance_uid,
                "priority": self.priority,
                "digest": self.digest,
                "chunk_size": self.chunk_size,
                "total": self.total,
                "instances": [
                    [i.slot, i.index, i.sop_instance_uid, i.size, i.digest] for i in self.instances
                ],
            }
        )

    @classmethod
    def parse(cls, payload: bytes) -> Offer:
        d = _object(payload)
        digest = _get(d, "digest", str)
        if digest not in DIGEST_FLAGS:
            raise ProtocolError(f"unknown digest algorithm {digest!r}")
        priority = _get(d, "priority", str)
        if priority not in PRIORITIES:
            raise ProtocolError(f"unknown priority {priority!r}")
        chunk_size = _get(d, "chunk_size", int)
        if not 1 <= chunk_size <= 16 << 20:
            raise ProtocolError(f"chunk size {chunk_size} out of range")
        total = _get(d, "total", int)
        instances = []
        for item in _get(d, "instances", list):
            if not (isinstance(item, list) and len(item) == 5):
                raise ProtocolError("an offered instance is [slot, index, uid, size, digest]")
            slot, index, uid, size, dig = item
            if not (
                isinstance(slot, int)
                and isinstance(index, int)
                and isinstance(uid, str)
                and isinstance(size, int)
                and isinstance(dig, str)
                and _DIGEST.match(dig)
                and 0 <= index < total
                and size >= 0
                and 0 <= slot < 1 << 32
            ):
                raise ProtocolError(f"malformed offered instance {item!r:.80}")
            instances.append(
                OfferedInstance(slot=slot, index=index, sop_instance_uid=uid, size=size, digest=dig)
            )
        transfer_id = _get(d, "transfer", str)
        if not _TRANSFER_ID.match(transfer_id):
            raise ProtocolError(f"transfer id {transfer_id!r:.60} is not 32 hex digits")
        return cls(
            transfer_id=transfer_id,
            study_instance_uid=_get(d, "study", str),
            priority=priority,
            digest=digest,
            chunk_size=chunk_size,
            total=total,
            instances=tuple(instances),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Have:
    """The receiver's answer to an offer: bytes already durable per slot, or the
    receipt when the transfer was already committed."""

    transfer_id: str
    offsets: dict[int, int]
    receipt: bytes | None = None

    def payload(self) -> bytes:
        return encode(
            {
                "transfer": self.transfer_id,
                "have": [[s, o] for s, o in self.offsets.items()],
                "receipt": self.receipt.decode() if self.receipt else None,
            }
        )

    @classmethod
    def parse(cls, payload: bytes) -> Have:
        d = _object(payload)
        offsets: dict[int, int] = {}
        for item in _get(d, "have", list):
            if not (
                isinstance(item, list) and len(item) == 2 and all(isinstance(x, int) for x in item)
            ):
                raise ProtocolError("a held instance is [slot, offset]")
            offsets[item[0]] = item[1]
        receipt = d.get("receipt")
        if receipt is not None and not isinstance(receipt, str):
            raise ProtocolError("receipt must be a string")
        return cls(
            transfer_id=_get(d, "transfer", str),
            offsets=offsets,
            receipt=receipt.encode() if receipt else None,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Ack:
    """Instances now durable at the receiver: (slot, stored_at) pairs."""

    stored: tuple[tuple[int, float], ...]

    def payload(self) -> bytes:
        return encode({"stored": [list(s) for s in self.stored]})

    @classmethod
    def parse(cls, payload: bytes) -> Ack:
        stored = []
        for item in _get(_object(payload), "stored", list):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)):
                raise ProtocolError("an acknowledgement is [slot, stored_at]")
            stored.append((item[0], float(item[1])))
        return cls(stored=tuple(stored))


@dataclass(frozen=True, kw_only=True, slots=True)
class Nack:
    """A chunk refused: send the instance again from ``offset``."""

    slot: int
    offset: int
    reason: str

    def payload(self) -> bytes:
        return encode({"slot": self.slot, "offset": self.offset, "reason": self.reason})

    @classmethod
    def parse(cls, payload: bytes) -> Nack:
        d = _object(payload)
        return cls(
            slot=_get(d, "slot", int), offset=_get(d, "offset", int), reason=_get(d, "reason", str)
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Commit:
    transfer_id: str

    def payload(self) -> bytes:
        return encode({"transfer": self.transfer_id})

    @classmethod
    def parse(cls, payload: bytes) -> Commit:
        return cls(transfer_id=_get(_object(payload), "transfer", str))


@dataclass(frozen=True, kw_only=True, slots=True)
class Failure:
    """An ERROR frame. ``retriable`` failures (a full disk, a restart) are worth
    sending again later; others (an unknown organisation) are not."""

    code: str
    message: str
    retriable: bool
    transfer_id: str | None = None

    def payload(self) -> bytes:
        return encode(
            {
                "code": self.code,
                "message": self.message,
                "retriable": self.retriable,
                "transfer": self.transfer_id,
            }
        )

    @classmethod
    def parse(cls, payload: bytes) -> Failure:
        d = _object(payload)
        transfer = d.get("transfer")
        return cls(
            code=_get(d, "code", str),
            message=_get(d, "message", str),
            retriable=_get(d, "retriable", bool),
            transfer_id=transfer if isinstance(transfer, str) else None,
        )


class Verdict(enum.Enum):
    """What the receiver does with one chunk."""

    APPEND = "append"  # in order and intact; more to come
    COMPLETE = "complete"  # in order and intact; the instance is whole
    BAD_DIGEST = "bad-digest"  # refuse, ask again from the same offset
    OUT_OF_ORDER = "out-of-order"  # refuse, ask again from the expected offset
    OVERRUN = "overrun"  # more bytes than offered: a protocol error


@dataclass(slots=True)
class InboundInstance:
    """Receiver-side progress of one offered instance on one connection."""

    transfer_id: str
    offered: OfferedInstance
    received: int = 0
    refused: bool = False  # a NACK is out; later chunks in flight are dropped unanswered

    def judge(self, offset: int, length: int, digest_ok: bool | None) -> Verdict:
        if offset != self.received:
            return Verdict.OUT_OF_ORDER
        if offset + length > self.offered.size:
            return Verdict.OVERRUN
        if digest_ok is not True:
            return Verdict.BAD_DIGEST
        self.received += length
        return Verdict.COMPLETE if self.received == self.offered.size else Verdict.APPEND
