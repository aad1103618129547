"""The options of PS3.15 E.3 keep what they say and nothing else; the
declarations (0012,0062), (0012,0063), (0012,0064), (0028,0303); burned-in
refusal; the project key. Edits applied by the reference applier."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset
from pydicom.sequence import Sequence
from pydicom.sr._concepts_dict import concepts

from deid_reference import apply_edits, header_of, read
from dicomrelay.deid_values import shift_date_value
from dicomrelay.deidentify import (
    InstanceHeader,
    Option,
    SafePrivate,
    plan_deidentification,
    tags_to_read,
)
from dicomrelay.errors import BurnedInAnnotation, ConfigurationError

KEY = b"project key: sixteen bytes or more"
CT_SMALL = Path(str(get_testdata_file("CT_small.dcm")))
# CID 7050 as pydicom publishes PS3.16: code value -> meaning.
_DCM: dict[str, dict[str, tuple[str, list[int]]]] = concepts["DCM"]  # type: ignore[assignment]
CID_7050 = {
    code: meaning
    for entry in _DCM.values()
    for code, (meaning, cids) in entry.items()
    if 7050 in cids
}
SAFE = (SafePrivate(group=0x0019, creator="GEMS_ACQU_01", element=0x23),)


def rich_instance() -> FileDataset:
    """CT_small with identity in the places the options are about."""
    ds = read(CT_SMALL)
    ds.PatientName = "Smith^John"
    ds.PatientID = "12345678"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.PatientAge = "050Y"
    ds.PatientWeight = "80"
    ds.Allergies = "Penicillin, reported by John Smith"
    ds.StudyDescription = "CT HEAD for John SMITH 12345678"
    ds.StationName = "CTROOM3"
    ds.DeviceSerialNumber = "SN-4711"
    ds.StationAETitle = "CT_STJAMES"
    ds.InstitutionName = "St James Hospital"
    ds.StudyDate = "20200131"
    ds.AcquisitionDateTime = "20200131101010.5+0100"
    ds.ContentTime = "101010"
    nested = Dataset()
    nested.CodeValue = "CTHEAD"
    nested.CodingSchemeDesignator = "99LOCAL"
    nested.CodeMeaning = "CT head"
    nested.AcquisitionDate = "20200130"
    nested.PatientName = "Smith^John"
    ds.ProcedureCodeSequence = Sequence([nested])
    block = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    block.add_new(0x23, "DS", "1.5")
    block.add_new(0x24, "LO", "Smith")
    return ds


def deidentified(
    options: Collection[Option] = (),
    *,
    key: bytes = KEY,
    ds: FileDataset | None = None,
    tmp_path: Path,
) -> FileDataset:
    ds = ds if ds is not None else rich_instance()
    plan = plan_deidentification(
        header_of(ds, tags_to_read(options)), options, key, safe_private=SAFE
    )
    apply_edits(ds, plan.edits)
    ds.save_as(tmp_path / "out.dcm")
    return read(tmp_path / "out.dcm")


def codes_of(ds: Dataset) -> list[tuple[str, str, str]]:
    return [
        (i.CodeValue, i.CodingSchemeDesignator, i.CodeMeaning)
        for i in ds.DeidentificationMethodCodeSequence
    ]


def test_basic_profile(tmp_path: Path) -> None:
    out = deidentified(tmp_path=tmp_path)
    assert out.PatientName == ""
    assert out.PatientID not in ("", "12345678")
    assert "StudyDescription" not in out
    assert "Allergies" not in out
    assert out.PatientSex == ""  # Z: present, empty
    assert "InstitutionName" not in out or out.InstitutionName in ("", "ANONYMOUS")
    assert out.ProcedureCodeSequence[0].PatientName == ""
    assert out.ProcedureCodeSequence[0].AcquisitionDate == ""  # X/Z: emptied
    assert out.StudyDate == ""
    assert out.get("ContentTime") != "101010"
    assert not [e for e in out if e.tag.is_private]
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert codes_of(out) == [("113100", "DCM", "Basic Application Confidentiality Profile")]
    assert out.DeidentificationMethod == "DICOM PS3.15 2024b Basic Profile"


def test_the_patient_pseudonym_is_keyed(tmp_path: Path) -> None:
    a = deidentified(tmp_path=tmp_path).PatientID
    b = deidentified(tmp_path=tmp_path).PatientID
    c = deidentified(key=b"another project's key", tmp_path=tmp_path).PatientID
    assert a == b != c


@pytest.mark.parametrize("option", list(Option), ids=lambda o: o.value)
def test_each_option_is_declared_with_its_cid_7050_code(option: Option, tmp_path: Path) -> None:
    out = deidentified([option], tmp_path=tmp_path)
    declared = codes_of(out)
    assert declared[0] == ("113100", "DCM", CID_7050["113100"])
    assert len(declared) == 2
    value, scheme, meaning = declared[1]
    assert scheme == "DCM"
    assert CID_7050[value] == meaning
    assert set(option.value.split("-")) <= set(meaning.lower().split())
    assert meaning in out.DeidentificationMethod


def test_retain_uids(tmp_path: Path) -> None:
    src = rich_instance()
    out = deidentified([Option.RETAIN_UIDS], tmp_path=tmp_path)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert out[keyword].value == src[keyword].value
    assert out.file_meta.MediaStorageSOPInstanceUID == src.SOPInstanceUID


def test_retain_full_dates(tmp_path: Path) -> None:
    out = deidentified([Option.RETAIN_LONGITUDINAL_FULL_DATES], tmp_path=tmp_path)
    assert out.StudyDate == "20200131"
    assert out.AcquisitionDateTime == "20200131101010.5+0100"
    assert out.ContentTime == "101010"
    assert out.ProcedureCodeSequence[0].AcquisitionDate == "20200130"
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_retain_modified_dates_shifts_by_the_projects_offset(tmp_path: Path) -> None:
    options = [Option.RETAIN_LONGITUDINAL_MODIFIED_DATES]
    plan = plan_deidentification(InstanceHeader(), options, KEY)
    assert plan.date_offset_days is not None
    assert plan.date_offset_days < 0
    other = plan_deidentification(InstanceHeader(), options, b"another project's key")
    assert other.date_offset_days != plan.date_offset_days
    out = deidentified(options, tmp_path=tmp_path)
    days = plan.date_offset_days
    assert out.StudyDate == shift_date_value("DA", "20200131", days) != "20200131"
    assert out.AcquisitionDateTime == shift_date_value("DT", "20200131101010.5+0100", days)
    assert out.AcquisitionDateTime.endswith("101010.5+0100")
    assert out.ContentTime == "101010"  # whole days move; the time of day stays
    # A nested date cannot be addressed by its own value: it is emptied.
    assert out.ProcedureCodeSequence[0].AcquisitionDate == ""
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_the_longitudinal_options_exclude_each_other() -> None:
    both = [Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES]
    with pytest.raises(ConfigurationError, match="exclude each other"):
        plan_deidentification(InstanceHeader(), both, KEY)


def test_retain_patient_characteristics(tmp_path: Path) -> None:
    out = deidentified([Option.RETAIN_PATIENT_CHARACTERISTICS], tmp_path=tmp_path)
    assert (out.PatientSex, out.PatientAge, out.PatientWeight) == ("M", "050Y", 80)
    assert out.Allergies == "Penicillin, reported by"  # cleaned (C), not kept
    assert out.PatientName == ""


def test_retain_device_identity(tmp_path: Path) -> None:
    out = deidentified([Option.RETAIN_DEVICE_IDENTITY], tmp_path=tmp_path)
    assert (out.StationName, out.DeviceSerialNumber) == ("CTROOM3", "SN-4711")
    # AE titles are cleaned (C): a stand-in of the same kind, the same per key.
    ae = out.StationAETitle
    assert ae != "CT_STJAMES"
    assert ae.startswith("AE")
    assert len(ae) <= 16
    assert deidentified([Option.RETAIN_DEVICE_IDENTITY], tmp_path=tmp_path).StationAETitle == ae
    assert "InstitutionName" not in out or out.InstitutionName != "St James Hospital"


def test_retain_institution_identity(tmp_path: Path) -> None:
    out = deidentified([Option.RETAIN_INSTITUTION_IDENTITY], tmp_path=tmp_path)
    assert out.InstitutionName == "St James Hospital"
    assert "StationName" not in out or out.StationName != "CTROOM3"


def test_retain_safe_private_keeps_only_the_safe_list(tmp_path: Path) -> None:
    out = deidentified([Option.RETAIN_SAFE_PRIVATE], tmp_path=tmp_path)
    block = out.private_block(0x0019, "GEMS_ACQU_01")
    assert block[0x23].value == "1.5"
    assert 0x24 not in block
    assert [e.tag for e in out if e.tag.is_private] == [0x00190010, 0x00191023]


def test_retain_safe_private_resolves_the_creators_block(tmp_path: Path) -> None:
    # The same creator in another block: the safe element follows the block.
    ds = rich_instance()
    ds.add_new(0x00190011, "LO", "OTHER VENDOR")
    ds.add_new(0x00191123, "LO", "Smith")
    for tag in list(ds.keys()):
        if tag.group == 0x0019 and tag.element not in (0x0011, 0x1123):
            del ds[tag]
    ds.add_new(0x00190012, "LO", "GEMS_ACQU_01")
    ds.add_new(0x00191223, "DS", "2.5")
    out = deidentified([Option.RETAIN_SAFE_PRIVATE], ds=ds, tmp_path=tmp_path)
    assert [e.tag for e in out if e.tag.is_private] == [0x00190012, 0x00191223]


def test_clean_descriptors(tmp_path: Path) -> None:
    out = deidentified([Option.CLEAN_DESCRIPTORS], tmp_path=tmp_path)
    assert out.StudyDescription == "CT HEAD for"
    assert out.PatientName == ""


def test_burned_in_annotation_yes_is_refused() -> None:
    header = InstanceHeader(values={0x00280301: "YES", 0x00080016: "1.2.840.10008.5.1.4.1.1.2"})
    with pytest.raises(BurnedInAnnotation, match=r"\(0028,0301\) is YES") as caught:
        plan_deidentification(header, (), KEY)
    assert caught.value.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert plan_deidentification(header, (), KEY, allow_burned_in=True).edits


def test_recognizable_visual_features_are_refused() -> None:
    header = InstanceHeader(values={0x00280302: "YES", 0x00280301: "NO"})
    with pytest.raises(BurnedInAnnotation, match=r"Recognizable Visual Features \(0028,0302\)"):
        plan_deidentification(header, (), KEY)
    assert plan_deidentification(InstanceHeader(values={0x00280302: "NO"}), (), KEY).edits


@pytest.mark.parametrize(
    ("sop_class", "burned_in", "refused"),
    [
        ("1.2.840.10008.5.1.4.1.1.7", None, True),  # secondary capture
        ("1.2.840.10008.5.1.4.1.1.6.1", None, True),  # ultrasound
        ("1.2.840.10008.5.1.4.1.1.3.1", None, True),  # ultrasound multi-frame
        ("1.2.840.10008.5.1.4.1.1.7", "NO", False),
        ("1.2.840.10008.5.1.4.1.1.2", None, False),  # CT
    ],
)
def test_classes_known_for_burned_in_text(
    sop_class: str, burned_in: str | None, refused: bool
) -> None:
    values = {0x00080016: sop_class}
    if burned_in is not None:
        values[0x00280301] = burned_in
    header = InstanceHeader(values=values)
    if refused:
        with pytest.raises(BurnedInAnnotation, match="without Burned In Annotation"):
            plan_deidentification(header, (), KEY)
    else:
        assert plan_deidentification(header, (), KEY).edits


def test_a_bundled_secondary_capture_is_refused() -> None:
    ds = pydicom.dcmread(str(get_testdata_file("SC_rgb_small_odd.dcm")))
    assert "BurnedInAnnotation" not in ds
    with pytest.raises(BurnedInAnnotation):
        plan_deidentification(header_of(ds, tags_to_read(())), (), KEY)


@pytest.mark.parametrize(("key", "why"), [(b"", "empty"), (b"short key", "9 bytes")])
def test_a_weak_key_is_refused(key: bytes, why: str) -> None:
    with pytest.raises(ConfigurationError, match=why):
        plan_deidentification(InstanceHeader(), (), key)
