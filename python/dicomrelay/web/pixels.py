"""Frames of a stored instance, found without reading what is not needed,
and frames rendered for a person (PS3.18 8.3.5.1.3 and 9.5): pure functions
over a range reader (``read(start, stop) -> bytes``), so that where the
bytes live is the store's business only."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset

from dicomrelay.errors import BadRequest
from dicomrelay.ledger.archive import StoredAttributes

Read = Callable[[int, int], bytes]
ITEM = b"\xfe\xff\x00\xe0"
SEQUENCE_END = b"\xfe\xff\xdd\xe0"
MAX_FRAGMENTS = 1 << 20

# Encapsulated transfer syntaxes and the media type a frame of each is (PS3.18 Table 8.7.3-2).
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
# What is decoded of them for rendering, and how.
DECODERS: dict[str, Callable[[bytes], NDArray[Any]]] = {
    "image/jpeg": imagecodecs.jpeg8_decode,
    "image/jp2": imagecodecs.jpeg2k_decode,
}
# A rendered frame: 8-bit, rows x columns (grey) or rows x columns x 3 (RGB).
Picture = NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Frame:
    """Where a frame's bytes lie: (start, stop) pieces of the file, in order."""

    pieces: tuple[tuple[int, int], ...]

    @property
    def length(self) -> int:
        return sum(stop - start for start, stop in self.pieces)


def frame_count(a: StoredAttributes) -> int:
    return a.frames or 1


def native_frames(a: StoredAttributes) -> list[Frame]:
    """The frames of uncompressed pixel data: equal slices of the value."""
    if a.pixel_offset is None or a.pixel_length is None or not a.rows or not a.columns:
        raise BadRequest("this instance has no pixel data to take frames from", 404)
    bits = a.bits_allocated or 16
    if bits % 8:
        raise BadRequest(f"frames of {bits}-bit pixel data are not served", 406)
    n = frame_count(a)
    plane = a.rows * a.columns * bits // 8
    samples = a.pixel_length // (plane * n) if plane * n else 0
    size = plane * max(samples, 1)
    if size * n > a.pixel_length:
        raise BadRequest("the pixel data is shorter than its frames", 404)
    return [
        Frame(((a.pixel_offset + k * size, a.pixel_offset + (k + 1) * size),)) for k in range(n)
    ]


def encapsulated_frames(a: StoredAttributes, read: Read) -> list[Frame]:
    """The frames of encapsulated pixel data (PS3.5 A.4): its fragments found
    by walking the items' headers, grouped into frames by the Basic Offset
    Table, or one fragment a frame, or all of them for a single frame."""
    if a.pixel_offset is None:
        raise BadRequest("this instance has no pixel data to take frames from", 404)
    pos = a.pixel_offset
    head = read(pos, pos + 8)
    if len(head) < 8 or head[:4] != ITEM:
        raise BadRequest("the encapsulated pixel data does not begin with an offset table", 404)
    (bot_length,) = struct.unpack("<I", head[4:])
    table = read(pos + 8, pos + 8 + bot_length)
    offsets = list(struct.unpack(f"<{bot_length // 4}I", table[: bot_length // 4 * 4]))
    first = pos + 8 + bot_length
    fragments: list[tuple[int, int, int]] = []  # (offset from first, start, stop)
    at = first
    while len(fragments) < MAX_FRAGMENTS:
        header = read(at, at + 8)
        if len(header) < 8 or header[:4] == SEQUENCE_END:
            break
        if header[:4] != ITEM:
            raise BadRequest("a pixel data fragment is malformed", 404)
        (length,) = struct.unpack("<I", header[4:])
        fragments.append((at - first, at + 8, at + 8 + length))
        at += 8 + length
    n = frame_count(a)
    if offsets and len(offsets) == n:
        bounds = [*offsets, 1 << 62]
        return [
            Frame(tuple((s, e) for o, s, e in fragments if bounds[k] <= o < bounds[k + 1]))
            for k in range(n)
        ]
    if n == 1:
        return [Frame(tuple((s, e) for _, s, e in fragments))]
    if len(fragments) == n:
        return [Frame(((s, e),)) for _, s, e in fragments]
    raise BadRequest("the frames of this instance cannot be told apart (no offset table)", 406)


def frames_of(a: StoredAttributes, read: Read) -> list[Frame]:
    return encapsulated_frames(a, read) if a.encapsulated else native_frames(a)


def pick(frames: list[Frame], numbers: list[int]) -> list[Frame]:
    """Frames by number (from 1); 404 for one the instance does not have."""
    for k in numbers:
        if not 1 <= k <= len(frames):
            raise BadRequest(f"frame {k} is not among the instance's {len(frames)}", 404)
    return [frames[k - 1] for k in numbers]


def parse_frame_list(text: str) -> list[int]:
    try:
        numbers = [int(v) for v in text.split(",")]
    except ValueError:
        raise BadRequest(
            f"a frame list is numbers separated by commas, not {text[:40]!r}"
        ) from None
    if not numbers or any(k < 1 for k in numbers):
        raise BadRequest("frame numbers start at 1")
    return numbers


def _first(value: object) -> float:
    """The first of a multi-valued DS (pydicom's MultiValue), or the value."""
    if isinstance(value, str | bytes | int | float):
        return float(value)
    return float(next(iter(value)))  # type: ignore[call-overload]


def _window(values: NDArray[np.float64], header: Dataset) -> NDArray[np.uint8]:
    """Modality LUT (rescale), then the first VOI window if any, else the
    frame's own range, onto 0..255."""
    slope = float(header.get("RescaleSlope", 1) or 1)
    intercept = float(header.get("RescaleIntercept", 0) or 0)
    values = values * slope + intercept
    center, width = header.get("WindowCenter"), header.get("WindowWidth")
    if center is not None and width is not None:
        c, w = _first(center), max(_first(width), 1.0)
        low, high = c - w / 2, c + w / 2
    else:
        low, high = float(values.min()), float(values.max())
    scaled = (values - low) / max(high - low, 1e-9) * 255.0
    out: NDArray[np.uint8] = np.clip(scaled, 0, 255).astype(np.uint8)
    if header.get("PhotometricInterpretation") == "MONOCHROME1":
        out = 255 - out
    return out


def native_image(data: bytes, a: StoredAttributes, header: Dataset) -> Picture:
    """An uncompressed frame as an 8-bit picture."""
    bits = a.bits_allocated or 16
    signed = int(header.get("PixelRepresentation", 0) or 0) == 1
    dtype = {
        8: "i1" if signed else "u1",
        16: "<i2" if signed else "<u2",
        32: "<i4" if signed else "<u4",
    }
    if bits not in dtype or not a.rows or not a.columns:
        raise BadRequest(f"{bits}-bit pixel data is not rendered", 406)
    pixels = np.frombuffer(data, dtype=dtype[bits])
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    if samples == 3:
        rgb = pixels.reshape(a.rows, a.columns, 3)
        if header.get("PlanarConfiguration", 0) == 1:
            rgb = pixels.reshape(3, a.rows, a.columns).transpose(1, 2, 0)
        return np.ascontiguousarray(rgb.astype(np.uint8))
    grey = pixels[: a.rows * a.columns].reshape(a.rows, a.columns).astype(np.float64)
    return _window(grey, header)


def encapsulated_image(data: bytes, media_type: str) -> Picture:
    """A JPEG or JPEG 2000 frame decoded, as an 8-bit picture (more than 8
    bits scaled from its darkest to its brightest; an alpha channel dropped)."""
    decode = DECODERS.get(media_type)
    if decode is None:
        raise BadRequest(f"frames of {media_type} are not rendered", 406)
    try:
        decoded = np.asarray(decode(data))
    except (RuntimeError, ValueError) as e:
        raise BadRequest(f"the frame cannot be decoded: {e}", 406) from None
    if decoded.ndim == 3 and decoded.shape[2] == 1:
        decoded = decoded[:, :, 0]
    elif decoded.ndim == 3:
        decoded = decoded[:, :, :3]
    if decoded.ndim not in (2, 3) or (decoded.ndim == 3 and decoded.shape[2] != 3):
        raise BadRequest(f"a frame of shape {decoded.shape} is not rendered", 406)
    if decoded.dtype == np.uint8:
        return np.ascontiguousarray(decoded)
    values = decoded.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / max(high - low, 1e-9) * 255.0
    return np.clip(scaled, 0, 255).astype(np.uint8)


def shrunk(picture: Picture, side: int) -> Picture:
    """``picture`` made to fit ``side`` x ``side``, its shape kept: each new
    pixel the mean of the ones it covers (a picture that fits is as it was)."""
    rows, columns = picture.shape[:2]
    scale = side / max(rows, columns)
    if scale >= 1:
        return picture
    new_rows, new_columns = max(1, round(rows * scale)), max(1, round(columns * scale))
    row_edges = np.linspace(0, rows, new_rows + 1).astype(np.intp)[:-1]
    column_edges = np.linspace(0, columns, new_columns + 1).astype(np.intp)[:-1]
    values = picture.astype(np.float64)
    summed = np.add.reduceat(np.add.reduceat(values, row_edges, axis=0), column_edges, axis=1)
    counts = np.outer(np.diff([*row_edges, rows]), np.diff([*column_edges, columns]))
    if picture.ndim == 3:
        counts = counts[:, :, None]
    out: Picture = np.clip(np.rint(summed / counts), 0, 255).astype(np.uint8)
    return out


def encode(picture: Picture, media_type: str) -> bytes:
    if media_type == "image/png":
        return bytes(imagecodecs.png_encode(picture))
    return bytes(imagecodecs.jpeg8_encode(picture, level=90))
