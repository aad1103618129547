"""PS3.15 Table E.1-1 as data: each attribute's action under the Basic
Application Level Confidentiality Profile and under each option.

The rows are read from ``data/confidentiality_profile.json``, converted from
the standard's published tables by ``tools/confidentiality_profile.py`` (the
file names the edition and the source). Nothing here is typed from the table.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any


class Option(enum.Enum):
    """The options of PS3.15 E.3 this engine implements. The value is the name
    used on the command line and in configuration."""

    RETAIN_LONGITUDINAL_FULL_DATES = "retain-longitudinal-full-dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain-longitudinal-modified-dates"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"
    RETAIN_UIDS = "retain-uids"
    RETAIN_SAFE_PRIVATE = "retain-safe-private"
    CLEAN_DESCRIPTORS = "clean-descriptors"

    @property
    def column(self) -> str:
        """The option's column name in the data file."""
        return self.value.replace("-", "_")


# CID 7050 "De-identification Method" (PS3.16), coding scheme DCM: the profile
# and each option, for De-identification Method Code Sequence (0012,0064).
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
OPTION_CODES: MappingProxyType[Option, tuple[str, str]] = MappingProxyType(
    {
        Option.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
        Option.RETAIN_LONGITUDINAL_FULL_DATES: (
            "113106",
            "Retain Longitudinal Temporal Information Full Dates Option",
        ),
        Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
            "113107",
            "Retain Longitudinal Temporal Information Modified Dates Option",
        ),
        Option.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
        Option.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
        Option.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
        Option.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
        Option.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
    }
)

ACTIONS = frozenset({"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})


@dataclass(frozen=True, kw_only=True, slots=True)
class ProfileRow:
    """One attribute of Table E.1-1. ``mask`` covers repeating groups: the row
    applies to every tag ``t`` with ``t & mask == tag``. ``vr`` is PS3.6's
    (possibly "US or SS"), None for the command group and curves."""

    tag: int
    mask: int
    name: str
    vr: str | None
    basic: str
    options: MappingProxyType[str, str]

    def matches(self, tag: int) -> bool:
        return tag & self.mask == self.tag


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class ProfileTable:
    """Table E.1-1 of one edition (compared and hashed by identity: one a process)."""

    edition: str
    source: str
    rows: tuple[ProfileRow, ...]
    private_basic: str
    private_options: MappingProxyType[str, str]

    def row(self, tag: int) -> ProfileRow | None:
        """The row that covers ``tag``, or None for an attribute the table does not list."""
        for r in self.rows:
            if r.matches(tag):
                return r
        return None


def _row(raw: dict[str, Any]) -> ProfileRow:
    actions = [raw["basic"], *raw["options"].values()]
    if any(a not in ACTIONS for a in actions):
        raise ValueError(f"confidentiality profile: unknown action in {raw['tag']}: {actions}")
    return ProfileRow(
        tag=int(raw["tag"], 16),
        mask=int(raw["mask"], 16),
        name=raw["name"],
        vr=raw["vr"],
        basic=raw["basic"],
        options=MappingProxyType(dict(raw["options"])),
    )


@cache
def profile_table() -> ProfileTable:
    """Table E.1-1 as shipped with the package (read once)."""
    text = resources.files("dicomrelay").joinpath("data/confidentiality_profile.json").read_text()
    document = json.loads(text)
    source = document["source"]
    return ProfileTable(
        edition=document["edition"],
        source=f"{source['repository']} {source['commit'][:12]}",
        rows=tuple(_row(r) for r in document["attributes"]),
        private_basic=document["private"]["basic"],
        private_options=MappingProxyType(dict(document["private"]["options"])),
    )
