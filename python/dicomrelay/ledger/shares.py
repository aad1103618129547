"""What the ledger keeps of patient links (``dicomrelay share``): one row per
link, its secret only as a SHA-256 (found in one lookup, useless to a
thief), its PIN only as a salted scrypt hash (a PIN is short: slow to try),
the study it opens, when it expires, whether it was revoked, and the wrong
PINs entered in a row (locked at the limit). The statements here, rendered
by the ledger for its backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SHARE_COLUMNS = "id, study_uid, org, created, expires, revoked, pin_hash, pin_failures, locked"


@dataclass(frozen=True, kw_only=True, slots=True)
class ShareLink:
    """A patient link as the ledger holds it (never its secret)."""

    id: str
    study_uid: str
    org: str  # the organisation that made it (the node's own)
    created: float
    expires: float
    revoked: float | None
    pin_hash: str | None  # None: no PIN asked
    pin_failures: int  # wrong PINs since the last right one
    locked: float | None  # when too many wrong PINs locked it

    def state(self, now: float) -> str:
        """``active``, ``revoked``, ``locked`` or ``expired`` (in that order of precedence)."""
        if self.revoked is not None:
            return "revoked"
        if self.locked is not None:
            return "locked"
        if self.expires <= now:
            return "expired"
        return "active"


def share_from_row(row: Sequence[Any]) -> ShareLink:
    id_, study, org, created, expires, revoked, pin_hash, failures, locked = row
    return ShareLink(
        id=id_,
        study_uid=study,
        org=org,
        created=float(created),
        expires=float(expires),
        revoked=None if revoked is None else float(revoked),
        pin_hash=pin_hash,
        pin_failures=int(failures),
        locked=None if locked is None else float(locked),
    )


class ShareStatements:
    """The statements, as templates for ``Dialect.render``."""

    insert = (
        "INSERT INTO share_links (id, token_hash, study_uid, org, created, expires, pin_hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
    )
    by_hash = f"SELECT {SHARE_COLUMNS} FROM share_links WHERE token_hash = ?"
    by_id = f"SELECT {SHARE_COLUMNS} FROM share_links WHERE id = ?"
    every = f"SELECT {SHARE_COLUMNS} FROM share_links ORDER BY created DESC, id"
    revoke = (
        "UPDATE share_links SET revoked = ? WHERE (id = ? OR token_hash = ?) AND revoked IS NULL"
    )
    # One more wrong PIN, and the lock once it reaches the limit: one
    # statement, so that concurrent guesses cannot slip past the count.
    wrong_pin = (
        "UPDATE share_links SET pin_failures = pin_failures + 1,"
        " locked = CASE WHEN pin_failures + 1 >= ? THEN coalesce(locked, ?) ELSE locked END"
        " WHERE id = ? RETURNING pin_failures, locked"
    )
    right_pin = "UPDATE share_links SET pin_failures = 0 WHERE id = ? AND locked IS NULL"
