"""Protocol messages: round trips, and untrusted payloads refused with ProtocolError."""

from __future__ import annotations

import contextlib
import socket

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomrelay._native import Channel
from dicomrelay.errors import ProtocolError
from dicomrelay.protocol import (
    Ack,
    Failure,
    Have,
    Hello,
    InboundInstance,
    Kind,
    Nack,
    Offer,
    OfferedInstance,
    Verdict,
)

DIGEST = "ab" * 32
TRANSFER = "0123456789abcdef" * 2


def offer(**overrides: object) -> Offer:
    fields: dict[str, object] = {
        "transfer_id": TRANSFER,
        "study_instance_uid": "1.2.3",
        "priority": "urgent",
        "digest": "sha256",
        "chunk_size": 1 << 20,
        "total": 2,
        "instances": (
            OfferedInstance(slot=0, index=0, sop_instance_uid="1.2.3.1", size=10, digest=DIGEST),
            OfferedInstance(slot=1, index=1, sop_instance_uid="1.2.3.2", size=20, digest=DIGEST),
        ),
    }
    fields.update(overrides)
    return Offer(**fields)  # type: ignore[arg-type]


def test_messages_round_trip() -> None:
    o = offer()
    assert Offer.parse(o.payload()) == o
    h = Have(transfer_id=TRANSFER, offsets={0: 10, 1: 0}, receipt=b'{"x":1}')
    assert Have.parse(h.payload()) == h
    a = Ack(stored=((0, 1.5), (1, 2.5)))
    assert Ack.parse(a.payload()) == a
    n = Nack(slot=3, offset=1024, reason="bad-digest")
    assert Nack.parse(n.payload()) == n
    f = Failure(code="storage", message="disk full", retriable=True, transfer_id=TRANSFER)
    assert Failure.parse(f.payload()) == f
    hello = Hello(protocol=1, org="RX1", digests=("sha256",))
    assert Hello.parse(hello.payload()) == hello


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"transfer": 5}',
        orjson.dumps({**orjson.loads(offer().payload()), "transfer": "../../etc/passwd"}),
        orjson.dumps({**orjson.loads(offer().payload()), "digest": "md5"}),
        orjson.dumps({**orjson.loads(offer().payload()), "priority": "whenever"}),
        orjson.dumps({**orjson.loads(offer().payload()), "chunk_size": 0}),
        orjson.dumps({**orjson.loads(offer().payload()), "instances": [[0, 5, "u", 1, DIGEST]]}),
        orjson.dumps({**orjson.loads(offer().payload()), "instances": [[0, 0, "u", -1, DIGEST]]}),
        orjson.dumps({**orjson.loads(offer().payload()), "instances": [[0, 0, "u", 1, "zz"]]}),
        orjson.dumps({**orjson.loads(offer().payload()), "instances": [[0, 0, "u", 1]]}),
    ],
)
def test_malformed_offers_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        Offer.parse(payload)


@given(st.binary(max_size=300))
def test_arbitrary_payloads_never_raise_anything_else(payload: bytes) -> None:
    for message in (Offer, Have, Ack, Nack, Failure, Hello):
        with contextlib.suppress(ProtocolError):
            message.parse(payload)


def test_inbound_instance_judges_order_size_and_digest() -> None:
    item = OfferedInstance(slot=0, index=0, sop_instance_uid="u", size=10, digest=DIGEST)
    inbound = InboundInstance(transfer_id=TRANSFER, offered=item)
    assert inbound.judge(4, 4, True) is Verdict.OUT_OF_ORDER
    assert inbound.judge(0, 4, False) is Verdict.BAD_DIGEST
    assert inbound.judge(0, 4, True) is Verdict.APPEND
    assert inbound.judge(4, 7, True) is Verdict.OVERRUN
    assert inbound.judge(4, 6, True) is Verdict.COMPLETE
    assert inbound.received == 10


def test_native_channel_refuses_garbage_frames() -> None:
    channel = Channel()
    with pytest.raises(ProtocolError):
        channel.receive(b"XX" + bytes(30))
    frames = Channel()
    sender = Channel()
    sender.send(int(Kind.OFFER), b"{}")
    got = frames.receive(bytes(sender.take_outgoing()))
    assert [(k, bytes(p)) for k, _, _, _, p, _, _ in got] == [(int(Kind.OFFER), b"{}")]


def test_native_channel_moves_frames_over_a_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        sender, receiver = Channel(), Channel()
        sender.send(int(Kind.OFFER), b"{}")
        assert sender.wants_write
        assert not sender.write_to(a.fileno())
        assert not sender.wants_write
        frames, closed = receiver.read_from(b.fileno())
        assert [(k, bytes(p)) for k, _, _, _, p, _, _ in frames] == [(int(Kind.OFFER), b"{}")]
        assert not closed
        assert receiver.read_from(b.fileno()) == ([], False)
        a.close()
        assert receiver.read_from(b.fileno()) == ([], True)
        receiver.send(int(Kind.HAVE), b"{}")
        with pytest.raises(BrokenPipeError):
            receiver.write_to(b.fileno())
