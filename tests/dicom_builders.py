"""Builders and reference readers shared by the scanner tests.

Nothing here imports dicomrelay: these are the independent half of each
comparison (pydicom, or byte layouts written out by hand). The mutation worker
runs as a plain script, so this module must not need pytest either.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
import pydicom.data
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

PIXEL_DATA_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
UNDEFINED = 0xFFFFFFFF
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())  # 4-byte lengths
KNOWN_VRS = LONG_VRS | frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split()
)

TEST_FILES_DIR = Path(os.path.dirname(cast(str, pydicom.data.get_testdata_file("CT_small.dcm"))))
CHARSET_FILES_DIR = TEST_FILES_DIR.parent / "charset_files"

# Bundled pydicom files the scanner rejects on purpose: values run past the end
# (pydicom reads them silently), a stray first byte (pydicom needs force=True),
# implicit VR data under an explicit VR transfer syntax (pydicom warns and reads
# it as implicit; DCMTK cannot read it), and an item that overruns its
# defined-length sequence (records removed, the item's length left as it was).
MALFORMED = frozenset(
    {
        "MR_truncated.dcm",
        "rtplan_truncated.dcm",
        "no_meta.dcm",
        "SC_rgb_jpeg.dcm",
        "DICOMDIR-nooffset",
    }
)


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(132)[128:] == b"DICM"


def pydicom_test_files() -> list[Path]:
    """Every bundled test file: *.dcm at the top, and DICOM files in subfolders."""
    top = sorted(TEST_FILES_DIR.glob("*.dcm"))
    nested = sorted(
        p
        for p in TEST_FILES_DIR.rglob("*")
        if p.is_file() and p.parent != TEST_FILES_DIR and _is_dicom(p)
    )
    return top + nested


def charset_test_files() -> list[Path]:
    return sorted(CHARSET_FILES_DIR.glob("*.dcm"))


def file_id(path: Path) -> str:
    try:
        return str(path.relative_to(TEST_FILES_DIR))
    except ValueError:
        return path.name


# --- hand-written encodings -------------------------------------------------


@dataclass(frozen=True)
class Encoding:
    explicit: bool = True
    little: bool = True

    @property
    def order(self) -> str:
        return "<" if self.little else ">"

    def u16(self, v: int) -> bytes:
        return struct.pack(self.order + "H", v)

    def u32(self, v: int) -> bytes:
        return struct.pack(self.order + "I", v)

    def tag(self, tag: int) -> bytes:
        return struct.pack(self.order + "HH", tag >> 16, tag & 0xFFFF)


IMPLICIT = Encoding(explicit=False)
EXPLICIT = Encoding()
BIG = Encoding(little=False)


def element(
    tag: int, vr: bytes, value: bytes, enc: Encoding = EXPLICIT, *, length: int | None = None
) -> bytes:
    """One element, exactly as given: no padding, so odd lengths stay odd."""
    n = len(value) if length is None else length
    if not enc.explicit:
        return enc.tag(tag) + enc.u32(n) + value
    if vr in LONG_VRS:
        return enc.tag(tag) + vr + b"\0\0" + enc.u32(n) + value
    return enc.tag(tag) + vr + enc.u16(n) + value


def item(value: bytes, enc: Encoding = EXPLICIT, *, length: int | None = None) -> bytes:
    return enc.tag(0xFFFEE000) + enc.u32(len(value) if length is None else length) + value


def item_delimiter(enc: Encoding = EXPLICIT) -> bytes:
    return enc.tag(0xFFFEE00D) + enc.u32(0)


def sequence_delimiter(enc: Encoding = EXPLICIT) -> bytes:
    return enc.tag(0xFFFEE0DD) + enc.u32(0)


def meta_group(transfer_syntax: str | None, *, preamble: bytes = bytes(128)) -> bytes:
    """Preamble, DICM and a minimal meta group (explicit VR little endian)."""
    body = element(0x00020001, b"OB", b"\0\1")
    if transfer_syntax is not None:
        uid = transfer_syntax.encode()
        body += element(0x00020010, b"UI", uid + b"\0" * (len(uid) % 2))
    head = element(0x00020000, b"UL", struct.pack("<I", len(body)))
    return preamble + b"DICM" + head + body


def nested_sequences(depth: int, enc: Encoding = EXPLICIT, *, closed: bool = True) -> bytes:
    """`depth` sequences of undefined length, each in an item of undefined length."""
    opening = element(0x00081115, b"SQ", b"", enc, length=UNDEFINED) + item(
        b"", enc, length=UNDEFINED
    )
    closing = item_delimiter(enc) + sequence_delimiter(enc)
    return opening * depth + (closing * depth if closed else b"")


# --- pydicom-written files ----------------------------------------------------


def write(ds: Dataset, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(buf, ds, **kwargs)
    return buf.getvalue()


def make_ct_slice(seed: int = 0, *, rows: int = 512, columns: int = 512) -> bytes:
    """A CT slice as the design's benchmark study has them: 16-bit, explicit VR LE."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_LE)
    ds.file_meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(f"1.2.826.0.1.3680043.99.1.{seed}")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.99.1.{seed}"
    ds.StudyDate = "20240131"
    ds.AccessionNumber = "ACC0001"
    ds.Modality = "CT"
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "PID-0001"
    ds.IssuerOfPatientID = "HOSPITAL-A"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.99.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.99.3"
    ds.InstanceNumber = seed + 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16).tobytes()
    ds["PixelData"].VR = "OW"
    return write(ds, enforce_file_format=True)


# --- reading the layout back (an independent walker for seeds and boundaries) --


@dataclass
class Layout:
    """Where a file's elements are, as read by a small Python walker."""

    dataset_offset: int
    encoding: Encoding
    deflated: bool
    # (header offset, offset of the length field, size of the length field)
    headers: list[tuple[int, int, int]] = field(default_factory=list)
    vr_offsets: list[int] = field(default_factory=list)
    meta_ends: list[int] = field(default_factory=list)
    top_level_ends: list[int] = field(default_factory=list)


def layout(data: bytes) -> Layout:
    """Walk a well-formed file; stops quietly at anything it does not follow."""
    pos = 132 if data[128:132] == b"DICM" else 0
    out = Layout(dataset_offset=pos, encoding=EXPLICIT, deflated=False)
    ts: str | None = None
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\2\0":
        vr = data[pos + 4 : pos + 6]
        long = vr in LONG_VRS
        n_at = pos + 8 if long else pos + 6
        n = struct.unpack_from("<I" if long else "<H", data, n_at)[0]
        out.headers.append((pos, n_at, 4 if long else 2))
        out.vr_offsets.append(pos + 4)
        start = n_at + (4 if long else 2)
        if data[pos : pos + 4] == b"\2\0\x10\0":
            ts = data[start : start + n].rstrip(b"\0 ").decode("latin-1") or None
        pos = start + n
        out.meta_ends.append(pos)
    out.dataset_offset = pos
    first_vr = data[pos + 4 : pos + 6]
    if ts is None:
        # As pydicom guesses: a known VR means explicit; a little-endian group of
        # 1024 or more means the tag was big endian.
        known = first_vr in KNOWN_VRS
        group = struct.unpack_from("<H", data, pos)[0] if known else 0
        out.encoding = Encoding(explicit=known, little=group < 1024)
    else:
        out.deflated = ts == DEFLATED_LE
        out.encoding = {IMPLICIT_LE: IMPLICIT, EXPLICIT_BE: BIG}.get(ts, EXPLICIT)
        if len(first_vr) == 2:  # readers correct a meta group that names the wrong VR axis
            explicit = first_vr.isalpha() and first_vr.isupper()
            out.encoding = Encoding(explicit=explicit, little=out.encoding.little)
    if not out.deflated:
        _walk(data, pos, len(data), out.encoding, out, top=True)
    return out


def _walk(data: bytes, pos: int, end: int, enc: Encoding, out: Layout, *, top: bool) -> int:
    o = enc.order
    while pos + 8 <= end:
        tag = (struct.unpack_from(o + "H", data, pos)[0] << 16) | struct.unpack_from(
            o + "H", data, pos + 2
        )[0]
        if tag == 0xFFFEE00D:
            return pos + 8
        vr = data[pos + 4 : pos + 6]
        if enc.explicit and vr.isalpha() and vr.isupper():
            long = vr in LONG_VRS
            n_at = pos + 8 if long else pos + 6
            size = 4 if long else 2
            out.vr_offsets.append(pos + 4)
        else:
            n_at, size = pos + 4, 4
        n = struct.unpack_from(o + ("I" if size == 4 else "H"), data, n_at)[0]
        out.headers.append((pos, n_at, size))
        pos = n_at + size
        if n == UNDEFINED:
            inner = IMPLICIT if vr == b"UN" and enc.explicit else enc
            pos = _walk_items(data, pos, inner if tag != 0x7FE00010 else enc, out)
        else:
            pos += n
        if pos > end:
            return end
        if top:
            out.top_level_ends.append(pos)
    return pos


def _walk_items(data: bytes, pos: int, enc: Encoding, out: Layout) -> int:
    o = enc.order
    while pos + 8 <= len(data):
        tag = (struct.unpack_from(o + "H", data, pos)[0] << 16) | struct.unpack_from(
            o + "H", data, pos + 2
        )[0]
        n = struct.unpack_from(o + "I", data, pos + 4)[0]
        out.headers.append((pos, pos + 4, 4))
        pos += 8
        if tag == 0xFFFEE0DD:
            return pos
        if tag != 0xFFFEE000:
            return len(data)
        pos = _walk(data, pos, len(data), enc, out, top=False) if n == UNDEFINED else pos + n
    return len(data)


# --- what pydicom says a file holds -----------------------------------------

TEXT_KEYWORDS = {
    "sop_class_uid": "SOPClassUID",
    "sop_instance_uid": "SOPInstanceUID",
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "patient_id": "PatientID",
    "issuer_of_patient_id": "IssuerOfPatientID",
    "patient_name": "PatientName",
    "accession_number": "AccessionNumber",
    "modality": "Modality",
    "study_date": "StudyDate",
    "specific_character_set": "SpecificCharacterSet",
}
US_KEYWORDS = {"rows": "Rows", "columns": "Columns", "bits_allocated": "BitsAllocated"}
INFERRED_UID = {(True, True): IMPLICIT_LE, (False, True): EXPLICIT_LE, (False, False): EXPLICIT_BE}


def pydicom_text(value: object) -> str | None:
    """A text value as the scanner reports it: multi-values joined raw with a backslash."""
    if value is None:
        return None
    text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)
    return text or None


def read_with_pydicom(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")


def expected_from_pydicom(data: bytes) -> dict[str, object]:
    """Every scanner attribute (except digests) as pydicom reads the same bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = read_with_pydicom(data)
        exp: dict[str, object] = {k: pydicom_text(ds.get(kw)) for k, kw in TEXT_KEYWORDS.items()}
        for key, kw in US_KEYWORDS.items():
            v = ds.get(kw)
            assert v is None or isinstance(v, int), f"{kw} is {v!r}"
            exp[key] = v
        frames = ds.get("NumberOfFrames")
        exp["number_of_frames"] = int(frames) if isinstance(frames, int) else None

    ts = ds.file_meta.get("TransferSyntaxUID") if ds.file_meta is not None else None
    encoding = cast(tuple[bool, bool], ds.original_encoding)
    exp["transfer_syntax_uid"] = str(ts) if ts else INFERRED_UID[encoding]
    deflated = exp["transfer_syntax_uid"] == DEFLATED_LE
    exp["deflated"] = deflated
    exp["has_meta"] = ds.file_meta is not None and len(ds.file_meta) > 0
    exp["dataset_offset"] = layout(data).dataset_offset

    # The raw element (not ds.get_item, which converts an empty value): it has value_tell.
    raw = next((ds._dict[BaseTag(t)] for t in PIXEL_DATA_TAGS if t in ds._dict), None)
    assert raw is None or isinstance(raw, RawDataElement)
    exp["pixel_data_offset"] = exp["pixel_data_length"] = exp["fragments"] = None
    exp["encapsulated"] = False
    if raw is not None:
        value = raw.value or b""
        exp["pixel_data_offset"] = None if deflated else raw.value_tell
        exp["pixel_data_length"] = len(value)
        if raw.length == UNDEFINED:
            exp["encapsulated"] = True
            buf = io.BytesIO(value)
            parse_basic_offsets(buf)
            exp["fragments"] = parse_fragments(buf)[0]
    return exp
