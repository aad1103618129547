"""De-identification's decision per instance (the header's values read in
Rust, the edits planned in Python) beside pydicom reading, editing and
writing the same CT slice, which is what a Python de-identifier does."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
from pytest_benchmark.fixture import BenchmarkFixture

from dicomrelay.deid_files import read_header
from dicomrelay.deidentify import Option, plan_deidentification

KEY = b"a benchmark's project key: 32 b."
ALL_OPTIONS = frozenset(Option) - {Option.RETAIN_LONGITUDINAL_FULL_DATES}


def _plan(path: Path, options: frozenset[Option]) -> int:
    return len(plan_deidentification(read_header(path, options), options, KEY).edits)


def test_deidentify_plan(benchmark: BenchmarkFixture, ct_path: Path) -> None:
    benchmark.group = "deidentify"
    assert benchmark(_plan, ct_path, frozenset()) > 400


def test_deidentify_plan_every_option(benchmark: BenchmarkFixture, ct_path: Path) -> None:
    benchmark.group = "deidentify"
    assert benchmark(_plan, ct_path, ALL_OPTIONS) > 400


def _pydicom_read_modify_write(path: Path) -> int:
    # A small share of the profile's work: the peer's figure is a floor.
    ds = pydicom.dcmread(path)
    ds.remove_private_tags()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
        if keyword in ds:
            ds[keyword].value = ""
    ds.PatientIdentityRemoved = "YES"
    out = BytesIO()
    ds.save_as(out)
    return len(out.getvalue())


def test_pydicom_deidentify(benchmark: BenchmarkFixture, ct_path: Path) -> None:
    benchmark.group = "deidentify"
    assert benchmark(_pydicom_read_modify_write, ct_path) > 500_000
