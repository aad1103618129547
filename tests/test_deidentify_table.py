"""Table E.1-1 against pydicom's reading of de-identified output, on every file
pydicom ships for its tests: no attribute the table says to remove, empty,
replace or remap keeps its original value, at any nesting level.

The planned edits are applied by the reference applier (tests/deid_reference.py,
the rewrite contract's semantics on pydicom), written, and read back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sized
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from deid_reference import apply_edits, datasets, header_of, read, text_of
from dicom_builders import MALFORMED, charset_test_files, file_id, pydicom_test_files
from dicomrelay.confidentiality_profile import Option, ProfileRow, profile_table
from dicomrelay.deid_values import dummy_value, first_vr
from dicomrelay.deidentify import plan_deidentification, resolved_action, tags_to_read

KEY = b"a research project's key, 32 b."
TABLE = profile_table()
DUMMIES = {"D", "Z/D", "X/D", "X/Z/D"}
# Files pydicom reads but that are not instances to de-identify (a DICOMDIR's
# records are a directory, not a patient's data) or cannot be written back.
NOT_INSTANCES = {"DICOMDIR", "DICOMDIR-bigEnd", "DICOMDIR-implicit", "DICOMDIR-reordered"}
CORPUS = [
    p
    for p in pydicom_test_files()
    if p.name not in MALFORMED | NOT_INSTANCES | {"meta_missing_tsyntax.dcm", "no_meta.dcm"}
] + charset_test_files()  # names and descriptions in eleven character sets


def deidentify(path: Path, out: Path, options: Collection[Option] = ()) -> Dataset:
    ds = read(path)
    header = header_of(ds, tags_to_read(options))
    plan = plan_deidentification(header, options, KEY, allow_burned_in=True)
    apply_edits(ds, plan.edits)
    ds.save_as(out)
    return read(out)


def originals(ds: Dataset) -> dict[int, set[str]]:
    """Every value each tag has anywhere in the dataset (as text)."""
    found: dict[int, set[str]] = defaultdict(set)
    for d in datasets(ds):
        for elem in d:
            if elem.VR != "SQ" and elem.value not in (None, "", b""):
                found[int(elem.tag)].add(text_of(elem))
    return found


def _empty(value: object) -> bool:
    if value is None:
        return True
    return isinstance(value, Sized) and len(value) == 0


def check_row(row: ProfileRow, action: str, tag: int, elem: object, before: set[str]) -> None:
    """One output element against its row's action."""
    from pydicom.dataelem import DataElement

    assert isinstance(elem, DataElement)
    where = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {row.name}: {action}"
    if action == "X":
        raise AssertionError(f"{where}: still present")
    if action in ("Z", "X/Z") or (action in DUMMIES and row.vr == "SQ"):
        assert _empty(elem.value), f"{where}: not emptied"
        return
    if action == "U" or (action in DUMMIES and row.vr == "UI"):
        if not _empty(elem.value):
            for uid in text_of(elem).split("\\"):
                assert uid.startswith("2.25."), f"{where}: {uid} not remapped"
                assert uid not in before, f"{where}: kept {uid}"
        return
    if action in DUMMIES:
        assert row.vr is not None
        value = text_of(elem)
        dummy = dummy_value(first_vr(row.vr))
        allowed = {dummy if isinstance(dummy, str) else str(dummy)}
        assert not (before - allowed) & {value}, f"{where}: kept {value!r}"


def output_elements(ds: Dataset) -> list[tuple[int, object]]:
    out: list[tuple[int, object]] = [(int(e.tag), e) for d in datasets(ds) for e in d]
    if ds.file_meta is not None:
        out.extend((int(e.tag), e) for e in ds.file_meta)
    return out


def test_the_corpus_is_the_bundled_files() -> None:
    assert len(CORPUS) > 60


@pytest.mark.parametrize("path", CORPUS, ids=file_id)
def test_every_table_row_holds_in_the_output(path: Path, tmp_path: Path) -> None:
    before = originals(read(path))
    after = deidentify(path, tmp_path / "out.dcm")
    for tag, elem in output_elements(after):
        if Tag(tag).is_private:
            raise AssertionError(f"private ({tag >> 16:04X},{tag & 0xFFFF:04X}) kept")
        row = TABLE.row(tag)
        if row is not None:
            check_row(row, resolved_action(row, ()), tag, elem, before.get(tag, set()))
    # Every output reads whole, pixel data and all.
    for d in datasets(after):
        for elem in d:
            _ = elem.value
    assert after.PatientIdentityRemoved == "YES"
    assert after.DeidentificationMethodCodeSequence[0].CodeValue == "113100"


@pytest.mark.parametrize("path", CORPUS[:12], ids=file_id)
def test_attributes_outside_the_table_are_kept(path: Path, tmp_path: Path) -> None:
    src = read(path)
    after = deidentify(path, tmp_path / "out.dcm")
    for elem in src:
        tag = int(elem.tag)
        if Tag(tag).is_private or TABLE.row(tag) is not None or elem.VR == "SQ":
            continue
        if tag & 0xFFFF == 0:  # group lengths are recomputed or dropped
            continue
        if tag in (0x00120062, 0x00120063, 0x00280303):
            continue
        assert tag in after, f"{elem.tag} {elem.keyword} lost"
        assert after[tag].value == elem.value, f"{elem.tag} {elem.keyword} changed"
