"""Reconciling a CT instance (512x512, 16-bit) as the receiver does: the plan
(``plan_reconciliation``) and the Rust header rewrite, beside pydicom making
the same changes (the local IDs and accession number set, Original Attributes
Sequence and Other Patient IDs Sequence added) by read-modify-write, in the
same run. Each test records CPU microseconds per instance in ``extra_info``;
the receiver's whole cost is the ``sha256`` case (it hashes the output to
store it by its digest)."""

from __future__ import annotations

import datetime
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pytest_benchmark.fixture import BenchmarkFixture

from benches.races import cpu_us
from dicomrelay import scan
from dicomrelay._native import header_values
from dicomrelay.reconcile import (
    TAGS_TO_READ,
    ForeignPatient,
    LocalPatient,
    Reconcile,
    plan_reconciliation,
)
from dicomrelay.rewrite import DigestName, Rewritten, rewrite

RULE = Reconcile(csv=Path("patients.csv"), local_issuer="TRUSTB", accession_prefix="A-")
FOREIGN = ForeignPatient(sender="RX1", patient_id="SYN00000001", issuer="DICOMRELAY")
LOCAL = LocalPatient(patient_id="B-00012345")
NOW = datetime.datetime(2026, 12, 3, 9, 0, tzinfo=datetime.UTC)
CPU_LOOPS = 1000


def _reconcile(data: bytes, digest: DigestName | None) -> Rewritten:
    values = header_values(data, TAGS_TO_READ)[0]
    edits = plan_reconciliation(
        values, foreign=FOREIGN, local=LOCAL, rule=RULE, modifying_system="dicomrelay RX2", now=NOW
    )
    return rewrite(data, edits, digest=digest)


def _pydicom(data: bytes) -> bytes:
    ds = pydicom.dcmread(BytesIO(data))
    previous = Dataset()
    previous.AccessionNumber = ds.AccessionNumber
    previous.IssuerOfPatientID = ds.IssuerOfPatientID
    previous.PatientID = ds.PatientID
    original = Dataset()
    original.ModifiedAttributesSequence = Sequence([previous])
    original.AttributeModificationDateTime = "20261203090000.000000+0000"
    original.ModifyingSystem = "dicomrelay RX2"
    original.SourceOfPreviousValues = "RX1"
    original.ReasonForTheAttributeModification = "COERCE"
    other = Dataset()
    other.PatientID = ds.PatientID
    other.IssuerOfPatientID = ds.IssuerOfPatientID
    other.TypeOfPatientID = "TEXT"
    ds.AccessionNumber = "A-" + ds.AccessionNumber
    ds.PatientID = LOCAL.patient_id
    ds.IssuerOfPatientID = "TRUSTB"
    ds.OriginalAttributesSequence = Sequence([original])
    ds.OtherPatientIDsSequence = Sequence([other])
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("digest", [None, "sha256", "blake3"])
def test_reconcile_rust(
    benchmark: BenchmarkFixture, ct_instance: bytes, digest: DigestName | None
) -> None:
    benchmark.group = "reconcile"
    result = benchmark(_reconcile, ct_instance, digest)
    loops = CPU_LOOPS if digest is None else CPU_LOOPS // 4
    benchmark.extra_info["cpu_us_per_instance"] = cpu_us(
        lambda: _reconcile(ct_instance, digest), loops
    )
    out = result.header + ct_instance[result.pixel_offset :][: result.pixel_length]
    info = scan(out)
    assert (info.patient_id, info.accession_number) == ("B-00012345", "A-ACC000001")
    assert (
        pydicom.dcmread(BytesIO(out)).PixelData == pydicom.dcmread(BytesIO(ct_instance)).PixelData
    )


def test_reconcile_pydicom(benchmark: BenchmarkFixture, ct_instance: bytes) -> None:
    benchmark.group = "reconcile"
    out = benchmark(_pydicom, ct_instance)
    benchmark.extra_info["cpu_us_per_instance"] = cpu_us(lambda: _pydicom(ct_instance), 200)
    assert scan(out).patient_id == "B-00012345"
