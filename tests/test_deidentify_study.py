"""UIDs across a multi-series study: every reference follows the instance it
names, the same key gives the same UIDs on every run, another key others."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from deid_reference import apply_edits, header_of, read, remapped_uid
from dicomrelay.deidentify import plan_deidentification, tags_to_read

KEY = b"the study's project key, 1234567"
CT = Path(str(get_testdata_file("CT_small.dcm")))
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def reference(sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = CT_IMAGE
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def make_study(folder: Path) -> list[Path]:
    """Two series of three CT instances; the second series derives from the
    first: Source Image, Referenced Image and Referenced Series Sequences."""
    folder.mkdir()
    study, frame_of_reference = generate_uid(), generate_uid()
    series = [generate_uid(), generate_uid()]
    first: list[str] = []
    paths = []
    for s, series_uid in enumerate(series):
        for i in range(3):
            ds = read(CT)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
            ds.FrameOfReferenceUID = frame_of_reference
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SeriesNumber, ds.InstanceNumber = s + 1, i + 1
            if s == 0:
                first.append(ds.SOPInstanceUID)
            else:
                ds.SourceImageSequence = Sequence([reference(first[i])])
                ds.ReferencedImageSequence = Sequence([reference(u) for u in first])
                referenced_series = Dataset()
                referenced_series.SeriesInstanceUID = series[0]
                referenced_series.ReferencedInstanceSequence = Sequence(
                    [reference(u) for u in first]
                )
                ds.ReferencedSeriesSequence = Sequence([referenced_series])
            paths.append(folder / f"{s}-{i}.dcm")
            ds.save_as(paths[-1])
    return paths


def deidentify_study(paths: list[Path], out: Path, key: bytes) -> list[FileDataset]:
    out.mkdir()
    results = []
    for path in paths:
        ds = read(path)
        plan = plan_deidentification(header_of(ds, tags_to_read(())), (), key)
        apply_edits(ds, plan.edits)
        ds.save_as(out / path.name)
        results.append(read(out / path.name))
    return results


def uids(ds: Dataset) -> list[str]:
    found: list[str] = []

    def visit(d: Dataset) -> None:
        for elem in d:
            if elem.VR == "UI" and elem.value:
                found.append(str(elem.value))
            elif elem.VR == "SQ":
                for item in elem.value:
                    visit(item)

    visit(ds)
    return found


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    return make_study(tmp_path / "study")


def test_references_follow_the_instances_they_name(study: list[Path], tmp_path: Path) -> None:
    before = [read(p) for p in study]
    after = deidentify_study(study, tmp_path / "a", KEY)
    assert len({ds.StudyInstanceUID for ds in after}) == 1
    assert after[0].StudyInstanceUID == remapped_uid(KEY, before[0].StudyInstanceUID)
    assert len({ds.FrameOfReferenceUID for ds in after}) == 1
    assert len({ds.SeriesInstanceUID for ds in after}) == 2
    assert len({ds.SOPInstanceUID for ds in after}) == 6
    first = [ds.SOPInstanceUID for ds in after[:3]]
    for i, ds in enumerate(after[3:]):
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == first[i]
        assert [r.ReferencedSOPInstanceUID for r in ds.ReferencedImageSequence] == first
        series = ds.ReferencedSeriesSequence[0]
        assert series.SeriesInstanceUID == after[0].SeriesInstanceUID
        assert [r.ReferencedSOPInstanceUID for r in series.ReferencedInstanceSequence] == first
        assert ds.SourceImageSequence[0].ReferencedSOPClassUID == CT_IMAGE  # a class: kept
    originals = {u for ds in before for u in uids(ds)}
    for ds in after:
        kept = {u for u in uids(ds) if u in originals}
        assert kept <= {CT_IMAGE, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID}


def test_the_same_key_gives_the_same_uids(study: list[Path], tmp_path: Path) -> None:
    once = deidentify_study(study, tmp_path / "once", KEY)
    again = deidentify_study(study, tmp_path / "again", KEY)
    assert [uids(ds) for ds in once] == [uids(ds) for ds in again]
    other = deidentify_study(study, tmp_path / "other", b"another project's key, 12345678")
    for a, b in zip(once, other, strict=True):
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            assert a[keyword].value != b[keyword].value
