"""A study laid out as on a patient's CD (PS3.10 media storage, PS3.11's
general-purpose profiles): each instance a file under ``DICOM/`` with
8-character component IDs, and a ``DICOMDIR`` (PS3.3 F, Media Storage
Directory Storage) whose PATIENT, STUDY, SERIES and IMAGE (or SR DOCUMENT,
PRESENTATION ...) records point at them, chained by byte offsets.

Pure: the records are built from each instance's header (read beforehand,
small), and the DICOMDIR is bytes; the instances themselves are not touched
here (the ZIP streams them from the store). Each record is encoded by
pydicom (explicit VR little endian, defined lengths); the sequence, its
items and their offsets are assembled here, because the offsets depend on
where each item lands in the file."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicomrelay.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
ROOT = "DICOM"
ITEM = b"\xfe\xff\x00\xe0"
SEQUENCE_TAG = b"\x04\x00\x20\x12SQ\x00\x00"  # (0004,1220) Directory Record Sequence

# (0004,xxxx) elements of a record, each UL/US/CS of fixed size but the type and file ID.
NEXT, IN_USE, LOWER, RECORD_TYPE = 0x00041400, 0x00041410, 0x00041420, 0x00041430
FILE_ID, SOP_CLASS, SOP_INSTANCE, SYNTAX = 0x00041500, 0x00041510, 0x00041511, 0x00041512

# The keys each level's record copies from the instances' headers (PS3.3
# F.5); a missing type 1 key is invented, as DCMTK's dcmmkdir +I does.
PATIENT_KEYS = ("SpecificCharacterSet", "PatientName", "PatientID")
STUDY_KEYS = (
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "StudyInstanceUID",
    "StudyID",
)
SERIES_KEYS = ("SpecificCharacterSet", "Modality", "SeriesInstanceUID", "SeriesNumber")
LEAF_KEYS = (
    "SpecificCharacterSet",
    "ContentDate",
    "ContentTime",
    "InstanceNumber",
    "ImageType",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "CompletionFlag",
    "VerificationFlag",
    "ConceptNameCodeSequence",
    "PresentationCreationDate",
    "PresentationCreationTime",
)


HEADER_KEYS = tuple(dict.fromkeys(PATIENT_KEYS + STUDY_KEYS + SERIES_KEYS + LEAF_KEYS))


def kept(header: Dataset) -> Dataset:
    """Of an instance's header, only what its records need, as read (not
    decoded): a thousand whole headers would weigh on the server's memory."""
    out = Dataset()
    for keyword in HEADER_KEYS:
        tag = tag_for_keyword(keyword)
        if tag is not None and tag in header:
            element = header.get_item(tag)
            if element is not None and not isinstance(element, Dataset):
                out[tag] = element
    return out


def record_type(sop_class_uid: str) -> str:
    """The leaf record type of an instance's SOP class (PS3.3 Table F.4-1)."""
    storage = "1.2.840.10008.5.1.4.1.1."
    if not sop_class_uid.startswith(storage):
        return "IMAGE"
    rest = sop_class_uid[len(storage) :]
    exact = {
        "88.59": "KEY OBJECT DOC",
        "481.2": "RT DOSE",
        "481.3": "RT STRUCTURE SET",
        "481.4": "RT TREAT RECORD",
        "481.5": "RT PLAN",
        "66": "RAW DATA",
        "66.1": "REGISTRATION",
        "66.3": "REGISTRATION",
        "66.2": "SPECTROSCOPY",
        "66.5": "SURFACE",
    }
    if rest in exact:
        return exact[rest]
    prefixes = {
        "88.": "SR DOCUMENT",
        "11.": "PRESENTATION",
        "104.": "ENCAP DOC",
        "9.": "WAVEFORM",
    }
    for prefix, kind in prefixes.items():
        if rest.startswith(prefix):
            return kind
    return "IMAGE"


@dataclass(frozen=True, kw_only=True, slots=True)
class MediaInstance:
    """One instance as the DICOMDIR needs it: its UIDs and its header."""

    sop_class_uid: str
    sop_uid: str
    transfer_syntax: str
    study_uid: str
    series_uid: str
    header: Dataset = field(compare=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class Placed:
    """An instance and its file on the medium (``file_id`` components)."""

    instance: MediaInstance
    file_id: tuple[str, ...]
    key: str = ""  # what the caller finds it by (the store's digest)

    @property
    def path(self) -> str:
        return "/".join(self.file_id)


def _number(header: Dataset, keyword: str) -> int | None:
    try:
        value = header.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def lay_out(instances: Sequence[tuple[str, MediaInstance]]) -> list[Placed]:
    """Files ``DICOM/ST000001/SE000001/IM000001`` ...: series by Series
    Number, instances by Instance Number (then UID), one study folder per
    study; ``(key, instance)`` in, placed in the order the DICOMDIR lists them."""
    studies: dict[str, dict[str, list[tuple[str, MediaInstance]]]] = {}
    for key, m in instances:
        studies.setdefault(m.study_uid, {}).setdefault(m.series_uid, []).append((key, m))
    placed: list[Placed] = []
    for s, (_, series) in enumerate(sorted(studies.items()), start=1):

        def series_order(item: tuple[str, list[tuple[str, MediaInstance]]]) -> tuple[int, str]:
            number = _number(item[1][0][1].header, "SeriesNumber")
            return (number if number is not None else 1 << 31, item[0])

        for e, (_, members) in enumerate(sorted(series.items(), key=series_order), start=1):

            def instance_order(item: tuple[str, MediaInstance]) -> tuple[int, str]:
                number = _number(item[1].header, "InstanceNumber")
                return (number if number is not None else 1 << 31, item[1].sop_uid)

            for i, (key, m) in enumerate(sorted(members, key=instance_order), start=1):
                file_id = (ROOT, f"ST{s:06d}", f"SE{e:06d}", f"IM{i:06d}")
                placed.append(Placed(instance=m, file_id=file_id, key=key))
    return placed


def _copy(record: Dataset, header: Dataset, keywords: Sequence[str]) -> None:
    for keyword in keywords:
        try:
            if keyword in header:
                record[keyword] = header[keyword]
        except (ValueError, TypeError, OverflowError):
            continue  # a value its VR cannot hold (IS "abc"): left out, or invented


def _invent(record: Dataset, keyword: str, value: object) -> None:
    if keyword not in record or record[keyword].value in (None, "", b""):
        setattr(record, keyword, value)


def _invent_number(record: Dataset, keyword: str, value: int) -> None:
    if _number(record, keyword) is None:
        setattr(record, keyword, value)


@dataclass(slots=True)
class _Record:
    kind: str
    body: Dataset  # the keys, without the (0004,14xx) links
    children: list[_Record] = field(default_factory=list)
    placed: Placed | None = None


def _tree(placed: Sequence[Placed]) -> list[_Record]:
    patients: dict[str, _Record] = {}
    studies: dict[str, _Record] = {}
    series: dict[tuple[str, str], _Record] = {}
    for n, p in enumerate(placed, start=1):
        m, h = p.instance, p.instance.header
        patient_id = str(h.get("PatientID", "") or "") or "UNKNOWN"
        if patient_id not in patients:
            body = Dataset()
            _copy(body, h, PATIENT_KEYS)
            body.PatientName = h.get("PatientName", "")
            body.PatientID = patient_id
            patients[patient_id] = _Record("PATIENT", body)
        if m.study_uid not in studies:
            body = Dataset()
            _copy(body, h, STUDY_KEYS)
            body.StudyInstanceUID = m.study_uid
            _invent(body, "StudyDate", "19000101")
            _invent(body, "StudyTime", "000000")
            _invent(body, "StudyID", "1")
            _invent(body, "AccessionNumber", "")
            _invent(body, "StudyDescription", "")
            studies[m.study_uid] = _Record("STUDY", body)
            patients[patient_id].children.append(studies[m.study_uid])
        key = (m.study_uid, m.series_uid)
        if key not in series:
            body = Dataset()
            _copy(body, h, SERIES_KEYS)
            body.SeriesInstanceUID = m.series_uid
            _invent(body, "Modality", "OT")
            _invent_number(body, "SeriesNumber", len(series) + 1)
            series[key] = _Record("SERIES", body)
            studies[m.study_uid].children.append(series[key])
        body = Dataset()
        _copy(body, h, LEAF_KEYS)
        _invent_number(body, "InstanceNumber", n)
        leaf = _Record(record_type(m.sop_class_uid), body, placed=p)
        series[key].children.append(leaf)
    return list(patients.values())


def _encode(ds: Dataset) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


# Where an item's two offsets lie (explicit VR little endian): after the item's
# tag and length, (0004,1400) UL is the first element, then (0004,1410) US,
# then (0004,1420) UL; each value after its 8-byte element header.
NEXT_AT, LOWER_AT = 8 + 8, 8 + 12 + 10 + 8


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of a VR with a 2-byte length."""
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _text(value: str, pad: bytes = b" ") -> bytes:
    data = value.encode("ascii", "replace")  # UIDs and codes: ASCII by the standard
    return data + pad if len(data) % 2 else data


def _item(record: _Record) -> bytearray:
    """A record's item, its offsets zero (``_link`` writes them in place).
    The directory's own elements are written here (a thousand records
    through pydicom's writer would cost a second); the keys copied from the
    header, in their character set, by pydicom."""
    parts = [
        _element(NEXT, b"UL", b"\0\0\0\0"),
        _element(IN_USE, b"US", struct.pack("<H", 0xFFFF)),
        _element(LOWER, b"UL", b"\0\0\0\0"),
        _element(RECORD_TYPE, b"CS", _text(record.kind)),
    ]
    if record.placed is not None:
        m = record.placed.instance
        parts += [
            _element(FILE_ID, b"CS", _text("\\".join(record.placed.file_id))),
            _element(SOP_CLASS, b"UI", _text(m.sop_class_uid, b"\0")),
            _element(SOP_INSTANCE, b"UI", _text(m.sop_uid, b"\0")),
            _element(SYNTAX, b"UI", _text(m.transfer_syntax, b"\0")),
        ]
    parts.append(_encode(record.body))
    body = b"".join(parts)
    return bytearray(ITEM + struct.pack("<I", len(body)) + body)


def _link(item: bytearray, next_offset: int, lower_offset: int) -> bytearray:
    struct.pack_into("<I", item, NEXT_AT, next_offset)
    struct.pack_into("<I", item, LOWER_AT, lower_offset)
    return item


def _flatten(roots: list[_Record]) -> list[_Record]:
    """Depth first: each record, then its children (as pydicom and DCMTK write them)."""
    out: list[_Record] = []
    stack = list(reversed(roots))
    while stack:
        record = stack.pop()
        out.append(record)
        stack.extend(reversed(record.children))
    return out


def dicomdir(placed: Sequence[Placed], *, file_set_id: str = "") -> bytes:
    """The DICOMDIR of ``placed`` (from ``lay_out``), offsets counted from the
    file's first byte (PS3.3 F.3.2.2)."""
    roots = _tree(placed)
    order = _flatten(roots)
    # The same study makes the same DICOMDIR, byte for byte.
    studies = "\\".join(sorted({p.instance.study_uid for p in placed}))
    uid = f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, studies).int}"
    # Item lengths do not depend on the offsets (UL is 4 bytes): encode them
    # with zeros, place them, then write the offsets in.
    items = [_item(r) for r in order]
    sizes = [len(i) for i in items]
    head = _head(0, 0, file_set_id, uid)
    start = len(head) + len(SEQUENCE_TAG) + 4
    offsets: dict[int, int] = {}
    at = start
    for record, size in zip(order, sizes, strict=True):
        offsets[id(record)] = at
        at += size

    def offset(r: _Record | None) -> int:
        return 0 if r is None else offsets[id(r)]

    siblings: dict[int, _Record | None] = {}
    for group in [roots, *(r.children for r in order if r.children)]:
        for a, b in zip(group, [*group[1:], None], strict=True):
            siblings[id(a)] = b
    body = b"".join(
        _link(item, offset(siblings[id(r)]), offset(r.children[0] if r.children else None))
        for r, item in zip(order, items, strict=True)
    )
    first, last = (offset(roots[0]), offset(roots[-1])) if roots else (0, 0)
    head = _head(first, last, file_set_id, uid)
    return head + SEQUENCE_TAG + struct.pack("<I", len(body)) + body


def _head(first: int, last: int, file_set_id: str, uid: str) -> bytes:
    """Preamble, ``DICM``, file meta, and the elements before the sequence."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(MEDIA_STORAGE_DIRECTORY)
    meta.MediaStorageSOPInstanceUID = UID(uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    ds = Dataset()
    ds.FileSetID = file_set_id
    ds.add_new(0x00041200, "UL", first)
    ds.add_new(0x00041202, "UL", last)
    ds.add_new(0x00041212, "US", 0)
    return out.getvalue() + _encode(ds)
