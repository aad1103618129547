"""The DICOMDIR of a study laid out as on a CD, without a store: file IDs of
8-character components, series and instances in number order, record types
by SOP class, the offsets that chain the records (read back by pydicom's
FileSet), type 1 keys invented where the headers lack them, and values a
header holds wrongly left out rather than failing the download."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.fileset import FileSet
from pydicom.tag import Tag

from dicomrelay.web.dicomdir import MediaInstance, dicomdir, kept, lay_out, record_type

CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.22"
PR = "1.2.840.10008.5.1.4.1.1.11.1"


def media(
    sop: str, series: str, sop_class: str = CT, *, study: str = "1.2.3", **values: object
) -> tuple[str, MediaInstance]:
    header = Dataset()
    header.PatientID = "P1"
    header.PatientName = "Doe^Jane"
    for keyword, value in values.items():
        setattr(header, keyword, value)
    return f"digest-{sop}", MediaInstance(
        sop_class_uid=sop_class,
        sop_uid=sop,
        transfer_syntax="1.2.840.10008.1.2.1",
        study_uid=study,
        series_uid=series,
        header=header,
    )


def test_record_types_follow_the_sop_class() -> None:
    assert record_type(CT) == "IMAGE"
    assert record_type(SR) == "SR DOCUMENT"
    assert record_type("1.2.840.10008.5.1.4.1.1.88.59") == "KEY OBJECT DOC"
    assert record_type(PR) == "PRESENTATION"
    assert record_type("1.2.840.10008.5.1.4.1.1.104.1") == "ENCAP DOC"
    assert record_type("1.2.840.10008.5.1.4.1.1.481.2") == "RT DOSE"
    assert record_type("1.2.840.10008.5.1.4.1.1.66.4") == "IMAGE"  # segmentation


def test_layout_orders_series_and_instances_by_number() -> None:
    placed = lay_out(
        [
            media("1.9", "2.2", SeriesNumber=2, InstanceNumber=1),
            media("1.3", "2.1", SeriesNumber=10, InstanceNumber=3),
            media("1.2", "2.1", SeriesNumber=10, InstanceNumber=1),
            media("1.1", "2.1", SeriesNumber=10, InstanceNumber=2),
        ]
    )
    assert [(p.path, p.instance.sop_uid) for p in placed] == [
        ("DICOM/ST000001/SE000001/IM000001", "1.9"),
        ("DICOM/ST000001/SE000002/IM000001", "1.2"),
        ("DICOM/ST000001/SE000002/IM000002", "1.1"),
        ("DICOM/ST000001/SE000002/IM000003", "1.3"),
    ]
    assert placed[0].key == "digest-1.9"


def test_the_dicomdir_reads_back_as_a_file_set(tmp_path: Path) -> None:
    instances = [
        media(
            f"1.{n}",
            "2.1",
            SeriesNumber=1,
            InstanceNumber=n,
            Modality="CT",
            StudyDate="20261127",
            StudyTime="101500",
            StudyID="S7",
            StudyDescription="Head",
            AccessionNumber="A1",
        )
        for n in range(1, 4)
    ]
    instances.append(media("1.9", "2.2", SR, Modality="SR", CompletionFlag="COMPLETE"))
    bad = media("1.8", "2.3", Modality="OT", InstanceNumber=1)
    # A Series Number that is not a number, as a sloppy modality writes it.
    bad[1].header[Tag(0x00200011)] = RawDataElement(
        Tag(0x00200011), "IS", 4, b"abc ", 0, False, True
    )
    instances.append(bad)
    placed = lay_out(instances)
    path = tmp_path / "DICOMDIR"
    path.write_bytes(dicomdir(placed))
    for p in placed:  # (pydicom's File-set lists only the files that are there)
        (tmp_path / p.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p.path).touch()
    ds = pydicom.dcmread(path)
    assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    fs = FileSet(ds)
    assert len(fs) == 5
    # Each instance's record holds its file ID and UIDs; the tree is right.
    by_uid = {str(i.SOPInstanceUID): i for i in fs}
    for p in placed:
        found = by_uid[p.instance.sop_uid]
        assert list(found.ReferencedFileID) == list(p.file_id)
        assert found.ReferencedSOPClassUIDInFile == p.instance.sop_class_uid
        assert found.ReferencedTransferSyntaxUIDInFile == "1.2.840.10008.1.2.1"
    assert len(fs.find(SeriesInstanceUID="2.1")) == 3
    assert fs.find_values("StudyID") == ["S7"]
    assert sorted(fs.find_values("SeriesInstanceUID")) == ["2.1", "2.2", "2.3"]
    records = ds.DirectoryRecordSequence
    kinds = [r.DirectoryRecordType for r in records]
    assert kinds[:3] == ["PATIENT", "STUDY", "SERIES"]
    assert kinds.count("SR DOCUMENT") == 1
    # Offsets: the root's first and last records, each record's next and lower.
    offsets = {r.seq_item_tell: r for r in records}
    root = ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity
    assert offsets[root].DirectoryRecordType == "PATIENT"
    assert ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity == root
    study = offsets[offsets[root].OffsetOfReferencedLowerLevelDirectoryEntity]
    assert study.DirectoryRecordType == "STUDY"
    assert study.StudyDescription == "Head"
    series = [offsets[study.OffsetOfReferencedLowerLevelDirectoryEntity]]
    while series[-1].OffsetOfTheNextDirectoryRecord:
        series.append(offsets[series[-1].OffsetOfTheNextDirectoryRecord])
    assert [s.SeriesInstanceUID for s in series] == ["2.1", "2.2", "2.3"]
    # Type 1 keys invented: the SR's Instance Number, the bad Series Number.
    assert [int(s.SeriesNumber) for s in series] == [1, 2, 3]  # the third invented
    sr = offsets[series[1].OffsetOfReferencedLowerLevelDirectoryEntity]
    assert sr.DirectoryRecordType == "SR DOCUMENT"
    assert sr.CompletionFlag == "COMPLETE"
    assert int(sr.InstanceNumber) >= 1


def test_the_same_study_makes_the_same_dicomdir() -> None:
    one = dicomdir(lay_out([media("1.1", "2.1", InstanceNumber=1)]))
    assert one == dicomdir(lay_out([media("1.1", "2.1", InstanceNumber=1)]))
    assert one != dicomdir(lay_out([media("1.1", "2.1", study="1.2.4", InstanceNumber=1)]))


def test_only_what_the_records_need_is_kept_of_a_header() -> None:
    from io import BytesIO

    source = Dataset()
    source.SpecificCharacterSet = "ISO_IR 100"
    source.PatientName = "Müller^Jürgen"
    source.PatientID = "P1"
    source.InstitutionName = "Somewhere"
    source.InstanceNumber = 4
    source.ContentSequence = [Dataset()]
    encoded = BytesIO()
    source.save_as(encoded, implicit_vr=False, little_endian=True)
    header = pydicom.dcmread(BytesIO(encoded.getvalue()), force=True)
    kept_header = kept(header)
    assert sorted(e.keyword for e in kept_header) == [
        "InstanceNumber",
        "PatientID",
        "PatientName",
        "SpecificCharacterSet",
    ]
    assert str(kept_header.PatientName) == "Müller^Jürgen"
