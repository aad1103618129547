"""The header edits of the rewrite contract: what to change, never how.

Small frozen keyword-only dataclasses, passed as a sequence to
``dicomrelay.rewrite.rewrite`` / ``rewrite_file`` (the Rust header rewriter)
and made by the decision functions (``dicomrelay.deidentify``). Edits apply in
the order given: a later edit sees what an earlier one left. Tags are ints such
as ``0x00100010``; "everywhere" means at every nesting level, in every item of
every sequence, and otherwise at the top level only.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AddItem",
    "Edit",
    "Empty",
    "ItemElement",
    "RemapUids",
    "Remove",
    "RemovePrivate",
    "Replace",
    "Set",
]  # fmt: skip


@dataclass(frozen=True, kw_only=True, slots=True)
class Set:
    """Set a top-level element's value, inserting it in tag order if absent."""

    tag: int
    value: bytes | str
    vr: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Replace:
    """Replace the value where the element exists; never inserted."""

    tag: int
    value: bytes | str
    vr: str
    everywhere: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class Empty:
    """Keep the element with a zero-length value (a sequence with no items)."""

    tag: int
    everywhere: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class Remove:
    """Remove every element whose ``tag & mask`` equals ``self.tag & mask``
    (a mask of 0xFF00FFFF covers the repeating groups 50xx and 60xx)."""

    tag: int
    mask: int = 0xFFFFFFFF
    everywhere: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class RemovePrivate:
    """Remove every element of an odd group (private creators too) except ``keep``."""

    keep: frozenset[int] = frozenset()
    everywhere: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class RemapUids:
    """Each UI value of the tags (None: every instance UID) becomes
    ``"2.25." + str(int.from_bytes(hmac_sha256(key, uid)[:16], "big"))``."""

    tags: frozenset[int] | None
    key: bytes
    everywhere: bool = True


# (tag, vr, value); a value of VR "SQ" is a tuple of items, each a tuple of these.
ItemElement = tuple[int, str, object]


@dataclass(frozen=True, kw_only=True, slots=True)
class AddItem:
    """Append an item to a top-level sequence, creating the sequence if absent."""

    sequence_tag: int
    elements: tuple[ItemElement, ...]


Edit = Set | Replace | Empty | Remove | RemovePrivate | RemapUids | AddItem
