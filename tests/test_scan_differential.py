"""The scanner against pydicom on every file pydicom ships for its own tests.

pydicom is the reference: where it reads a file, each attribute the scanner
reports must equal what pydicom reads from the same bytes. The few malformed
files the scanner rejects on purpose must raise DicomParseError.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import pytest

import dicomrelay
from dicom_builders import (
    MALFORMED,
    charset_test_files,
    expected_from_pydicom,
    file_id,
    pydicom_test_files,
)

FILES = pydicom_test_files()
READABLE = [p for p in FILES if p.name not in MALFORMED]
REJECTED = [p for p in FILES if p.name in MALFORMED]


def _scanned(info: dicomrelay.InstanceInfo, keys: object) -> dict[str, object]:
    d = info.as_dict()
    return {k: d[k] for k in keys}  # type: ignore[attr-defined]


def test_bundled_files_are_found(pydicom_files: list[Path]) -> None:
    # Guards the parametrisation below against silently testing nothing.
    assert pydicom_files == FILES
    assert len(READABLE) > 60
    assert {p.name for p in REJECTED} == MALFORMED
    assert any(p.parent.name != "test_files" for p in FILES), "subfolder files missing"


@pytest.mark.parametrize("path", READABLE, ids=file_id)
def test_matches_pydicom(path: Path) -> None:
    data = path.read_bytes()
    expected = expected_from_pydicom(data)
    info = dicomrelay.scan(data)
    assert _scanned(info, expected) == expected
    assert info.size == len(data)


@pytest.mark.parametrize("path", charset_test_files(), ids=file_id)
def test_charset_files_match_pydicom(path: Path) -> None:
    # pydicom's character-set files: Latin, Cyrillic, Greek, Arabic, Hebrew,
    # Japanese and Korean ISO 2022 code extensions, UTF-8, GB18030.
    data = path.read_bytes()
    expected = expected_from_pydicom(data)
    assert _scanned(dicomrelay.scan(data), expected) == expected


@pytest.mark.parametrize("path", REJECTED, ids=file_id)
def test_malformed_file_is_rejected(path: Path) -> None:
    data = path.read_bytes()
    with pytest.raises(dicomrelay.DicomParseError) as caught:
        dicomrelay.scan(data)
    err = caught.value
    assert 0 <= err.offset <= len(data)
    assert f"at byte {err.offset}" in str(err)
    if err.tag is not None:
        assert f"({err.tag >> 16:04X},{err.tag & 0xFFFF:04X})" in str(err)


@pytest.mark.parametrize(
    ("name", "kind", "tag"),
    [
        ("SC_rgb_jpeg.dcm", "dataset encoding does not match its transfer syntax", 0x00080008),
        ("DICOMDIR-nooffset", "declared length runs past the end of its parent", 0x00041220),
        ("rtplan_truncated.dcm", "declared length runs past the end of its parent", 0x300A00B0),
    ],
)
def test_why_each_malformed_file_is_rejected(name: str, kind: str, tag: int) -> None:
    [path] = [p for p in REJECTED if p.name == name]
    with pytest.raises(dicomrelay.DicomParseError, match=kind) as caught:
        dicomrelay.scan(path.read_bytes())
    assert caught.value.tag == tag


def _outcome(fn: object, *args: object, **kwargs: object) -> object:
    """The result of a call, or the (type, offset, tag) of the DicomParseError it raised."""
    try:
        return fn(*args, **kwargs)  # type: ignore[operator]
    except dicomrelay.DicomParseError as e:
        return (type(e), e.offset, e.tag, str(e))


@pytest.mark.parametrize("path", FILES, ids=file_id)
def test_every_input_kind_agrees(path: Path) -> None:
    # bytes, bytearray, memoryview, mmap and a path must be the same scan.
    data = path.read_bytes()
    opts: dict[str, object] = {"digest": "sha256", "chunk_size": 4096}
    reference = _outcome(dicomrelay.scan, data, **opts)
    assert _outcome(dicomrelay.scan, bytearray(data), **opts) == reference
    assert _outcome(dicomrelay.scan, memoryview(data), **opts) == reference
    assert _outcome(dicomrelay.scan_file, path, **opts) == reference
    assert _outcome(dicomrelay.scan_file, str(path), **opts) == reference
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert _outcome(dicomrelay.scan, m, **opts) == reference


@pytest.mark.parametrize("threads", [None, 1, 2, 7])
def test_scan_many_agrees_with_scan_in_order(threads: int | None) -> None:
    # Mixed sources (bytes, str paths, Path objects, bytearrays), malformed
    # files among them: each result in its input's place.
    sources: list[object] = []
    for i, path in enumerate(FILES):
        sources.append([path, str(path), path.read_bytes(), bytearray(path.read_bytes())][i % 4])
    results = dicomrelay.scan_many(sources, digest="blake3", threads=threads)  # type: ignore[arg-type]
    assert len(results) == len(FILES)
    for path, result in zip(FILES, results, strict=True):
        expected = _outcome(dicomrelay.scan_file, path, digest="blake3")
        got: object = result
        if isinstance(result, dicomrelay.DicomParseError):
            assert path.name in MALFORMED
            got = (type(result), result.offset, result.tag, str(result))
        assert got == expected, path.name
