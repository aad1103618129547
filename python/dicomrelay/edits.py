"""The header edits decisions hand to the rewriter (``dicomrelay.rewrite``),
under the names the decision modules use: what to change, never how."""

from __future__ import annotations

from dicomrelay.rewrite import (
    AddItem,
    Edit,
    Empty,
    RemapUids,
    Remove,
    RemovePrivate,
    Replace,
    Set,
)
from dicomrelay.rewrite import NewElement as ItemElement

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
