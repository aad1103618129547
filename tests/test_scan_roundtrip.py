"""Round trips: datasets generated with hypothesis, written by pydicom (or by
hand, where pydicom will not write the bytes we want), scanned back.

Each scan is checked against the values that went in and, as a second opinion,
against pydicom reading the same bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.sequence import Sequence
from pydicom.uid import UID

import dicomrelay
from dicom_builders import (
    BIG,
    DEFLATED_LE,
    EXPLICIT,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT,
    IMPLICIT_LE,
    JPEG_BASELINE,
    RLE_LOSSLESS,
    Encoding,
    element,
    expected_from_pydicom,
    item,
    write,
)

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHARSETS = [None, "ISO_IR 100", "ISO_IR 192"]
# Characters a value may hold in each repertoire: never a backslash (the value
# delimiter), NUL or control characters.
ALPHABETS = {
    None: st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\"),
    "ISO_IR 100": st.characters(
        min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\\", exclude_categories=["Cc"]
    ),
    "ISO_IR 192": st.characters(
        exclude_characters="\\", exclude_categories=["Cc", "Cs", "Co", "Cn", "Zl", "Zp"]
    ),
}


@st.composite
def uids(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.integers(0, 10**12), min_size=1, max_size=10))
    return ("1.2." + ".".join(map(str, parts)))[:64].rstrip(".")


def _text(charset: str | None, max_size: int) -> st.SearchStrategy[str]:
    # No trailing spaces: readers strip them, which is tested on its own below.
    return st.text(ALPHABETS[charset], max_size=max_size).map(lambda s: s.rstrip(" "))


@st.composite
def person_names(draw: st.DrawFn, charset: str | None) -> str:
    """One to three component groups (alphabetic=ideographic=phonetic), the last non-empty."""
    letters = ALPHABETS[charset].filter(lambda c: c not in "^= ")
    component = st.text(letters, max_size=8)
    groups = draw(
        st.lists(st.lists(component, min_size=1, max_size=5).map("^".join), min_size=1, max_size=3)
    )
    name = "=".join(groups)
    return name if groups[-1] else name + "X"


@dataclass(frozen=True)
class Spec:
    """What a generated instance holds at its top level."""

    charset: str | None
    uids: tuple[str, str, str, str]  # SOP class, SOP instance, study, series
    patient_id: str
    issuer: str
    patient_name: str
    accession: str
    modality: str
    study_date: str
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    frames: int | None
    pixel: bytes | None
    pixel_vr: str
    depth: int  # nested sequences holding decoy values
    private: bytes | None


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    cs = draw(st.sampled_from(CHARSETS))
    maybe_us = st.none() | st.integers(0, 0xFFFF)
    return Spec(
        charset=cs,
        uids=(draw(uids()), draw(uids()), draw(uids()), draw(uids())),
        patient_id=draw(_text(cs, 64)),
        issuer=draw(_text(cs, 64)),
        patient_name=draw(person_names(cs)),
        accession=draw(_text(cs, 16)),
        modality=draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", max_size=16)),
        study_date=draw(st.dates().map(lambda d: d.strftime("%Y%m%d"))),
        rows=draw(maybe_us),
        columns=draw(maybe_us),
        bits_allocated=draw(st.none() | st.sampled_from([1, 8, 12, 16, 32, 64])),
        frames=draw(st.none() | st.integers(-(2**31), 2**31 - 1)),
        pixel=draw(st.none() | st.binary(max_size=300)),
        pixel_vr=draw(st.sampled_from(["OB", "OW"])),
        depth=draw(st.integers(0, 4)),
        private=draw(st.none() | st.binary(max_size=40)),
    )


def _decoys(depth: int) -> Dataset:
    """An item whose values must not leak to the top level: the scanner reads only there."""
    ds = Dataset()
    ds.PatientID = "DECOY"
    ds.SOPInstanceUID = "9.9.9"
    ds.Rows = 1
    ds.PixelData = b"\1\2\3\4"  # like an icon image sequence
    ds["PixelData"].VR = "OB"
    if depth > 1:
        ds.ReferencedImageSequence = Sequence([_decoys(depth - 1), Dataset()])
    return ds


def build(spec: Spec) -> Dataset:
    with config.disable_value_validation():
        ds = Dataset()
        if spec.charset:
            ds.SpecificCharacterSet = spec.charset
        ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = spec.uids
        ds.StudyDate = spec.study_date
        ds.AccessionNumber = spec.accession
        ds.Modality = spec.modality
        ds.PatientName = spec.patient_name
        ds.PatientID = spec.patient_id
        ds.IssuerOfPatientID = spec.issuer
        if spec.depth:
            ds.ReferencedStudySequence = Sequence([_decoys(spec.depth)])
        if spec.private is not None:
            block = ds.private_block(0x0009, "DICOMRELAY TEST", create=True)
            block.add_new(0x01, "OB", spec.private)
            block.add_new(0x02, "SQ", Sequence([_decoys(1)]))
        for keyword in ("rows", "columns", "bits_allocated"):
            value = getattr(spec, keyword)
            if value is not None:
                setattr(ds, keyword.title().replace("_", ""), value)
        if spec.frames is not None:
            ds.NumberOfFrames = spec.frames
        if spec.pixel is not None:
            ds.PixelData = spec.pixel
            ds["PixelData"].VR = spec.pixel_vr
    return ds


def with_meta(ds: Dataset, transfer_syntax: str) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    with config.disable_value_validation():
        return write(ds, enforce_file_format=True)


def expected_values(spec: Spec) -> dict[str, object]:
    return {
        "specific_character_set": spec.charset,
        "sop_class_uid": spec.uids[0],
        "sop_instance_uid": spec.uids[1],
        "study_instance_uid": spec.uids[2],
        "series_instance_uid": spec.uids[3],
        "patient_id": spec.patient_id or None,
        "issuer_of_patient_id": spec.issuer or None,
        "patient_name": spec.patient_name or None,
        "accession_number": spec.accession or None,
        "modality": spec.modality or None,
        "study_date": spec.study_date,
        "rows": spec.rows,
        "columns": spec.columns,
        "bits_allocated": spec.bits_allocated,
        "number_of_frames": spec.frames,
        "encapsulated": False,
        "fragments": None,
    }


def check_pixel_value(
    data: bytes, info: dicomrelay.InstanceInfo, value: bytes, enc: Encoding
) -> None:
    """The reported range holds exactly `value`, after a 32-bit length that says so."""
    off, n = info.pixel_data_offset, info.pixel_data_length
    assert off is not None
    assert n == len(value)
    assert data[off : off + n] == value
    if not info.encapsulated:
        assert data[off - 4 : off] == enc.u32(n)


def check_against_pydicom(data: bytes, info: dicomrelay.InstanceInfo) -> None:
    expected = expected_from_pydicom(data)
    got = info.as_dict()
    assert {k: got[k] for k in expected} == expected


SYNTAXES = {IMPLICIT_LE: IMPLICIT, EXPLICIT_LE: EXPLICIT, EXPLICIT_BE: BIG, DEFLATED_LE: EXPLICIT}


@pytest.mark.parametrize(
    "transfer_syntax", list(SYNTAXES), ids=["implicit", "explicit", "big", "deflated"]
)
@SETTINGS
@given(spec=specs())
def test_part10_file_round_trips(transfer_syntax: str, spec: Spec) -> None:
    data = with_meta(build(spec), transfer_syntax)
    info = dicomrelay.scan(data)
    got = info.as_dict()
    expected = expected_values(spec)
    assert {k: got[k] for k in expected} == expected
    assert info.transfer_syntax_uid == transfer_syntax
    assert info.has_meta
    assert info.deflated == (transfer_syntax == DEFLATED_LE)
    (group_length,) = struct.unpack_from("<I", data, 140)
    assert info.dataset_offset == 144 + group_length
    if spec.pixel is None:
        assert info.pixel_data_offset is info.pixel_data_length is None
    elif info.deflated:
        assert info.pixel_data_offset is None
        assert info.pixel_data_length == len(spec.pixel) + len(spec.pixel) % 2
    else:
        check_pixel_value(
            data, info, spec.pixel + b"\0" * (len(spec.pixel) % 2), SYNTAXES[transfer_syntax]
        )
    check_against_pydicom(data, info)


@pytest.mark.parametrize("preamble", [False, True], ids=["bare", "preamble-no-meta"])
@pytest.mark.parametrize(
    ("enc", "uid"),
    [(IMPLICIT, IMPLICIT_LE), (EXPLICIT, EXPLICIT_LE), (BIG, EXPLICIT_BE)],
    ids=["implicit", "explicit", "big"],
)
@SETTINGS
@given(spec=specs())
def test_dataset_without_meta_round_trips(
    enc: Encoding, uid: str, preamble: bool, spec: Spec
) -> None:
    # No meta group: the scanner infers the syntax from the first element.
    with config.disable_value_validation():
        raw = write(build(spec), implicit_vr=not enc.explicit, little_endian=enc.little)
    data = bytes(128) + b"DICM" + raw if preamble else raw
    info = dicomrelay.scan(data)
    got = info.as_dict()
    expected = expected_values(spec)
    assert {k: got[k] for k in expected} == expected
    assert (info.transfer_syntax_uid, info.has_meta, info.deflated) == (uid, False, False)
    assert info.dataset_offset == (132 if preamble else 0)
    if spec.pixel is not None:
        check_pixel_value(data, info, spec.pixel + b"\0" * (len(spec.pixel) % 2), enc)
    check_against_pydicom(data, info)


@SETTINGS
@given(
    spec=specs(),
    frames=st.lists(st.binary(min_size=6, max_size=200), min_size=1, max_size=4),
    per_frame=st.integers(1, 3),
    table=st.sampled_from(["basic", "empty", "extended"]),
    transfer_syntax=st.sampled_from([JPEG_BASELINE, RLE_LOSSLESS]),
)
def test_encapsulated_pixel_data_round_trips(
    spec: Spec, frames: list[bytes], per_frame: int, table: str, transfer_syntax: str
) -> None:
    ds = build(spec)
    with config.disable_value_validation():
        if table == "extended":
            value, offsets, lengths = encapsulate_extended(frames)
            ds.ExtendedOffsetTable = offsets
            ds.ExtendedOffsetTableLengths = lengths
            per_frame = 1
        else:
            value = encapsulate(frames, per_frame, has_bot=table == "basic")
        ds.PixelData = value
        ds["PixelData"].VR = "OB"
        ds.NumberOfFrames = len(frames)
    data = with_meta(ds, transfer_syntax)
    info = dicomrelay.scan(data)
    assert info.encapsulated
    assert info.fragments == per_frame * len(frames)
    assert info.number_of_frames == len(frames)
    assert info.transfer_syntax_uid == transfer_syntax
    check_pixel_value(data, info, value, EXPLICIT)
    end = info.pixel_data_offset + len(value)  # type: ignore[operator]
    assert data[end : end + 8] == b"\xfe\xff\xdd\xe0\0\0\0\0"  # the delimiter is not included
    check_against_pydicom(data, info)


# --- hand-encoded datasets: bytes pydicom would not write ----------------------


def _padded(value: bytes, pad: bytes) -> bytes:
    return value + pad * (len(value) % 2)


def hand_encoded(
    enc: Encoding, patient_id: bytes, uid: bytes, nested: bytes, *, pad: bool
) -> tuple[bytes, list[tuple[int, int, int]]]:
    """Top-level values with or without their padding, and a defined-length
    sequence of defined-length items holding decoys, between the values the
    scanner wants. Returns the bytes and each top-level (offset, tag, length)."""
    decoys = b"".join(
        item(
            element(0x00080018, b"UI", b"9.9\0", enc)
            + element(0x00100020, b"LO", _padded(decoy, b" "), enc),
            enc,
        )
        for decoy in (b"DECOY", nested)
    )
    out, placed = bytearray(), []
    for tag, vr, value, padding in [
        (0x00080016, b"UI", uid, b"\0"),
        (0x00080018, b"UI", uid + b".1", b"\0"),
        (0x00081115, b"SQ", decoys, b""),
        (0x00100020, b"LO", patient_id, b" "),
        (0x00280010, b"US", enc.u16(512), b""),
        (0x7FE00010, b"OB", b"\1\2\3", b"\0"),
    ]:
        value = _padded(value, padding) if pad else value
        placed.append((len(out), tag, len(value)))
        out += element(tag, vr, value, enc)
    return bytes(out), placed


TEXT = st.text(ALPHABETS[None], min_size=1, max_size=63).filter(lambda s: s[-1] != " ")
ENCODINGS = pytest.mark.parametrize(
    "enc", [IMPLICIT, EXPLICIT, BIG], ids=["implicit", "explicit", "big"]
)


@ENCODINGS
@SETTINGS
@given(patient_id=TEXT, uid=uids(), nested=TEXT)
def test_hand_encoded_even_lengths(enc: Encoding, patient_id: str, uid: str, nested: str) -> None:
    data, _ = hand_encoded(enc, patient_id.encode(), uid.encode(), nested.encode(), pad=True)
    info = dicomrelay.scan(data)
    assert info.patient_id == patient_id
    assert (info.sop_class_uid, info.sop_instance_uid) == (uid, uid + ".1")
    assert info.rows == 512
    assert info.pixel_data_length == 4
    assert data[info.pixel_data_offset or 0 :] == b"\1\2\3\0"
    check_against_pydicom(data, info)


@ENCODINGS
@SETTINGS
@given(patient_id=TEXT, uid=uids(), nested=TEXT)
def test_hand_encoded_odd_lengths_are_refused_at_the_first(
    enc: Encoding, patient_id: str, uid: str, nested: str
) -> None:
    # The pixel data (3 bytes) is always odd, so some element always is.
    data, placed = hand_encoded(enc, patient_id.encode(), uid.encode(), nested.encode(), pad=False)
    offset, tag, length = next(p for p in placed if p[2] % 2)
    with pytest.raises(dicomrelay.DicomParseError, match=f"length {length} is odd") as caught:
        dicomrelay.scan(data)
    assert (caught.value.offset, caught.value.tag) == (offset, tag)
