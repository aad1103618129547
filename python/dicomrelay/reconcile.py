"""Patient-ID reconciliation of a foreign study (IHE IRWF.b), as decisions.

A study from another organisation carries that organisation's patient ID and
accession number; filed as it is, it lands under the wrong patient or as a
stranger. An inbound rule maps it to the local patient, found by NHS number
or by the sender's (issuer, patient ID) in a mapping the operator provides (a
CSV file, a table of the ledger's database, or a callable when embedded),
before it is stored for or sent on to the PACS. No match is never guessed:
the study is held until an operator resolves it.

The changes are header edits (``dicomrelay.edits``) for the Rust rewriter: the
local IDs set, the accession number prefixed or replaced, the institution
name set if the rule says so, the original values kept in Original Attributes
Sequence (0400,0561) with the modifying system, the reason (COERCE) and the
time, and the sender's IDs added to Other Patient IDs Sequence (0010,1002), as
PS3.3 C.12.1 and C.7.1.1 ask.
"""

from __future__ import annotations

import csv
import datetime
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar

from dicomrelay.edits import AddItem, Edit, ItemElement, Set
from dicomrelay.errors import ConfigurationError, PatientMappingError

ACCESSION_NUMBER = 0x00080050
INSTITUTION_NAME = 0x00080080
PATIENT_ID = 0x00100020
ISSUER_OF_PATIENT_ID = 0x00100021
TYPE_OF_PATIENT_ID = 0x00100022
OTHER_PATIENT_IDS_SEQUENCE = 0x00101002
MODIFIED_ATTRIBUTES_SEQUENCE = 0x04000550
ORIGINAL_ATTRIBUTES_SEQUENCE = 0x04000561
ATTRIBUTE_MODIFICATION_DATETIME = 0x04000562
MODIFYING_SYSTEM = 0x04000563
SOURCE_OF_PREVIOUS_VALUES = 0x04000564
REASON_FOR_THE_ATTRIBUTE_MODIFICATION = 0x04000565

K = TypeVar("K")
MatchBy = Literal["nhs-number", "sender-id"]
MATCHES: tuple[MatchBy, ...] = ("nhs-number", "sender-id")

# The elements whose original values the plan needs (and may change).
TAGS_TO_READ = (PATIENT_ID, ISSUER_OF_PATIENT_ID, ACCESSION_NUMBER, INSTITUTION_NAME)
_VR = {ACCESSION_NUMBER: "SH", INSTITUTION_NAME: "LO", PATIENT_ID: "LO", ISSUER_OF_PATIENT_ID: "LO"}
_MAX_CHARS = {"SH": 16, "LO": 64}

# Issuers under which a Patient ID is an NHS number (England and Wales): the
# names in use and the NHS number's OID.
NHS_ISSUERS = frozenset({"NHS", "NHSN", "NHS NUMBER", "2.16.840.1.113883.2.1.4.1"})
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def valid_nhs_number(text: str) -> bool:
    """Ten digits (spaces allowed between) whose last is the modulus 11 check
    digit of the nine before; a remainder giving 10 makes no valid number."""
    digits = text.replace(" ", "")
    if len(digits) != 10 or not (digits.isascii() and digits.isdigit()):
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


@dataclass(frozen=True, kw_only=True, slots=True)
class ForeignPatient:
    """The patient as the sending organisation names them."""

    sender: str  # the sending organisation's code
    patient_id: str | None
    issuer: str | None

    @property
    def nhs_number(self) -> str | None:
        """The Patient ID when its issuer says it is an NHS number and it is a valid one."""
        if self.patient_id is None or (self.issuer or "").strip().upper() not in NHS_ISSUERS:
            return None
        number = self.patient_id.replace(" ", "")
        return number if valid_nhs_number(number) else None


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalPatient:
    patient_id: str
    issuer: str | None = None


def foreign_patient(sender: str, values: Mapping[int, str]) -> ForeignPatient:
    """The foreign patient an instance's header names (``values``: TAGS_TO_READ)."""
    return ForeignPatient(
        sender=sender,
        patient_id=values.get(PATIENT_ID) or None,
        issuer=values.get(ISSUER_OF_PATIENT_ID) or None,
    )


class PatientIndex(Protocol):
    """Where a foreign patient's local identity is looked up, trying the ways
    ``match`` names in its order; None: no match. PatientMappingError: the
    mapping is unusable or names two local patients (never chosen between)."""

    async def find(
        self, foreign: ForeignPatient, match: tuple[MatchBy, ...]
    ) -> LocalPatient | None: ...


def _sender_keys(foreign: ForeignPatient) -> list[tuple[str, str, str]]:
    """A mapping row for this sender first, then one for any sender ("")."""
    if foreign.patient_id is None:
        return []
    issuer = foreign.issuer or ""
    return [(foreign.sender, issuer, foreign.patient_id), ("", issuer, foreign.patient_id)]


class CsvPatientIndex:
    """A mapping file the operator keeps: a header line, then one patient a
    line. Columns: ``local_patient_id`` (required), ``local_issuer``, and for
    the match ``nhs_number``, or ``sender`` (an organisation code; empty: any),
    ``issuer`` and ``patient_id``. Read again whenever it changes; a mistake
    in it raises PatientMappingError naming the line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._by_nhs: dict[str, LocalPatient] = {}
        self._by_id: dict[tuple[str, str, str], LocalPatient] = {}

    async def find(
        self, foreign: ForeignPatient, match: tuple[MatchBy, ...]
    ) -> LocalPatient | None:
        self._load_if_changed()
        for way in match:
            if way == "nhs-number":
                nhs = foreign.nhs_number
                if nhs is not None and nhs in self._by_nhs:
                    return self._by_nhs[nhs]
            else:
                for key in _sender_keys(foreign):
                    if key in self._by_id:
                        return self._by_id[key]
        return None

    def _load_if_changed(self) -> None:
        try:
            stat = self.path.stat()
        except OSError as e:
            raise PatientMappingError(
                f"cannot read the patient mapping: {e.strerror}", str(self.path)
            ) from None
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp == self._stamp:
            return
        self._by_nhs, self._by_id = read_csv_mapping(self.path)
        self._stamp = stamp


def read_csv_mapping(
    path: Path,
) -> tuple[dict[str, LocalPatient], dict[tuple[str, str, str], LocalPatient]]:
    """(by NHS number, by (sender, issuer, patient ID)) from a mapping file."""
    by_nhs: dict[str, LocalPatient] = {}
    by_id: dict[tuple[str, str, str], LocalPatient] = {}
    where = str(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = csv.DictReader(f, strict=True)
            columns = {c.strip() for c in rows.fieldnames or ()}
            if "local_patient_id" not in columns:
                raise PatientMappingError("needs a local_patient_id column", where, 1)
            if "nhs_number" not in columns and "patient_id" not in columns:
                raise PatientMappingError("needs an nhs_number or a patient_id column", where, 1)
            rows.fieldnames = [c.strip() for c in rows.fieldnames or ()]
            for row in rows:
                line = rows.line_num
                if None in row:  # more fields than the header names
                    raise PatientMappingError("more fields than the header line", where, line)
                _add_row(row, by_nhs, by_id, where, line)
    except OSError as e:
        raise PatientMappingError(f"cannot read the patient mapping: {e.strerror}", where) from None
    except UnicodeDecodeError as e:
        raise PatientMappingError(f"not UTF-8 text ({e.reason})", where) from None
    except csv.Error as e:
        raise PatientMappingError(f"not CSV: {e}", where) from None
    return by_nhs, by_id


def _add_row(
    row: Mapping[str, str | None],
    by_nhs: dict[str, LocalPatient],
    by_id: dict[tuple[str, str, str], LocalPatient],
    where: str,
    line: int,
) -> None:
    def cell(name: str) -> str:
        return (row.get(name) or "").strip()

    local_id = cell("local_patient_id")
    if not local_id:
        raise PatientMappingError("no local_patient_id", where, line)
    local = LocalPatient(patient_id=local_id, issuer=cell("local_issuer") or None)
    for value, vr in ((local.patient_id, "LO"), (local.issuer or "", "LO")):
        if len(value) > _MAX_CHARS[vr] or "\\" in value:
            raise PatientMappingError(f"{value!r} is not a Patient ID or issuer", where, line)
    nhs = cell("nhs_number").replace(" ", "")
    foreign_id = cell("patient_id")
    if not nhs and not foreign_id:
        raise PatientMappingError("neither nhs_number nor patient_id", where, line)
    if nhs:
        if not valid_nhs_number(nhs):
            raise PatientMappingError(f"{nhs!r} is not a valid NHS number", where, line)
        _add(by_nhs, nhs, local, where, line)
    if foreign_id:
        _add(by_id, (cell("sender").upper(), cell("issuer"), foreign_id), local, where, line)


def _add(table: dict[K, LocalPatient], key: K, local: LocalPatient, where: str, line: int) -> None:
    if key in table and table[key] != local:
        # Two local patients for one foreign identity: never choose between them.
        raise PatientMappingError(f"maps {key!r} to a second local patient", where, line)
    table[key] = local


class MappingTable(Protocol):
    """A ledger that can read an operator's mapping table (its rows as
    ``(local_patient_id, local_issuer)`` for one key column's value)."""

    async def patient_mapping_rows(
        self, table: str, *, nhs_number: str | None, sender_id: tuple[str, str, str] | None
    ) -> list[tuple[str, str | None]]: ...


def check_table_name(name: str) -> str:
    if not _TABLE_NAME.fullmatch(name):
        raise ConfigurationError(f"{name!r} is not a table name (letters, digits and _)")
    return name


class TablePatientIndex:
    """The mapping as a table (or view) of the ledger's own database, with the
    CSV file's columns: ``local_patient_id``, ``local_issuer``,
    ``nhs_number``, ``sender``, ``issuer``, ``patient_id`` (the ledger makes
    one such table, ``patient_mapping``)."""

    def __init__(self, ledger: MappingTable, table: str) -> None:
        self._ledger = ledger
        self.table = check_table_name(table)

    async def find(
        self, foreign: ForeignPatient, match: tuple[MatchBy, ...]
    ) -> LocalPatient | None:
        for way in match:
            if way == "nhs-number":
                if foreign.nhs_number is None:
                    continue
                keys: list[tuple[str | None, tuple[str, str, str] | None]]
                keys = [(foreign.nhs_number, None)]
            else:
                keys = [(None, key) for key in _sender_keys(foreign)]
            for nhs, sender_id in keys:
                rows = await self._ledger.patient_mapping_rows(
                    self.table, nhs_number=nhs, sender_id=sender_id
                )
                found = {LocalPatient(patient_id=p.strip(), issuer=(i or "").strip() or None)
                         for p, i in rows if p and p.strip()}  # fmt: skip
                if len(found) > 1:
                    raise PatientMappingError(
                        f"{len(found)} local patients for {nhs or sender_id!r}", self.table
                    )
                if found:
                    return found.pop()
        return None


Lookup = Callable[[ForeignPatient], "LocalPatient | Awaitable[LocalPatient | None] | None"]


class CallablePatientIndex:
    """A lookup an embedding service provides (sync or async); it decides how
    to match, so ``match`` is not used."""

    def __init__(self, lookup: Lookup) -> None:
        self._lookup = lookup

    async def find(
        self, foreign: ForeignPatient, match: tuple[MatchBy, ...]
    ) -> LocalPatient | None:
        found = self._lookup(foreign)
        if inspect.isawaitable(found):
            found = await found
        if found is not None and not isinstance(found, LocalPatient):
            raise TypeError(f"a patient lookup returns LocalPatient or None, not {found!r}")
        return found


@dataclass(frozen=True, kw_only=True)
class Reconcile:
    """What an inbound rule does to a foreign study.

    The mapping is one of ``csv`` (a file), ``table`` (a table of the
    ledger's database) or ``lookup`` (a callable, when embedded), tried by
    ``match`` in order. ``local_issuer`` is the Issuer of Patient ID given to
    local IDs the mapping names none for. The accession number is kept,
    prefixed (``accession_prefix``) or replaced (``replace_accession``; ""
    empties it); the institution name kept (None) or set."""

    csv: Path | None = None
    table: str | None = None
    lookup: Lookup | None = None
    match: tuple[MatchBy, ...] = MATCHES
    local_issuer: str | None = None
    accession_prefix: str | None = None
    replace_accession: str | None = None
    institution_name: str | None = None

    def __post_init__(self) -> None:
        sources = [s for s in (self.csv, self.table, self.lookup) if s is not None]
        if len(sources) != 1:
            raise ConfigurationError("reconcile needs one mapping: csv, table or lookup")
        if self.table is not None:
            check_table_name(self.table)
        if not self.match or len(set(self.match)) != len(self.match):
            raise ConfigurationError("reconcile match lists nhs-number and/or sender-id, once each")
        if unknown := set(self.match) - set(MATCHES):
            raise ConfigurationError(
                f"reconcile match: unknown {sorted(unknown)[0]!r} (nhs-number, sender-id)"
            )
        if self.accession_prefix is not None and self.replace_accession is not None:
            raise ConfigurationError("reconcile: accession_prefix or replace_accession, not both")
        for name, value, vr in (
            ("local_issuer", self.local_issuer, "LO"),
            ("accession_prefix", self.accession_prefix, "SH"),
            ("replace_accession", self.replace_accession, "SH"),
            ("institution_name", self.institution_name, "LO"),
        ):
            if value is not None and (len(value) > _MAX_CHARS[vr] or "\\" in value):
                raise ConfigurationError(
                    f"reconcile {name}: at most {_MAX_CHARS[vr]} characters, no backslash"
                )


class AccessionTooLong(PatientMappingError):
    """The prefixed accession number would not fit its 16 characters: held, never cut."""


def plan_reconciliation(
    originals: Mapping[int, str],
    *,
    foreign: ForeignPatient,
    local: LocalPatient,
    rule: Reconcile,
    modifying_system: str,
    now: datetime.datetime,
) -> tuple[Edit, ...]:
    """The edits that file a foreign instance under ``local``. ``originals``:
    the values of TAGS_TO_READ the instance holds (absent: not there)."""
    changed: dict[int, str] = {PATIENT_ID: local.patient_id}
    issuer = local.issuer or rule.local_issuer
    if issuer is not None:
        changed[ISSUER_OF_PATIENT_ID] = issuer
    accession = originals.get(ACCESSION_NUMBER, "")
    if rule.replace_accession is not None:
        changed[ACCESSION_NUMBER] = rule.replace_accession
    elif rule.accession_prefix and accession and not accession.startswith(rule.accession_prefix):
        prefixed = rule.accession_prefix + accession
        if len(prefixed) > _MAX_CHARS["SH"]:
            raise AccessionTooLong(f"accession number {prefixed!r} is longer than 16 characters")
        changed[ACCESSION_NUMBER] = prefixed
    if rule.institution_name is not None:
        changed[INSTITUTION_NAME] = rule.institution_name
    # Unchanged values need no record of what they were.
    changed = {t: v for t, v in changed.items() if originals.get(t, "") != v}
    if not changed:
        return ()
    edits: list[Edit] = [Set(tag=t, value=v, vr=_VR[t]) for t, v in sorted(changed.items())]
    # The original values; zero length for an element that was absent (C.12.1.1.9.2).
    previous: tuple[ItemElement, ...] = tuple(
        (t, _VR[t], originals.get(t, "")) for t in sorted(changed)
    )
    stamp = now.astimezone(datetime.UTC).strftime("%Y%m%d%H%M%S.%f+0000")
    edits.append(
        AddItem(
            sequence_tag=ORIGINAL_ATTRIBUTES_SEQUENCE,
            elements=(
                (MODIFIED_ATTRIBUTES_SEQUENCE, "SQ", (previous,)),
                (ATTRIBUTE_MODIFICATION_DATETIME, "DT", stamp),
                (MODIFYING_SYSTEM, "LO", modifying_system[:64]),
                (SOURCE_OF_PREVIOUS_VALUES, "LO", foreign.sender[:64]),
                (REASON_FOR_THE_ATTRIBUTE_MODIFICATION, "CS", "COERCE"),
            ),
        )
    )
    original_id = originals.get(PATIENT_ID)
    if PATIENT_ID in changed and original_id:
        other: list[ItemElement] = [(PATIENT_ID, "LO", original_id)]
        if originals.get(ISSUER_OF_PATIENT_ID):
            other.append((ISSUER_OF_PATIENT_ID, "LO", originals[ISSUER_OF_PATIENT_ID]))
        other.append((TYPE_OF_PATIENT_ID, "CS", "TEXT"))
        edits.append(AddItem(sequence_tag=OTHER_PATIENT_IDS_SEQUENCE, elements=tuple(other)))
    return tuple(edits)


def patient_index(rule: Reconcile, ledger: MappingTable) -> PatientIndex:
    """The index a rule's mapping names."""
    if rule.csv is not None:
        return CsvPatientIndex(rule.csv)
    if rule.table is not None:
        return TablePatientIndex(ledger, rule.table)
    assert rule.lookup is not None
    return CallablePatientIndex(rule.lookup)
