"""De-identification (PS3.15 Annex E) as a pure decision: the options, the
project key and what the instance's header holds in; the edits out.

Every attribute of Table E.1-1 is handled at every nesting level (the edits
apply "everywhere"), so the plan does not depend on which attributes are
present; the header is read only for what an option must compute from a
value: shifted dates, cleaned descriptors, pseudonyms, the private creators
that Retain Safe Private resolves, and the burned-in annotation check.

Table E.1-1 lets an implementation choose within a combined action according
to the IOD (Type 3, 2 or 1). The plan does not know the IOD, so it takes the
choice that keeps any IOD valid: X/Z becomes Z; X/D, X/Z/D and Z/D become D;
X/Z/U* keeps the sequence, whose items are cleaned like the rest and whose
instance UIDs are remapped. A sequence cannot take a meaningful dummy, so D on
a sequence empties it (no items), as Z does.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType

from dicomrelay.confidentiality_profile import (
    BASIC_PROFILE_CODE,
    OPTION_CODES,
    Option,
    ProfileRow,
    ProfileTable,
    profile_table,
)
from dicomrelay.deid_values import (
    clean_text,
    date_offset_days,
    dummy_value,
    first_vr,
    identifying_words,
    pseudonym,
    shift_date_value,
    words_pattern,
)
from dicomrelay.edits import (
    AddItem,
    Edit,
    Empty,
    RemapUids,
    Remove,
    RemovePrivate,
    Replace,
    Set,
)
from dicomrelay.errors import BurnedInAnnotation, ConfigurationError

__all__ = [
    "BURNED_IN_SOP_CLASSES",
    "MIN_KEY_BYTES",
    "DeidentificationPlan",
    "InstanceHeader",
    "Option",
    "SafePrivate",
    "burned_in_refusal",
    "check_options",
    "check_project_key",
    "plan_deidentification",
    "resolved_action",
    "tags_to_read",
]

MIN_KEY_BYTES = 16

SOP_CLASS_UID = 0x00080016
PATIENT_ID = 0x00100020
BURNED_IN_ANNOTATION = 0x00280301
RECOGNIZABLE_VISUAL_FEATURES = 0x00280302
PATIENT_IDENTITY_REMOVED = 0x00120062
DEIDENTIFICATION_METHOD = 0x00120063
DEIDENTIFICATION_METHOD_CODE_SEQUENCE = 0x00120064
LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED = 0x00280303
CODE_VALUE, CODING_SCHEME_DESIGNATOR, CODE_MEANING = 0x00080100, 0x00080102, 0x00080104

# SOP classes whose pixels often carry burned-in text (screen captures,
# ultrasound, video): without Burned In Annotation (0028,0301) they are refused.
BURNED_IN_SOP_CLASSES = MappingProxyType(
    {
        "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
        "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image",
        "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
        "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image",
        "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
        "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image (Retired)",
        "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image",
        "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image (Retired)",
        "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image",
        "1.2.840.10008.5.1.4.1.1.77.1.1.1": "Video Endoscopic Image",
        "1.2.840.10008.5.1.4.1.1.77.1.2.1": "Video Microscopic Image",
        "1.2.840.10008.5.1.4.1.1.77.1.4.1": "Video Photographic Image",
    }
)

_DUMMY_ACTIONS = frozenset({"D", "Z/D", "X/D", "X/Z/D"})
_TIMEZONE_OFFSET_FROM_UTC = 0x00080201
_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "CS"})
# The values whose words a cleaned descriptor must not repeat.
_IDENTIFYING_VRS = frozenset({"PN", "LO", "SH", "DA", "AE", "UC", "ST"})


@dataclass(frozen=True, kw_only=True, slots=True)
class InstanceHeader:
    """What the planner reads of one instance, all at the top level:
    ``values`` the text of the elements ``tags_to_read`` names that are
    present (padding stripped), ``private_creators`` each private creator
    element (gggg,00bb) and its value."""

    values: Mapping[int, str] = field(default_factory=dict)
    private_creators: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class SafePrivate:
    """A private attribute known to carry no identity (Retain Safe Private):
    ``element`` is the low byte of the element within the creator's block, as
    in (0019,xx23) of "GEMS_ACQU_01"."""

    group: int
    creator: str
    element: int


@dataclass(frozen=True, kw_only=True, slots=True)
class DeidentificationPlan:
    edits: tuple[Edit, ...]
    date_offset_days: int | None
    """The shift applied to dates (Retain Longitudinal ... Modified Dates), else None."""


def check_project_key(key: bytes) -> bytes:
    """The project key, or ConfigurationError when it cannot protect anything."""
    if not key:
        raise ConfigurationError("the project key is empty")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(
            f"the project key is {len(key)} bytes; at least {MIN_KEY_BYTES} are needed"
        )
    return key


def check_options(options: Collection[Option]) -> frozenset[Option]:
    chosen = frozenset(options)
    both = {Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}
    if both <= chosen:
        raise ConfigurationError(
            "retain-longitudinal-full-dates and retain-longitudinal-modified-dates exclude "
            "each other (PS3.15 E.3.6): choose one"
        )
    return chosen


def resolved_action(row: ProfileRow, options: Collection[Option]) -> str:
    """The row's action once the options are applied: an option's K (retain)
    wins over its C (clean), which wins over the Basic Profile's action."""
    chosen = {row.options[o.column] for o in options if o.column in row.options}
    if "K" in chosen:
        return "K"
    if "C" in chosen:
        return "C"
    return row.basic


def _cleanable(row: ProfileRow) -> bool:
    """Can action C be computed for this row's VR? Dates shift, times and
    timezones stay (the shift is in whole days), text is cleaned, AE titles
    get pseudonyms; a sequence or binary value falls back to the basic action."""
    return row.vr is not None and first_vr(row.vr) in _TEXT_VRS | {"DA", "DT", "TM", "AE"}


@dataclass(frozen=True, kw_only=True, slots=True)
class _Actions:
    """What the options make of the table, the same for every instance."""

    fixed: tuple[Edit, ...]
    """Edits that do not depend on the header, in the table's order."""
    uids: frozenset[int]
    cleaned: Mapping[int, ProfileRow]
    """The rows cleaned (C) from their top-level value, by tag."""
    patient_id: str | None
    """Patient ID's action when it takes a dummy (a keyed pseudonym), else None."""
    identifying: frozenset[int]
    to_read: frozenset[int]
    declarations: tuple[Edit, ...]


@lru_cache(maxsize=64)
def _actions(options: frozenset[Option], table: ProfileTable) -> _Actions:
    fixed: list[Edit] = []
    uids: set[int] = set()
    cleaned: list[ProfileRow] = []
    patient_id = None
    for row in table.rows:
        action = resolved_action(row, options)
        if action == "C" and not _cleanable(row):
            action = row.basic
        if action == "U" or (row.vr == "UI" and action in _DUMMY_ACTIONS):
            uids.add(row.tag)  # a UI's dummy is a consistent new UID
        elif action == "C":
            vr = first_vr(row.vr or "")
            if vr != "TM" and row.tag != _TIMEZONE_OFFSET_FROM_UTC:
                # Times and timezone offsets stay (dates move by whole days).
                # Otherwise every occurrence is emptied, and the top-level one
                # then gets its cleaned value, computed from the header.
                fixed.append(Empty(tag=row.tag))
                cleaned.append(row)
        elif row.tag == PATIENT_ID and action in _DUMMY_ACTIONS:
            patient_id = action
        else:
            fixed.extend(_basic(row, action))
    identifying = frozenset(
        row.tag
        for row in table.rows
        if row.mask == 0xFFFFFFFF
        and row.vr in _IDENTIFYING_VRS
        and resolved_action(row, options) not in ("K", "C")
    )
    to_read = {
        SOP_CLASS_UID,
        BURNED_IN_ANNOTATION,
        RECOGNIZABLE_VISUAL_FEATURES,
        PATIENT_ID,
        *(r.tag for r in cleaned),
    }
    assert all(r.mask == 0xFFFFFFFF for r in cleaned)
    if cleaned:
        to_read.update(identifying)
    return _Actions(
        fixed=tuple(fixed),
        uids=frozenset(uids),
        cleaned=MappingProxyType({r.tag: r for r in cleaned}),
        patient_id=patient_id,
        identifying=identifying,
        to_read=frozenset(to_read),
        declarations=tuple(_declarations(options, table)),
    )


def tags_to_read(options: Collection[Option], table: ProfileTable | None = None) -> frozenset[int]:
    """The top-level elements whose values ``plan_deidentification`` needs."""
    return _actions(frozenset(options), table or profile_table()).to_read


def burned_in_refusal(header: InstanceHeader) -> BurnedInAnnotation | None:
    """Why this instance's pixels may show identity, or None."""
    sop_class = header.values.get(SOP_CLASS_UID)
    burned_in = header.values.get(BURNED_IN_ANNOTATION, "").strip().upper()
    if burned_in == "YES":
        return BurnedInAnnotation("Burned In Annotation (0028,0301) is YES", sop_class)
    if header.values.get(RECOGNIZABLE_VISUAL_FEATURES, "").strip().upper() == "YES":
        # A face or other feature that identifies the patient by sight.
        return BurnedInAnnotation("Recognizable Visual Features (0028,0302) is YES", sop_class)
    if not burned_in and sop_class is not None and sop_class in BURNED_IN_SOP_CLASSES:
        return BurnedInAnnotation(
            f"{BURNED_IN_SOP_CLASSES[sop_class]} without Burned In Annotation (0028,0301) "
            "may show identity in its pixels",
            sop_class,
        )
    return None


def plan_deidentification(
    header: InstanceHeader,
    options: Collection[Option],
    key: bytes,
    *,
    safe_private: Iterable[SafePrivate] = (),
    allow_burned_in: bool = False,
    table: ProfileTable | None = None,
) -> DeidentificationPlan:
    """The edits that de-identify one instance, in the order they apply.

    Raises BurnedInAnnotation for an instance whose pixels may show identity
    (unless ``allow_burned_in``), ConfigurationError for a short key or
    options that exclude each other.
    """
    table = table or profile_table()
    key = check_project_key(key)
    options = check_options(options)
    if not allow_burned_in and (refusal := burned_in_refusal(header)) is not None:
        raise refusal
    actions = _actions(options, table)
    offset = date_offset_days(key) if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options else None
    edits: list[Edit] = [_private_edit(header, options, safe_private), *actions.fixed]
    if actions.patient_id is not None:
        value = header.values.get(PATIENT_ID)
        # A keyed pseudonym rather than one dummy for all: a patient's studies
        # stay linked within the project and apart from everyone else's.
        stand_in = pseudonym(key, "patient-id", value) if value else dummy_value("LO")
        edits.append(Replace(tag=PATIENT_ID, value=stand_in, vr="LO"))
    if actions.cleaned:
        words = words_pattern(
            identifying_words(header.values[t] for t in actions.identifying if t in header.values)
        )
        for tag in sorted(actions.cleaned.keys() & header.values.keys()):
            row = actions.cleaned[tag]
            if new := _cleaned_value(row, header.values[tag], key, offset, words):
                edits.append(Replace(tag=row.tag, value=new, vr=first_vr(row.vr or ""),
                                     everywhere=False))  # fmt: skip
    if actions.uids:
        edits.append(_remap_uids(actions.uids, key))
    edits.extend(actions.declarations)
    return DeidentificationPlan(edits=tuple(edits), date_offset_days=offset)


@lru_cache(maxsize=64)
def _remap_uids(tags: frozenset[int], key: bytes) -> RemapUids:
    # The same edit for every instance of a project: made (and its tags checked) once.
    return RemapUids(tags=tags, key=key)


_REMOVE_EVERY_PRIVATE = RemovePrivate()


def _private_edit(
    header: InstanceHeader, options: Collection[Option], safe: Iterable[SafePrivate]
) -> RemovePrivate:
    if Option.RETAIN_SAFE_PRIVATE not in options:
        return _REMOVE_EVERY_PRIVATE
    wanted: dict[tuple[int, str], set[int]] = {}
    for s in safe:
        wanted.setdefault((s.group, s.creator.strip()), set()).add(s.element)
    keep: set[int] = set()
    for creator_tag, creator in header.private_creators.items():
        group, block = creator_tag >> 16, creator_tag & 0xFF
        elements = wanted.get((group, creator.strip()))
        if elements:
            keep.add(creator_tag)
            keep.update((group << 16) | (block << 8) | e for e in elements)
    return RemovePrivate(keep=frozenset(keep))


def _basic(row: ProfileRow, action: str) -> list[Edit]:
    """Edits for K, X, Z, D and the combined actions (see the module's note)."""
    if action in ("K", "X/Z/U*"):
        return []
    if action == "X":
        return [Remove(tag=row.tag, mask=row.mask)]
    if row.mask != 0xFFFFFFFF:
        raise ValueError(f"{row.name}: action {action} on a repeating group")
    if action in ("Z", "X/Z") or row.vr == "SQ":
        return [Empty(tag=row.tag)]
    if action not in _DUMMY_ACTIONS or row.vr is None:
        raise ValueError(f"{row.name}: no edit for action {action}")
    vr = first_vr(row.vr)
    return [Replace(tag=row.tag, value=dummy_value(vr), vr=vr)]


def _cleaned_value(
    row: ProfileRow,
    value: str,
    key: bytes,
    offset: int | None,
    words: re.Pattern[str] | None,
) -> str | None:
    """Action C on a top-level value: dates shifted, AE titles pseudonymised,
    text cleaned; None leaves the element empty. (The edits cannot address a
    nested element by its own value, so nested occurrences stay emptied.)"""
    vr = first_vr(row.vr or "")
    if vr in ("DA", "DT"):
        return None if offset is None else shift_date_value(vr, value, offset)
    if vr == "AE":
        return "AE" + pseudonym(key, "ae-title", value, length=14)
    return clean_text(value, words)


def _declarations(options: frozenset[Option], table: ProfileTable) -> list[Edit]:
    """PS3.15 E.1.1: say that and how the instance was de-identified."""
    used = [o for o in Option if o in options]
    codes = [BASIC_PROFILE_CODE, *(OPTION_CODES[o] for o in used)]
    method = "\\".join([f"DICOM PS3.15 {table.edition} Basic Profile", *(m for _, m in codes[1:])])
    if Option.RETAIN_LONGITUDINAL_FULL_DATES in options:
        temporal = "UNMODIFIED"
    elif Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options:
        temporal = "MODIFIED"
    else:
        temporal = "REMOVED"
    edits: list[Edit] = [
        Set(tag=PATIENT_IDENTITY_REMOVED, value="YES", vr="CS"),
        Set(tag=DEIDENTIFICATION_METHOD, value=method, vr="LO"),
        Set(tag=LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED, value=temporal, vr="CS"),
    ]
    edits.extend(
        AddItem(
            sequence_tag=DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
            elements=(
                (CODE_VALUE, "SH", value),
                (CODING_SCHEME_DESIGNATOR, "SH", "DCM"),
                (CODE_MEANING, "LO", meaning),
            ),
        )
        for value, meaning in codes
    )
    return edits
