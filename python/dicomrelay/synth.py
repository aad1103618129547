"""Synthetic studies for load tests and demos: valid Part 10 files (explicit VR
little endian), written without pydicom so the CLI needs nothing extra."""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

# A UID root for generated instances: 2.25 is the UUID-derived arc (PS3.5 B.2).
UID_ROOT = "2.25."

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, For Presentation
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


@dataclass(frozen=True, kw_only=True)
class Profile:
    modality: str
    sop_class_uid: str
    rows: int
    columns: int
    bits: int = 16
    samples_per_pixel: int = 1  # 3: colour, interleaved (planar configuration 0)
    photometric: str = "MONOCHROME2"
    # Further elements the SOP class asks for: (tag, VR, text value).
    extra: tuple[tuple[int, str, str], ...] = ()

    @property
    def pixel_bytes(self) -> int:
        return self.rows * self.columns * self.samples_per_pixel * self.bits // 8


PROFILES = {
    "ct": Profile(modality="CT", sop_class_uid=CT_IMAGE_STORAGE, rows=512, columns=512),
    "mr": Profile(modality="MR", sop_class_uid=MR_IMAGE_STORAGE, rows=256, columns=256),
    "cr": Profile(modality="CR", sop_class_uid=CR_IMAGE_STORAGE, rows=2048, columns=2048),
    # A 43 x 35 cm flat-panel detector at 150 um.
    "dx": Profile(
        modality="DX",
        sop_class_uid=DX_IMAGE_STORAGE,
        rows=2880,
        columns=2304,
        extra=((0x00080068, "CS", "FOR PRESENTATION"),),
    ),
    # Ultrasound: 640x480 RGB, 8 bits a sample.
    "us": Profile(
        modality="US",
        sop_class_uid=US_IMAGE_STORAGE,
        rows=480,
        columns=640,
        bits=8,
        samples_per_pixel=3,
        photometric="RGB",
    ),
    # A small object (16 KiB of pixel data), like a key image, a scanned form or
    # a dose report's screenshot: a secondary capture.
    "small": Profile(
        modality="OT",
        sop_class_uid=SECONDARY_CAPTURE_IMAGE_STORAGE,
        rows=128,
        columns=64,
        extra=((0x00080064, "CS", "WSD"),),  # Conversion Type: workstation
    ),
}


def new_uid() -> str:
    return UID_ROOT + str(uuid.uuid4().int)


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    group, elem = tag >> 16, tag & 0xFFFF
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _text(tag: int, vr: bytes, text: str) -> bytes:
    return _element(tag, vr, text.encode("ascii"))


def _us(tag: int, value: int) -> bytes:
    return _element(tag, b"US", struct.pack("<H", value))


def instance(
    profile: Profile,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    number: int,
    patient_id: str,
    pixels: bytes,
) -> bytes:
    """One Part 10 file of ``profile`` with ``pixels`` as its pixel data."""
    meta_body = b"".join(
        [
            _element(0x00020001, b"OB", b"\x00\x01"),
            _text(0x00020002, b"UI", profile.sop_class_uid),
            _text(0x00020003, b"UI", sop_uid),
            _text(0x00020010, b"UI", EXPLICIT_VR_LE),
            _text(0x00020012, b"UI", "2.25.1"),
            _text(0x00020013, b"SH", "DICOMRELAY"),
        ]
    )
    meta = _element(0x00020000, b"UL", struct.pack("<I", len(meta_body))) + meta_body
    elements = {
        0x00080016: _text(0x00080016, b"UI", profile.sop_class_uid),
        0x00080018: _text(0x00080018, b"UI", sop_uid),
        0x00080020: _text(0x00080020, b"DA", "20261127"),
        0x00080050: _text(0x00080050, b"SH", "ACC" + patient_id[-6:]),
        0x00080060: _text(0x00080060, b"CS", profile.modality),
        0x00100010: _text(0x00100010, b"PN", "Synthetic^Patient"),
        0x00100020: _text(0x00100020, b"LO", patient_id),
        0x00100021: _text(0x00100021, b"LO", "DICOMRELAY"),
        0x0020000D: _text(0x0020000D, b"UI", study_uid),
        0x0020000E: _text(0x0020000E, b"UI", series_uid),
        0x00200013: _text(0x00200013, b"IS", str(number)),
        0x00280002: _us(0x00280002, profile.samples_per_pixel),
        0x00280004: _text(0x00280004, b"CS", profile.photometric),
        0x00280010: _us(0x00280010, profile.rows),
        0x00280011: _us(0x00280011, profile.columns),
        0x00280100: _us(0x00280100, profile.bits),
        0x00280101: _us(0x00280101, profile.bits),
        0x00280102: _us(0x00280102, profile.bits - 1),
        0x00280103: _us(0x00280103, 0),
        # 8-bit samples are OB; wider ones OW (PS3.5 8.2).
        0x7FE00010: _element(0x7FE00010, b"OB" if profile.bits <= 8 else b"OW", pixels),
    }
    if profile.samples_per_pixel > 1:
        elements[0x00280006] = _us(0x00280006, 0)  # Planar Configuration: R1G1B1 R2G2B2 ...
    for tag, vr, text in profile.extra:
        elements[tag] = _text(tag, vr.encode("ascii"), text)
    dataset = b"".join(elements[tag] for tag in sorted(elements))
    return b"\0" * 128 + b"DICM" + meta + dataset


def write_study(
    directory: Path, profile: Profile, count: int, *, seed: int = 0, fsync: bool = False
) -> Path:
    """Write a study of ``count`` instances into ``directory``; returns it.

    Pixel data differ per instance (so no two blobs are the same) but cost
    almost nothing to make: a shared random block with the instance number
    stamped into it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = new_uid(), new_uid()
    patient_id = f"SYN{seed:08d}"
    block = bytearray(os.urandom(profile.pixel_bytes))
    for n in range(count):
        block[0:8] = struct.pack("<Q", n)
        data = instance(
            profile,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=new_uid(),
            number=n + 1,
            patient_id=patient_id,
            pixels=bytes(block),
        )
        path = directory / f"{n:06d}.dcm"
        with open(path, "wb") as f:
            f.write(data)
            if fsync:
                os.fsync(f.fileno())
    return directory


def write_large_instance(path: Path, pixel_bytes: int, *, block: int = 8 << 20) -> Path:
    """One whole-slide-sized instance (a single frame of ``pixel_bytes`` native
    pixel data), streamed to ``path`` without holding it in memory."""
    if pixel_bytes % 2 or not 0 < pixel_bytes < 0xFFFF_FFFF:
        raise ValueError("native pixel data is an even length below 4 GiB")
    profile = Profile(
        modality="SM", sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.6", rows=1, columns=1, bits=8
    )
    header = instance(
        profile,
        study_uid=new_uid(),
        series_uid=new_uid(),
        sop_uid=new_uid(),
        number=1,
        patient_id="SYNLARGE",
        pixels=b"\0\0",
    )
    # Replace the two-byte pixel data element with one of the full length.
    header = header[: -(12 + 2)] + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)
    pattern = os.urandom(block)
    with open(path, "wb") as f:
        f.write(header)
        left = pixel_bytes
        n = 0
        while left:
            piece = pattern[: min(block, left)]
            f.write((struct.pack("<Q", n) + piece[8:])[: len(piece)])
            left -= len(piece)
            n += 1
    return path
