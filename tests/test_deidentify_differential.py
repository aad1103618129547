"""The header rewriter against the reference applier, on de-identification
plans: every bundled file under three option sets, the native header reader
feeding the plan, pydicom reading both results. Runs once dicomrelay.rewrite
(the Rust rewriter) is built in."""

from __future__ import annotations

import importlib
import importlib.util
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from deid_reference import apply_edits, datasets, read
from dicom_builders import MALFORMED, file_id, pydicom_test_files
from dicomrelay.deid_files import read_header
from dicomrelay.deidentify import Option, SafePrivate, plan_deidentification

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("dicomrelay.rewrite") is None,
    reason="dicomrelay.rewrite (the header rewriter) is not built in",
)

KEY = b"the differential test's key, 32b"
SAFE = (SafePrivate(group=0x0019, creator="GEMS_ACQU_01", element=0x23),)
OPTION_SETS = {
    "basic": frozenset[Option](),
    "every-option": frozenset(Option) - {Option.RETAIN_LONGITUDINAL_FULL_DATES},
    "full-dates-uids": frozenset({Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_UIDS}),
}
FILES = [
    p for p in pydicom_test_files() if p.name not in MALFORMED and not p.name.startswith("DICOMDIR")
]
CASES = [
    pytest.param(
        path,
        name,
        id=f"{file_id(path)}-{name}",
    )
    for path in FILES
    for name in OPTION_SETS
]


def _values(ds: Dataset) -> dict[object, object]:
    return {e.tag: e.value for e in ds if e.tag.element != 0 and e.tag != 0x7FE00010}


@pytest.mark.parametrize(("path", "options"), CASES)
def test_rewriter_matches_the_reference(path: Path, options: str, tmp_path: Path) -> None:
    chosen = OPTION_SETS[options]
    plan = plan_deidentification(
        read_header(path, chosen), chosen, KEY, safe_private=SAFE, allow_burned_in=True
    )
    rewrite = importlib.import_module("dicomrelay.rewrite").rewrite
    data = path.read_bytes()
    result = rewrite(data, plan.edits)
    pixels = data[result.pixel_offset : result.pixel_offset + result.pixel_length]
    got = pydicom.dcmread(BytesIO(result.header + pixels + result.trailer), force=True)
    apply_edits(read(path), plan.edits).save_as(tmp_path / "expected.dcm")
    expected = read(tmp_path / "expected.dcm")
    ours, theirs = list(datasets(got)), list(datasets(expected))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert _values(a) == _values(b)
