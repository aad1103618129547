"""What our SCP stores is well-formed. Each malformed dataset that has been
sent to it (an item overrunning its defined-length sequence, a sequence of
random bytes, odd lengths, data whose VR encoding differs from its transfer
syntax, and the cases always refused: truncation, random bytes, wrong and huge
lengths, deep nesting, a UID mismatch) is answered with a failure and
quarantined; every file it stores, over pydicom's bundled files and hand-built
ones, reads cleanly in pydicom and in DCMTK's dcmdump. Our storescu refuses to
send the malformed files, naming each, and ``dicomrelay scan`` fails on them.
"""

from __future__ import annotations

import random
import subprocess
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import orjson
import pydicom
import pynetdicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset

from dicom_builders import (
    EXPLICIT,
    EXPLICIT_LE,
    IMPLICIT,
    IMPLICIT_LE,
    TEST_FILES_DIR,
    Encoding,
    element,
    item,
    nested_sequences,
    pydicom_test_files,
)
from dicomrelay import DicomParseError, scan_many
from peers import DCMTK, dicomrelay_command, free_port, listening, run

pytestmark = pytest.mark.skipif(not (DCMTK / "dcmdump").exists(), reason="DCMTK not installed")

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
STUDY, SERIES = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"


def _uid(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\0" * (len(raw) % 2)


def instance(
    uid: str,
    *,
    enc: Encoding = EXPLICIT,
    sequence: bytes | None = None,
    name: bytes = b"Doe^Jane",
    extra: bytes = b"",
) -> bytes:
    """A small Secondary Capture dataset, in tag order; `sequence` is the value
    of Referenced Series Sequence (0008,1115), a defined-length sequence."""
    seq = b"" if sequence is None else element(0x00081115, b"SQ", sequence, enc)
    return (
        element(0x00080016, b"UI", _uid(SECONDARY_CAPTURE), enc)
        + element(0x00080018, b"UI", _uid(uid), enc)
        + element(0x00080060, b"CS", b"OT", enc)
        + seq
        + extra
        + element(0x00100010, b"PN", name, enc)
        + element(0x00100020, b"LO", b"PID-1 ", enc)
        + element(0x0020000D, b"UI", _uid(STUDY), enc)
        + element(0x0020000E, b"UI", _uid(SERIES), enc)
    )


def part10(uid: str, dataset: bytes, transfer_syntax: str) -> bytes:
    """A file whose meta group (SOP Class and Instance UIDs, transfer syntax)
    is what a sender puts in the C-STORE request: `uid`, whatever the dataset says."""
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SECONDARY_CAPTURE)
    meta.MediaStorageSOPInstanceUID = UID(uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta)
    return bytes(128) + b"DICM" + buf.getvalue() + dataset


def _ref(enc: Encoding = EXPLICIT) -> bytes:
    return element(0x00081150, b"UI", _uid(SECONDARY_CAPTURE), enc) + element(
        0x00081155, b"UI", _uid("1.2.3.4"), enc
    )


BASE = "1.2.826.0.1.3680043.8.498.10."


def _malformed() -> dict[str, tuple[str, bytes, str]]:
    """Each malformed case: its SOP Instance UID (in the request), the file, and
    what the SCP's reason for refusing it must say."""
    noise = random.Random(10).randbytes(64)
    seq_overrun = "declared length runs past the end of its parent in element (0008,1115)"
    mismatch = "dataset encoding does not match its transfer syntax"
    good = instance(BASE + "7")
    cases = {
        "item-overruns-sequence": (
            instance(BASE + "1", sequence=item(_ref(), length=200)),
            EXPLICIT_LE,
            seq_overrun,
        ),
        "item-overruns-sequence-implicit": (
            instance(BASE + "2", enc=IMPLICIT, sequence=item(_ref(IMPLICIT), IMPLICIT, length=200)),
            IMPLICIT_LE,
            seq_overrun,
        ),
        "sequence-of-random-bytes": (
            instance(BASE + "3", sequence=noise),
            EXPLICIT_LE,
            "malformed item in element (0008,1115)",
        ),
        "odd-length": (
            instance(BASE + "4", name=b"Doe"),
            EXPLICIT_LE,
            "odd value length in element (0010,0010)",
        ),
        "implicit-under-explicit": (instance(BASE + "5", enc=IMPLICIT), EXPLICIT_LE, mismatch),
        "explicit-under-implicit": (instance(BASE + "6"), IMPLICIT_LE, mismatch),
        "truncated": (good[:-5], EXPLICIT_LE, "malformed dataset: "),
        "random": (noise, EXPLICIT_LE, "malformed dataset: "),
        "wrong-length": (
            instance(BASE + "9") + element(0x00280010, b"US", b"\0\2", length=8),
            EXPLICIT_LE,
            "in element (0028,0010)",
        ),
        "huge-pixel-length": (
            instance(BASE + "10") + element(0x7FE00010, b"OB", bytes(8), length=0xFFFFFFF0),
            EXPLICIT_LE,
            "in element (7FE0,0010)",
        ),
        "deep-nesting": (
            instance(BASE + "11", extra=nested_sequences(200)),
            EXPLICIT_LE,
            "sequences nested too deeply",
        ),
        "uid-mismatch": (instance(BASE + "99"), EXPLICIT_LE, "SOP Instance UID differs"),
    }
    return {
        name: (uid, part10(uid, dataset, ts), why)
        for n, (name, (dataset, ts, why)) in enumerate(cases.items(), 1)
        for uid in [BASE + str(n)]
    }


def _well_formed() -> dict[str, bytes]:
    base = "1.2.826.0.1.3680043.8.498.20."
    nested = item(_ref() + element(0x00081140, b"SQ", item(_ref())))
    implicit_nested = item(
        _ref(IMPLICIT) + element(0x00081140, b"SQ", item(_ref(IMPLICIT), IMPLICIT), IMPLICIT),
        IMPLICIT,
    )
    private = element(0x00090010, b"LO", b"ACME 1.0") + element(0x00091001, b"UN", b"odd")
    return {
        "defined-sequences": part10(base + "1", instance(base + "1", sequence=nested), EXPLICIT_LE),
        "defined-sequences-implicit": part10(
            base + "2", instance(base + "2", enc=IMPLICIT, sequence=implicit_nested), IMPLICIT_LE
        ),
        "odd-private-value": part10(base + "3", instance(base + "3", extra=private), EXPLICIT_LE),
    }


MALFORMED = _malformed()
WELL_FORMED = _well_formed()


@pytest.fixture
def scp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, Path]]:
    # pynetdicom sends a file's dataset bytes as they are, not decoded and encoded anew.
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    port, out = free_port(), tmp_path / "received"
    command = dicomrelay_command("storescp", str(port), "-od", str(out), "-aet", "RELAY")
    with listening([*command, "--host", "127.0.0.1"], port):
        yield port, out


def _associate(port: int, sop_class: str, transfer_syntax: str) -> Association:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(sop_class, [transfer_syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="RELAY")
    assert assoc.is_established
    return assoc


def send_file(port: int, path: Path) -> int | None:
    """Send one file with pynetdicom: the status, or None when our SCP accepts
    no context for it."""
    meta, _ = split_dataset(path)
    assoc = _associate(port, meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    try:
        if not assoc.accepted_contexts:
            return None
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status)


def sendable(path: Path) -> bool:
    """Has the file the meta group a sender needs to put it in a C-STORE?"""
    try:
        meta, _ = split_dataset(path)
    except Exception:
        return False
    needed = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
    return all(meta.get(k) for k in needed)


def assert_reads_cleanly(path: Path) -> None:
    # Structure, not values: pydicom's complaints about a value's characters
    # (a UID component with a leading zero...) are the sender's business.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(path)
        for elem in ds.iterall():
            _ = elem.value
    complaints = [str(w.message) for w in caught]
    assert [c for c in complaints if not c.startswith("Invalid value for VR")] == [], path.name
    # dcmdump prints values in their own character sets: bytes, not text.
    dump = subprocess.run([str(DCMTK / "dcmdump"), str(path)], capture_output=True, timeout=60)
    output = (dump.stdout + dump.stderr).decode("latin-1")
    assert dump.returncode == 0, f"{path.name}: {output[-2000:]}"
    errors = [ln for ln in output.splitlines() if ln.startswith("E:")]
    assert errors == [], f"{path.name}: {errors}"


def write_all(files: dict[str, bytes], folder: Path) -> dict[str, Path]:
    """Write each file as NAME.dcm in `folder`."""
    folder.mkdir()
    paths = {name: folder / f"{name}.dcm" for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    return paths


def test_malformed_datasets_are_quarantined_and_what_is_stored_reads_cleanly(
    scp: tuple[int, Path], tmp_path: Path
) -> None:
    port, out = scp
    malformed = write_all({k: v[1] for k, v in MALFORMED.items()}, tmp_path / "malformed")
    status = {name: send_file(port, path) for name, path in malformed.items()}
    expected = {uid: why for uid, _, why in MALFORMED.values()}

    # pydicom's truncated RT plan, as pynetdicom sends it: read by pydicom (which
    # keeps the sequence it cut short, odd length and all) and encoded anew.
    plan = pydicom.dcmread(TEST_FILES_DIR / "rtplan_truncated.dcm")
    assoc = _associate(port, plan.SOPClassUID, plan.file_meta.TransferSyntaxUID)
    try:
        status["rtplan_truncated.dcm"] = int(assoc.send_c_store(plan).Status)
    finally:
        assoc.release()
    expected[plan.SOPInstanceUID] = "odd value length in element (300A,00B0)"
    # Implicit VR data labelled JPEG Baseline (explicit VR), sent as it is.
    jpeg = TEST_FILES_DIR / "SC_rgb_jpeg.dcm"
    status[jpeg.name] = send_file(port, jpeg)
    expected[split_dataset(jpeg)[0].MediaStorageSOPInstanceUID] = (
        "does not match its transfer syntax"
    )

    well_formed = write_all(WELL_FORMED, tmp_path / "well-formed")
    accepted = {name: send_file(port, path) for name, path in well_formed.items()}
    others = [p for p in pydicom_test_files() if p.name != jpeg.name and sendable(p)]
    corpus = {p.name: send_file(port, p) for p in others}

    failed = {n for n, s in status.items() if s is not None and s & 0xF000 in (0xA000, 0xC000)}
    assert failed == set(status), status
    assert accepted == dict.fromkeys(well_formed, 0)
    # pydicom's files the scanner refuses are refused by the SCP too (others
    # may be, for reasons of the SCP's own: no Study Instance UID...).
    unreadable = {p.name for p in others if isinstance(scan_many([p])[0], DicomParseError)}
    assert unreadable == {"MR_truncated.dcm", "rtplan_truncated.dcm", "DICOMDIR-nooffset"}
    assert {n for n in unreadable if corpus[n] != 0} == unreadable
    for name in ("CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm"):
        assert corpus[name] == 0, name
    refusals = defaultdict(list)
    for r in map(orjson.loads, (out / "refused.jsonl").read_bytes().splitlines()):
        refusals[r["sop_instance_uid"]].append(r["reason"])
    for uid, why in expected.items():
        assert any(why in reason for reason in refusals[uid]), (uid, refusals[uid])
    assert len(list((out / "quarantine").glob("*.reason"))) >= len(expected)

    stored = sorted(out.glob("*.dcm"))
    assert len(stored) >= len(well_formed) + 60
    for path in stored:
        assert_reads_cleanly(path)


def test_our_storescu_and_scan_refuse_each_malformed_file(tmp_path: Path) -> None:
    # (A meta group naming another instance than the dataset is well-formed
    # data: storescu sends the dataset's own UID.)
    files = {k: v[1] for k, v in MALFORMED.items() if k != "uid-mismatch"}
    malformed = write_all(files, tmp_path / "malformed")
    for name in ("rtplan_truncated.dcm", "SC_rgb_jpeg.dcm"):
        malformed[name] = TEST_FILES_DIR / name
    paths = [str(p) for p in malformed.values()]

    port = free_port()  # nothing listens: nothing may be sent
    result = run(dicomrelay_command("storescu", "127.0.0.1", str(port), *paths))
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    for path in paths:
        [line] = [ln for ln in lines if f" {path}: " in ln]
        assert line.startswith(f"dicomrelay storescu: skipping {path}: not a DICOM instance (")
    assert "nothing to send" in result.stderr
    assert "Traceback" not in result.stderr

    scanned = run(dicomrelay_command("scan", *paths))
    assert scanned.returncode == 1
    for path in paths:
        assert f"{path}: DicomParseError: " in scanned.stderr
    well_formed = write_all(WELL_FORMED, tmp_path / "well-formed")
    assert run(dicomrelay_command("scan", *map(str, well_formed.values()))).returncode == 0
