"""Morphing a CT instance (512x512, 16-bit): the Rust header rewrite beside
pydicom read-modify-write of the same instance, in the same run.

The edits are a reconciliation's: the local patient ID and issuer, a new
accession number. The rewrite's header-only figure is its cost per instance
(the pixel data is referred to, never copied); with a digest it also hashes
the output. Each test records CPU microseconds per instance (process time,
over a loop of its own) in ``extra_info``; the benchmark asserts nothing about
time.
"""

from __future__ import annotations

from io import BytesIO

import pydicom
from pytest_benchmark.fixture import BenchmarkFixture

from benches.races import cpu_us
from dicomrelay import scan
from dicomrelay.rewrite import DigestName, Edit, Set, rewrite

EDITS: list[Edit] = [
    Set(tag=0x00100020, value="LOCAL-00012345", vr="LO"),
    Set(tag=0x00100021, value="TRUST-B", vr="LO"),
    Set(tag=0x00080050, value="B-ACC-0001", vr="SH"),
]
CPU_LOOPS = 2000


def _pixels(data: bytes) -> bytes:
    info = scan(data)
    assert info.pixel_data_offset is not None
    assert info.pixel_data_length is not None
    return data[info.pixel_data_offset :][: info.pixel_data_length]


def test_morph_header(benchmark: BenchmarkFixture, ct_instance: bytes) -> None:
    benchmark.group = "morph"
    result = benchmark(rewrite, ct_instance, EDITS, digest=None)
    benchmark.extra_info["cpu_us_per_instance"] = cpu_us(
        lambda: rewrite(ct_instance, EDITS, digest=None), CPU_LOOPS
    )
    out = result.header + ct_instance[result.pixel_offset :][: result.pixel_length]
    assert _pixels(out) == _pixels(ct_instance)  # untouched, and only referred to
    assert scan(out).patient_id == "LOCAL-00012345"


def _morph_with_digest(benchmark: BenchmarkFixture, data: bytes, digest: DigestName) -> None:
    # The header, and the digest of the whole output (the pixel data read once).
    benchmark.group = "morph"
    result = benchmark(rewrite, data, EDITS, digest=digest)
    benchmark.extra_info["cpu_us_per_instance"] = cpu_us(
        lambda: rewrite(data, EDITS, digest=digest), CPU_LOOPS // 4
    )
    assert result.digest is not None


def test_morph_with_blake3(benchmark: BenchmarkFixture, ct_instance: bytes) -> None:
    _morph_with_digest(benchmark, ct_instance, "blake3")


def test_morph_with_sha256(benchmark: BenchmarkFixture, ct_instance: bytes) -> None:
    _morph_with_digest(benchmark, ct_instance, "sha256")


def _pydicom_morph(data: bytes) -> bytes:
    ds = pydicom.dcmread(BytesIO(data))
    ds.PatientID = "LOCAL-00012345"
    ds.IssuerOfPatientID = "TRUST-B"
    ds.AccessionNumber = "B-ACC-0001"
    out = BytesIO()
    ds.save_as(out)
    return out.getvalue()


def test_pydicom_read_modify_write(benchmark: BenchmarkFixture, ct_instance: bytes) -> None:
    benchmark.group = "morph"
    out = benchmark(_pydicom_morph, ct_instance)
    benchmark.extra_info["cpu_us_per_instance"] = cpu_us(
        lambda: _pydicom_morph(ct_instance), CPU_LOOPS // 20
    )
    assert _pixels(out) == _pixels(ct_instance)
