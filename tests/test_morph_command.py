"""``dicomrelay morph``: tags and values as an operator writes them, files
written with the pixel data untouched, and one line for each mistake."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pytest

from dicom_builders import read_with_pydicom
from dicomrelay import scan
from dicomrelay.cli import main
from dicomrelay.cli.morph_command import parse_set, parse_tag
from rewrite_reference import bundled

CT = bundled("CT_small.dcm")
MR = bundled("MR_small_implicit.dcm")


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("0010,0020", 0x00100020),
        ("(0010,0020)", 0x00100020),
        ("7fe00010", 0x7FE00010),
        ("PatientID", 0x00100020),
    ],
)
def test_tags_as_an_operator_writes_them(text: str, tag: int) -> None:
    assert parse_tag(text) == tag


@pytest.mark.parametrize("text", ["Patient", "0010-0020", "001,0020", ""])
def test_what_is_not_a_tag(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_tag(text)


def test_values_with_and_without_their_vr() -> None:
    assert parse_set("PatientID=LOCAL") == (0x00100020, "LO", "LOCAL")
    assert parse_set("0011,0010=LO:ACME") == (0x00110010, "LO", "ACME")
    assert parse_set("PatientID=LO:A:B") == (0x00100020, "LO", "A:B")
    assert parse_set("PatientComments=see: notes") == (0x00104000, "LT", "see: notes")
    assert parse_set("PatientID=") == (0x00100020, "LO", "")
    with pytest.raises(argparse.ArgumentTypeError, match="give the VR"):
        parse_set("0011,1010=x")
    with pytest.raises(argparse.ArgumentTypeError, match="TAG=VALUE"):
        parse_set("PatientID")


def test_morph_writes_each_file_with_its_pixel_data_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in" / "series"
    folder.mkdir(parents=True)
    (folder / "ct.dcm").write_bytes(CT.read_bytes())
    (folder / "mr.dcm").write_bytes(MR.read_bytes())
    code = main(
        [
            "morph",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "out"),
            "--set",
            "PatientID=LOCAL-1",
            "--set",
            "0011,0010=LO:ACME",
            "--remove",
            "ReferringPhysicianName",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for source in (CT, MR):
        out = tmp_path / "out" / "series" / ("ct.dcm" if source == CT else "mr.dcm")
        ds = read_with_pydicom(out.read_bytes())
        assert ds.PatientID == "LOCAL-1"
        assert ds[0x00110010].value == "ACME"
        assert "ReferringPhysicianName" not in ds
        before, after = scan(source.read_bytes()), scan(out.read_bytes())
        old = source.read_bytes()[before.pixel_data_offset :][: before.pixel_data_length]
        assert out.read_bytes()[after.pixel_data_offset :][: after.pixel_data_length] == old
        assert f"{out}\tsha256:{hashlib.sha256(out.read_bytes()).hexdigest()}" in lines


def test_a_file_that_fails_is_named_and_the_rest_are_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom")
    code = main(
        ["morph", str(bad), str(CT), "--out", str(tmp_path / "out"), "--set", "PatientID=X"]
    )
    assert code == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"dicomrelay morph: {bad}: ")
    assert (tmp_path / "out" / CT.name).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "0011,1010=x"], "give the VR"),
        (["--set", "Nonsense=1"], "not a tag"),
        ([], "nothing to do"),
    ],
)
def test_usage_mistakes_are_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    try:
        code = main(["morph", str(CT), "--out", str(tmp_path), *args])
    except SystemExit as e:  # argparse's own usage errors
        code = int(e.code or 0)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert message in err[0]


def test_out_may_not_overwrite_a_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "ct.dcm"
    src.write_bytes(CT.read_bytes())
    assert main(["morph", str(src), "--out", str(tmp_path), "--set", "PatientID=X"]) == 2
    assert "would overwrite it" in capsys.readouterr().err
    assert src.read_bytes() == CT.read_bytes()
