"""Receipts: what a receiver stored, signed with its organisation key so a sender
can prove what arrived."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dicomrelay.errors import DicomrelayError


class ReceiptError(DicomrelayError):
    """A receipt whose signature does not verify against the receiver's certificate."""


@dataclass(frozen=True, kw_only=True)
class ReceivedInstance:
    sop_instance_uid: str
    digest: str
    size: int
    stored_at: float


@dataclass(frozen=True, kw_only=True)
class Receipt:
    """A receiver's signed statement of a committed transfer."""

    transfer_id: str
    sender: str
    receiver: str
    study_instance_uid: str
    digest_algorithm: str
    committed_at: float
    instances: tuple[ReceivedInstance, ...]
    signature: str | None = None

    def body(self) -> dict[str, Any]:
        """The signed content: everything but the signature."""
        return {
            "transfer_id": self.transfer_id,
            "sender": self.sender,
            "receiver": self.receiver,
            "study_instance_uid": self.study_instance_uid,
            "digest_algorithm": self.digest_algorithm,
            "committed_at": self.committed_at,
            "instances": [
                [i.sop_instance_uid, i.digest, i.size, i.stored_at] for i in self.instances
            ],
        }

    def canonical(self) -> bytes:
        return orjson.dumps(self.body(), option=orjson.OPT_SORT_KEYS)

    def to_json(self) -> bytes:
        return orjson.dumps({**self.body(), "signature": self.signature})

    @classmethod
    def from_json(cls, data: bytes | str) -> Receipt:
        d = orjson.loads(data)
        return cls(
            transfer_id=d["transfer_id"],
            sender=d["sender"],
            receiver=d["receiver"],
            study_instance_uid=d["study_instance_uid"],
            digest_algorithm=d["digest_algorithm"],
            committed_at=d["committed_at"],
            instances=tuple(
                ReceivedInstance(sop_instance_uid=u, digest=g, size=s, stored_at=t)
                for u, g, s, t in d["instances"]
            ),
            signature=d.get("signature"),
        )

    def signed(self, key_pem: bytes) -> Receipt:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ReceiptError("receipts are signed with an EC key")
        signature = key.sign(self.canonical(), ec.ECDSA(hashes.SHA256()))
        return Receipt(**{**self.__dict__, "signature": base64.b64encode(signature).decode()})

    def verify(self, receiver_cert_der: bytes) -> None:
        """Raise ReceiptError unless the receiver's certificate key signed this receipt."""
        if self.signature is None:
            raise ReceiptError(f"receipt of transfer {self.transfer_id} is not signed")
        public = x509.load_der_x509_certificate(receiver_cert_der).public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise ReceiptError("receiver certificate has no EC key")
        try:
            public.verify(
                base64.b64decode(self.signature), self.canonical(), ec.ECDSA(hashes.SHA256())
            )
        except (InvalidSignature, ValueError) as e:
            raise ReceiptError(f"receipt of transfer {self.transfer_id} does not verify") from e
