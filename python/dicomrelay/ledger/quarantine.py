"""What the ledger keeps of held instances (the quarantine): one row per
instance a node holds back instead of sending or storing it, with the kind of
hold, the reason a person reads, where the held bytes are and what releasing
it needs. The records and their statements here; the calls are
``QuarantineLedger``'s, part of ``SqlLedger``."""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from dicomrelay.errors import NotHeld
from dicomrelay.ledger.dialect import Dialect
from dicomrelay.ledger.work import Query, Row, Work

if TYPE_CHECKING:
    from dicomrelay.ledger.ledger import Driver


# Kinds of hold. Each side adds its own; a kind is text in the ledger.
BURNED_IN = "burned-in-annotation"  # sending: pixels may show identity, de-identified data only
DICOM_REFUSED = "dicom-refused"  # receiving: a C-STORE dataset the node's storage SCP refused


class HoldState(enum.StrEnum):
    HELD = "held"  # waiting for an operator
    RELEASED = "released"  # sent (or stored) after all: ``resolution`` says how
    DELETED = "deleted"  # its bytes removed; the row stays, for the record


@dataclass(frozen=True, kw_only=True, slots=True)
class HeldInstance:
    """One instance held back. ``kind`` names the reason's kind (``burned-in
    -annotation`` on the way out; the receiving side adds its own), ``reason``
    says it for a person. ``direction`` is ``send`` (held instead of sent to
    ``org``) or ``receive`` (held instead of stored, from ``org``).
    ``location`` is where the held bytes are (a file path, or ``store:`` and
    a digest); ``context`` what releasing it needs (priority, source AE...)."""

    id: str
    kind: str
    direction: str
    org: str
    study_uid: str
    sop_uid: str
    patient_id: str | None
    digest: str
    size: int
    location: str
    reason: str
    context: Mapping[str, str] = field(default_factory=dict)
    held: float = 0.0
    state: HoldState = HoldState.HELD
    resolved: float | None = None
    resolution: str | None = None  # a release's transfer, or why it was deleted

    def as_dict(self) -> dict[str, object]:
        """As ``quarantine list --json`` and ``status --json`` print it."""
        return {
            "id": self.id,
            "kind": self.kind,
            "direction": self.direction,
            "org": self.org,
            "study": self.study_uid,
            "sop_instance": self.sop_uid,
            "patient_id": self.patient_id,
            "digest": self.digest,
            "size": self.size,
            "location": self.location,
            "reason": self.reason,
            "context": dict(self.context),
            "held": self.held,
            "state": self.state.value,
            "resolved": self.resolved,
            "resolution": self.resolution,
        }


COLUMNS = (
    "id, kind, direction, org, study_uid, sop_uid, patient_id, digest, size, location,"
    " reason, context, held, state, resolved, resolution"
)


def held_row(h: HeldInstance, now: float) -> tuple[Any, ...]:
    return (
        h.id,
        h.kind,
        h.direction,
        h.org,
        h.study_uid,
        h.sop_uid,
        h.patient_id,
        h.digest,
        h.size,
        h.location,
        h.reason,
        orjson.dumps(dict(h.context)).decode(),
        h.held or now,
        HoldState.HELD.value,
        None,
        None,
    )


def held_from_row(r: Row) -> HeldInstance:
    return HeldInstance(
        id=r[0],
        kind=r[1],
        direction=r[2],
        org=r[3],
        study_uid=r[4],
        sop_uid=r[5],
        patient_id=r[6],
        digest=r[7],
        size=int(r[8]),
        location=r[9],
        reason=r[10],
        context=orjson.loads(r[11]),
        held=float(r[12]),
        state=HoldState(r[13]),
        resolved=None if r[14] is None else float(r[14]),
        resolution=r[15],
    )


class QuarantineStatements:
    """The quarantine's SQL in one backend's dialect, rendered once."""

    def __init__(self, dialect: Dialect) -> None:
        sql = dialect.render
        self.insert = sql(f"INSERT INTO quarantine ({COLUMNS}) VALUES ({', '.join('?' * 16)})")
        self.by_id = sql(f"SELECT {COLUMNS} FROM quarantine WHERE id = ?")
        self.in_state = sql(
            f"SELECT {COLUMNS} FROM quarantine WHERE state = ? ORDER BY held, id LIMIT ?"
        )
        self.every = sql(f"SELECT {COLUMNS} FROM quarantine ORDER BY held, id LIMIT ?")
        # Only a held instance is resolved, once: two operators releasing the
        # same one at once cannot both send it.
        self.resolve = sql(
            "UPDATE quarantine SET state = ?, resolved = ?, resolution = ?"
            " WHERE id = ? AND state = 'held'"
        )
        self.held_by_kind = sql(
            "SELECT kind, count(*) FROM quarantine WHERE state = 'held' GROUP BY kind"
        )


def hold_rows(held: Sequence[HeldInstance]) -> list[tuple[Any, ...]]:
    now = time.time()
    return [held_row(h, now) for h in held]


def resolve(
    q: QuarantineStatements, hold_id: str, state: HoldState, resolution: str | None
) -> Work[None]:
    """Resolve a held instance, or NotHeld (rolling the transaction back)."""
    changed = yield Query(q.resolve, (state.value, time.time(), resolution, hold_id))
    if changed.rowcount != 1:
        raise NotHeld(f"no held instance {hold_id!r} (released or deleted already, or unknown)")


class QuarantineLedger:
    """The quarantine's calls, mixed into ``SqlLedger`` (each one transaction)."""

    _driver: Driver
    _quarantine: QuarantineStatements

    async def hold(self, held: Sequence[HeldInstance]) -> None:
        """Record instances held back."""
        rows = hold_rows(held)
        q = self._quarantine

        def work() -> Work[None]:
            yield Query(q.insert, rows, many=True)

        await self._driver.run(work)

    async def held_instance(self, hold_id: str) -> HeldInstance | None:
        q = self._quarantine

        def work() -> Work[list[Row]]:
            return (yield Query(q.by_id, (hold_id,))).rows

        rows = await self._driver.run(work)
        return held_from_row(rows[0]) if rows else None

    async def held_instances(
        self, state: HoldState | None = HoldState.HELD, *, limit: int = 1000
    ) -> list[HeldInstance]:
        """Held instances in ``state`` (None: every one), oldest first."""
        q = self._quarantine
        query = (
            Query(q.every, (limit,)) if state is None else Query(q.in_state, (state.value, limit))
        )

        def work() -> Work[list[Row]]:
            return (yield query).rows

        return [held_from_row(r) for r in await self._driver.run(work)]

    async def resolve_hold(self, hold_id: str, state: HoldState, resolution: str | None) -> None:
        """Mark a held instance released or deleted; NotHeld if it is not held."""
        q = self._quarantine
        await self._driver.run(lambda: resolve(q, hold_id, state, resolution))

    async def held_counts(self) -> dict[str, int]:
        """Instances held now, by kind."""
        q = self._quarantine

        def work() -> Work[list[Row]]:
            return (yield Query(q.held_by_kind)).rows

        return {str(kind): int(n) for kind, n in await self._driver.run(work)}
