"""The values de-identification writes: dummies per VR (action D), dates
shifted by a per-project offset, keyed pseudonyms, and text cleaned of the
identifying values found in the same header. Pure functions."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable
from functools import lru_cache

# Action D: a non-zero-length value that carries nothing and is valid for the VR.
_DUMMY_TEXT = "ANONYMOUS"
_DUMMY: dict[str, bytes | str] = {
    "AE": _DUMMY_TEXT,
    "AS": "000Y",
    "CS": _DUMMY_TEXT,
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": _DUMMY_TEXT,
    "LT": _DUMMY_TEXT,
    "PN": _DUMMY_TEXT,
    "SH": _DUMMY_TEXT,
    "ST": _DUMMY_TEXT,
    "TM": "000000",
    "UC": _DUMMY_TEXT,
    "UR": "urn:uuid:00000000-0000-0000-0000-000000000000",
    "UT": _DUMMY_TEXT,
    "AT": b"\x00\x00\x00\x00",
    "FL": b"\x00\x00\x00\x00",
    "FD": b"\x00" * 8,
    "SL": b"\x00\x00\x00\x00",
    "SS": b"\x00\x00",
    "SV": b"\x00" * 8,
    "UL": b"\x00\x00\x00\x00",
    "US": b"\x00\x00",
    "UV": b"\x00" * 8,
}
_BINARY = ("OB", "OD", "OF", "OL", "OV", "OW", "UN")


def first_vr(vr: str) -> str:
    """PS3.6 gives some attributes several VRs ("US or SS", "OB or OW"): the first."""
    return vr.split(" or ")[0]


def dummy_value(vr: str) -> bytes | str:
    """A dummy (action D) for a value of this VR. Raises KeyError for SQ and UI,
    which the planner handles otherwise (emptied; remapped)."""
    vr = first_vr(vr)
    if vr in _BINARY:
        return b"\x00\x00" if vr in ("OB", "OW", "UN") else b"\x00" * (8 if vr in "ODOV" else 4)
    return _DUMMY[vr]


def _derive(key: bytes, label: str, value: str = "") -> bytes:
    return hmac.new(key, f"dicomrelay/{label}/{value}".encode(), hashlib.sha256).digest()


def date_offset_days(key: bytes) -> int:
    """The project's date shift: 1 to 3,652 days into the past, never none, the
    same for every instance de-identified with this key."""
    return -(1 + int.from_bytes(_derive(key, "date-offset")[:8], "big") % 3652)


def pseudonym(key: bytes, label: str, value: str, length: int = 16) -> str:
    """A keyed stand-in for an identifier: the same value and key give the same
    pseudonym (so one patient's studies stay linked within a project)."""
    return _derive(key, label, value).hex().upper()[:length]


_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})")


def _shift_date(text: str, days: int) -> str | None:
    m = _DATE.fullmatch(text)
    if m is None:
        return None
    try:
        day = dt.date(int(m[1]), int(m[2]), int(m[3])) + dt.timedelta(days=days)
        return f"{day.year:04d}{day.month:02d}{day.day:02d}"  # strftime drops a year's zeros
    except (ValueError, OverflowError):
        return None


def shift_date_value(vr: str, value: str, days: int) -> str | None:
    """A DA or DT value (multi-valued too) moved by ``days``; None when a value
    is not a full date this can shift (then the element is emptied instead)."""
    shifted = []
    for item in value.strip(" \x00").split("\\"):
        item = item.strip()
        if vr == "DA":
            new = _shift_date(item, days)
        elif vr == "DT" and len(item) >= 8:
            head = _shift_date(item[:8], days)
            new = None if head is None else head + item[8:]
        else:
            new = None
        if new is None:
            return None
        shifted.append(new)
    return "\\".join(shifted)


# What text cleaning also removes: long digit runs (record numbers, dates) and
# written dates.
_NUMBERS_AND_DATES = re.compile(r"\d{5,}|\b\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b", re.IGNORECASE)


def identifying_words(values: Iterable[str]) -> frozenset[str]:
    """The words of identifying values (names split at ^ and spaces, IDs whole),
    lower case, two characters or more."""
    words: set[str] = set()
    for value in values:
        for part in value.split("\\"):
            part = part.strip(" \x00").lower()
            if len(part) >= 2:
                words.add(part)
            words.update(w for w in re.split(r"[\^\s,=]+", part) if len(w) >= 2)
    return frozenset(words)


@lru_cache(maxsize=256)
def words_pattern(words: frozenset[str]) -> re.Pattern[str] | None:
    """One pattern for all the words, longest first, each standing alone (kept
    for the next instance: a study's instances share their patient's words)."""
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![0-9a-z])(?:{alternatives})(?![0-9a-z])", re.IGNORECASE)


def clean_text(text: str, words: re.Pattern[str] | None) -> str:
    """Action C on a descriptor: the text without the header's identifying words
    and values (``words_pattern``), numbers of five digits or more and written
    dates."""
    cleaned = _NUMBERS_AND_DATES.sub(" ", text)
    if words is not None:
        cleaned = words.sub(" ", cleaned)
    return " ".join(cleaned.split())
