"""``dicomrelay deidentify``: the operator's mistakes as one line, and, with the
header rewriter, the outputs against the reference applier on pydicom's files
and a multi-series study (pixel bytes identical, every table row held, UIDs
consistent and stable)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset
from pydicom.tag import Tag

from deid_reference import apply_edits, datasets, header_of, read
from dicomrelay.confidentiality_profile import profile_table
from dicomrelay.deid_files import new_uid
from dicomrelay.deidentify import plan_deidentification, resolved_action, tags_to_read
from test_deidentify_study import make_study
from test_deidentify_table import check_row, originals, output_elements

USAGE, FAILURE = 2, 1
KEY = "6d3f0c1e9a8b7c6d5e4f30211f2e3d4c"
HAS_REWRITER = importlib.util.find_spec("dicomrelay.rewrite") is not None
needs_rewriter = pytest.mark.skipif(
    not HAS_REWRITER, reason="dicomrelay.rewrite (the header rewriter) is not built in"
)
# One file an instance (pydicom ships MR_small in several encodings, with one
# SOP Instance UID), in each encoding the rewriter must keep.
CORPUS = [
    "CT_small.dcm",
    "MR_small_implicit.dcm",  # implicit VR
    "ExplVR_BigEnd.dcm",  # big endian
    "image_dfl.dcm",  # deflated
    "JPEG2000.dcm",  # encapsulated pixel data
    "rtplan.dcm",
    "rtdose.dcm",
    "rtstruct.dcm",  # no file meta group
    "test-SR.dcm",
    "waveform_ecg.dcm",
    "liver_1frame.dcm",
]


def dicomrelay(cwd: Path, *args: str) -> tuple[int, str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "dicomrelay", "deidentify", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "DICOMRELAY_DEBUG": ""},
    )
    return result.returncode, result.stdout, result.stderr


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "key").write_text(KEY + "\n")
    (tmp_path / "empty-key").write_text("\n")
    (tmp_path / "short-key").write_text("short key")
    (tmp_path / "safe.txt").write_text("# safe\n0019,GEMS_ACQU_01,23\n")
    (tmp_path / "bad-safe.txt").write_text("0019,GEMS_ACQU_01,23\n0018,GEMS,10\n")
    src = Path(str(get_testdata_file("CT_small.dcm")))
    (tmp_path / "ct.dcm").write_bytes(src.read_bytes())
    return tmp_path


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (["ct.dcm", "--out", "o"], USAGE, "required: --key-file"),
        (["ct.dcm", "--out", "o", "--key-file", "gone"], FAILURE, "gone: no such file"),
        (["ct.dcm", "--out", "o", "--key-file", "empty-key"], USAGE,
         "empty-key: the project key is empty"),
        (["ct.dcm", "--out", "o", "--key-file", "short-key"], USAGE, "is 9 bytes; at least 16"),
        (["gone.dcm", "--out", "o", "--key-file", "key"], USAGE,
         "gone.dcm: no such file or folder"),
        (["ct.dcm", "--out", "o", "--key-file", "key", "--option", "retain-everything"], USAGE,
         "invalid choice: 'retain-everything'"),
        (["ct.dcm", "--out", "o", "--key-file", "key", "--option", "retain-longitudinal-full-dates",
          "--option", "retain-longitudinal-modified-dates"], USAGE, "exclude each other"),
        (["ct.dcm", "--out", "o", "--key-file", "key", "--option", "retain-safe-private"], USAGE,
         "needs --safe-private FILE"),
        (["ct.dcm", "--out", "o", "--key-file", "key", "--safe-private", "safe.txt"], USAGE,
         "only with --option retain-safe-private"),
        (["ct.dcm", "--out", "o", "--key-file", "key", "--option", "retain-safe-private",
          "--safe-private", "bad-safe.txt"], USAGE, "bad-safe.txt:2: not GROUP,CREATOR,ELEMENT"),
    ],
)  # fmt: skip
def test_a_mistake_is_one_line(site: Path, args: list[str], status: int, says: str) -> None:
    code, out, err = dicomrelay(site, *args)
    assert (code, out) == (status, "")
    line = one_line(err)
    assert line.startswith("dicomrelay deidentify: ")
    assert says in line
    assert not (site / "o").exists()


def expected_output(source: Path, scratch: Path) -> FileDataset:
    """The reference applier's result for the same source, key and options, as read back."""
    ds = read(source)
    header = header_of(ds, tags_to_read(()))
    plan = plan_deidentification(header, (), KEY.encode(), allow_burned_in=True)
    apply_edits(ds, plan.edits).save_as(scratch)
    return read(scratch)


def pixel_bytes(path: Path) -> bytes:
    ds = read(path)
    return bytes(ds.PixelData) if "PixelData" in ds else b""


@needs_rewriter
def test_bundled_files_against_the_reference(site: Path) -> None:
    sources = [Path(str(get_testdata_file(name))) for name in CORPUS]
    code, out, err = dicomrelay(
        site, *map(str, sources), "--out", "o", "--key-file", "key", "--allow-burned-in"
    )
    assert code == 0, err
    table = profile_table()
    for source in sources:
        src = read(source)
        named = (
            Path("o") / new_uid(KEY.encode(), src.StudyInstanceUID)
            / new_uid(KEY.encode(), src.SeriesInstanceUID)
            / (new_uid(KEY.encode(), src.SOPInstanceUID) + ".dcm")
        )  # fmt: skip
        assert f"{source} -> {named}" in out.splitlines()
        target = site / named
        got = read(target)
        expected = expected_output(source, site / "expected.dcm")
        for ours, theirs in zip(datasets(got), datasets(expected), strict=True):
            a = {e.tag: e.value for e in ours if e.tag.element != 0 and e.tag != 0x7FE00010}
            b = {e.tag: e.value for e in theirs if e.tag.element != 0 and e.tag != 0x7FE00010}
            assert a == b, source.name
        assert pixel_bytes(target) == pixel_bytes(source)
        before = originals(src)
        for tag, elem in output_elements(got):
            assert not Tag(tag).is_private
            row = table.row(tag)
            if row is not None:
                check_row(row, resolved_action(row, ()), tag, elem, before.get(tag, set()))


@needs_rewriter
def test_a_sequence_stored_as_un_is_deidentified_inside(site: Path) -> None:
    source = Path(str(get_testdata_file("rtdose_rle.dcm")))
    assert b"UN" in source.read_bytes()[1604:1610]  # (300C,0002) as UN, defined length
    code, out, err = dicomrelay(
        site, str(source), "--out", "o", "--key-file", "key", "--allow-burned-in"
    )
    assert code == 0, err
    got = read(site / out.split(" -> ")[1].strip())
    uid = got.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID
    assert uid != read(source).ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID
    assert uid.startswith("2.25.")


@needs_rewriter
def test_a_study_stays_consistent_and_stable(site: Path) -> None:
    make_study(site / "study")
    code, _, err = dicomrelay(site, "study", "--out", "a", "--key-file", "key")
    assert code == 0, err
    code, _, err = dicomrelay(site, "study", "--out", "b", "--key-file", "key")
    assert code == 0, err
    a = sorted(p.relative_to(site / "a") for p in (site / "a").rglob("*.dcm"))
    b = sorted(p.relative_to(site / "b") for p in (site / "b").rglob("*.dcm"))
    assert a == b
    assert len(a) == 6
    assert len({p.parts[0] for p in a}) == 1  # one study
    assert len({p.parts[1] for p in a}) == 2  # two series
    for rel in a:
        assert (site / "a" / rel).read_bytes() == (site / "b" / rel).read_bytes()
    outputs = [read(site / "a" / rel) for rel in a]
    first = {ds.SOPInstanceUID for ds in outputs if ds.SeriesNumber == 1}
    for ds in outputs:
        if ds.SeriesNumber == 2:
            assert {r.ReferencedSOPInstanceUID for r in ds.ReferencedImageSequence} == first


@needs_rewriter
def test_the_same_instance_twice_is_written_once(site: Path) -> None:
    mr = [Path(str(get_testdata_file(n))) for n in ("MR_small.dcm", "MR_small_implicit.dcm")]
    code, _, err = dicomrelay(site, *map(str, mr), "--out", "o", "--key-file", "key")
    assert code == FAILURE
    assert f"{mr[1]}: failed: the same instance as {mr[0]}" in err
    assert len(list((site / "o").rglob("*.dcm"))) == 1


@needs_rewriter
def test_a_secondary_capture_is_refused(site: Path) -> None:
    sc = Path(str(get_testdata_file("SC_rgb_small_odd.dcm")))
    code, _, err = dicomrelay(site, str(sc), "ct.dcm", "--out", "o", "--key-file", "key")
    assert code == FAILURE
    assert f"{sc}: refused: Secondary Capture Image without Burned In Annotation" in err
    assert "1 de-identified, 1 refused, 0 failed" in err
    assert len(list((site / "o").rglob("*.dcm"))) == 1


@needs_rewriter
@pytest.mark.slow
def test_a_thousand_slice_ct_study(site: Path) -> None:
    """The must-show: a 1,000-slice CT study, every table row held, every output
    read whole by pydicom, pixel bytes identical, UIDs consistent and stable."""
    from dicomrelay import scan_file
    from dicomrelay.synth import PROFILES, write_study

    study = write_study(site / "ct1000", PROFILES["ct"], 1000)
    for run in ("a", "b"):
        code, out, err = dicomrelay(site, str(study), "--out", run, "--key-file", "key")
        assert code == 0, err
        assert "1000 de-identified, 0 refused, 0 failed" in err
    key, table = KEY.encode(), profile_table()
    outputs = sorted((site / "a").rglob("*.dcm"))
    assert len(outputs) == 1000
    assert len({p.parent for p in outputs}) == 1  # one study, one series
    pseudonyms = set()
    for line in out.splitlines():
        source, _, named = line.partition(" -> ")
        src, dst = Path(source), site / named
        before, after = read(src), read(dst)
        assert after.SOPInstanceUID == new_uid(key, before.SOPInstanceUID)
        assert dst.stem == after.SOPInstanceUID
        assert dst.read_bytes() == (site / "a" / Path(named).relative_to("b")).read_bytes()
        pseudonyms.add(after.PatientID)
        old = originals(before)
        for tag, elem in output_elements(after):
            row = table.row(tag)
            if row is not None:
                check_row(row, resolved_action(row, ()), tag, elem, old.get(tag, set()))
        s, d = scan_file(src), scan_file(dst)
        assert s.pixel_data_offset is not None
        assert d.pixel_data_offset is not None
        assert s.pixel_data_length == d.pixel_data_length
        with src.open("rb") as a, dst.open("rb") as b:
            a.seek(s.pixel_data_offset)
            b.seek(d.pixel_data_offset)
            assert a.read(s.pixel_data_length) == b.read(d.pixel_data_length)
        assert after.pixel_array.shape == (512, 512)  # reads whole
    assert len(pseudonyms) == 1
    assert pseudonyms.isdisjoint({"", "SYN00000000"})
