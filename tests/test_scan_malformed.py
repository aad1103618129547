"""Targeted malformations, each of a kind that has broken DICOM parsers before:
truncation, huge declared lengths, undefined lengths without delimiters,
fragments running past their parent, deep nesting, garbage VRs, executables in
the preamble, deflate bombs. Cases that could crash or exhaust memory run in a
child process.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

import dicomrelay
import mutation_worker
from child_process import scan_in_child
from dicom_builders import (
    BIG,
    DEFLATED_LE,
    EXPLICIT,
    EXPLICIT_LE,
    IMPLICIT,
    RLE_LOSSLESS,
    TEST_FILES_DIR,
    UNDEFINED,
    Encoding,
    element,
    item,
    item_delimiter,
    layout,
    meta_group,
    nested_sequences,
    sequence_delimiter,
)

SEEDS = {s.name: s for s in mutation_worker.load_seeds()}
STRUCTURED = [
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "JPEG2000.dcm",
    "nested_priv_SQ.dcm",
    "ExplVR_BigEndNoMeta.dcm",
    "gen-implicit.dcm",
    "gen-big.dcm",
    "gen-raw-big.dcm",
    "gen-encapsulated.dcm",
]
ENCODINGS = pytest.mark.parametrize(
    "enc", [IMPLICIT, EXPLICIT, BIG], ids=["implicit", "explicit", "big"]
)
UID = 0x00080016


def scan_error(data: bytes) -> dicomrelay.DicomParseError:
    with pytest.raises(dicomrelay.DicomParseError) as caught:
        dicomrelay.scan(data)
    return caught.value


@pytest.mark.parametrize("name", STRUCTURED)
def test_every_prefix_scans_only_at_element_boundaries(name: str) -> None:
    # A prefix that ends between two top-level elements (or meta elements) is a
    # complete, shorter dataset; one that ends anywhere else is truncated.
    data, lay = SEEDS[name].data, SEEDS[name].layout
    first = 132 if data[128:132] == b"DICM" else 1
    boundaries = {lay.dataset_offset, *lay.meta_ends, *lay.top_level_ends} | (
        {132} if first == 132 else set()
    )
    wrong = []
    for n in range(first, len(data) + 1):
        try:
            dicomrelay.scan(data[:n])
            scanned = True
        except dicomrelay.DicomParseError:
            scanned = False
        if scanned != (n in boundaries):
            wrong.append((n, scanned))
    assert wrong == [], f"prefix lengths scanned (True) or rejected (False) wrongly: {wrong[:10]}"


@pytest.mark.parametrize(
    "huge", [0xFFFFFFFE, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, "one past the end"]
)
@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"]
)
def test_huge_declared_length_names_the_element(name: str, huge: int | str) -> None:
    # Every top-level element in turn declares a length past the end of the file:
    # the error names that element and its offset, and nothing is allocated.
    data, lay = SEEDS[name].data, SEEDS[name].layout
    order = "<" if lay.encoding.little else ">"
    starts = [lay.dataset_offset, *lay.top_level_ends[:-1]]
    headers = {h[0]: h for h in lay.headers}
    for start in starts:
        _, at, size = headers[start]
        if size != 4:
            continue
        value = len(data) - (at + 4) + 1 if huge == "one past the end" else int(huge)
        mutated = data[:at] + struct.pack(order + "I", value) + data[at + 4 :]
        err = scan_error(mutated)
        group, elem = struct.unpack_from(order + "HH", data, start)
        assert (err.offset, err.tag) == (start, group << 16 | elem), str(err)


def test_huge_length_in_a_tiny_file_allocates_nothing(tmp_path: Path) -> None:
    pixels = element(0x7FE00010, b"OB", b"\0" * 8, length=0xFFFFFFFE)
    data = meta_group(EXPLICIT_LE) + element(UID, b"UI", b"1.2\0") + pixels
    result = scan_in_child(data, tmp_path)
    assert result.returncode == 0, result.stderr
    verdict, rss_growth_kib = result.stdout.splitlines()
    assert verdict.startswith("DicomParseError")
    assert "(7FE0,0010)" in verdict
    assert int(rss_growth_kib) < 8 * 1024


# --- undefined lengths without delimiters, fragments past their parent -------

HEAD = meta_group(RLE_LOSSLESS) + element(UID, b"UI", b"1.2\0")
PIXELS = element(0x7FE00010, b"OB", b"", length=UNDEFINED)
SEQUENCE = element(0x00081115, b"SQ", b"", length=UNDEFINED)
PID = element(0x00100020, b"LO", b"ab")


@pytest.mark.parametrize(
    ("data", "tag"),
    [
        (HEAD + SEQUENCE + item(PID), 0x00081115),  # no sequence delimiter
        (HEAD + SEQUENCE + item(PID, length=UNDEFINED), None),  # no item delimiter
        (HEAD + SEQUENCE + item(PID, length=UNDEFINED) + sequence_delimiter(), 0xFFFEE0DD),
        (HEAD + SEQUENCE + item(PID, length=1000) + sequence_delimiter(), 0x00081115),
        (HEAD + PIXELS + item(b"") + item(b"abcd"), 0x7FE00010),  # no sequence delimiter
        (HEAD + PIXELS + item(b"") + item(b"abcd", length=100) + sequence_delimiter(), 0xFFFEE000),
        (
            HEAD + PIXELS + item(b"") + item(b"abcd", length=UNDEFINED) + sequence_delimiter(),
            0x7FE00010,
        ),
        (HEAD + PIXELS + item(b"") + PID + sequence_delimiter(), 0x00100020),
        (HEAD + item_delimiter(), 0xFFFEE00D),
        (HEAD + sequence_delimiter(), 0xFFFEE0DD),
    ],
    ids=[
        "sequence-without-delimiter",
        "item-without-delimiter",
        "sequence-delimiter-inside-item",
        "item-past-the-end",
        "fragments-without-delimiter",
        "fragment-past-the-end",
        "fragment-of-undefined-length",
        "element-among-fragments",
        "item-delimiter-at-top-level",
        "sequence-delimiter-at-top-level",
    ],
)
def test_broken_item_structure_is_rejected(data: bytes, tag: int | None) -> None:
    err = scan_error(data)
    assert err.tag == tag, str(err)
    assert len(HEAD) <= err.offset <= len(data)


# --- deep nesting: in a child, so a stack overflow is a failure, not a dead run --


@ENCODINGS
@pytest.mark.parametrize("closed", [True, False], ids=["closed", "unclosed"])
def test_ten_thousand_nested_sequences_are_rejected(
    enc: Encoding, closed: bool, tmp_path: Path
) -> None:
    data = element(UID, b"UI", b"1.2\0", enc) + nested_sequences(10_000, enc, closed=closed)
    result = scan_in_child(data, tmp_path)
    assert result.returncode == 0, f"child died: {result.returncode} {result.stderr[-500:]}"
    assert result.stdout.startswith("DicomParseError")
    assert "(0008,1115)" in result.stdout


def test_ten_thousand_nested_un_sequences_are_rejected(tmp_path: Path) -> None:
    # UN of undefined length switches to implicit VR inside, at every level.
    level = element(0x00091010, b"UN", b"", EXPLICIT, length=UNDEFINED) + item(
        b"", length=UNDEFINED
    )
    opener = element(0x00091010, b"UN", b"", IMPLICIT, length=UNDEFINED) + item(
        b"", length=UNDEFINED
    )
    data = element(UID, b"UI", b"1.2\0") + level + opener * 10_000
    result = scan_in_child(data, tmp_path)
    assert result.returncode == 0, f"child died: {result.returncode} {result.stderr[-500:]}"
    assert result.stdout.startswith("DicomParseError")


@ENCODINGS
def test_ordinary_nesting_is_followed_to_the_values_after_it(enc: Encoding) -> None:
    data = (
        element(UID, b"UI", b"1.2\0", enc)
        + nested_sequences(32, enc)
        + element(0x00100020, b"LO", b"after ", enc)
    )
    assert dicomrelay.scan(data).patient_id == "after"


def _defined_nesting(depth: int) -> bytes:
    inner = element(0x00100020, b"LO", b"in")
    for _ in range(depth):
        inner = element(0x00081115, b"SQ", item(inner))
    return element(UID, b"UI", b"1.2\0") + inner + element(0x00100020, b"LO", b"top ")


def test_ten_thousand_nested_defined_length_sequences_are_rejected(tmp_path: Path) -> None:
    # Sequences of defined length are walked like the others, so capped like them.
    data = _defined_nesting(10_000)
    result = scan_in_child(data, tmp_path)
    assert result.returncode == 0, f"child died: {result.returncode} {result.stderr[-500:]}"
    assert result.stdout.startswith("DicomParseError")
    assert "(0008,1115)" in result.stdout
    assert dicomrelay.scan(_defined_nesting(32)).patient_id == "top"


# --- VRs, preambles, deflate ---------------------------------------------------


def test_every_two_byte_vr_on_the_first_element() -> None:
    seed = SEEDS["gen-explicit.dcm"]
    at = seed.layout.dataset_offset + 4
    for vr in range(1 << 16):
        data = seed.data[:at] + vr.to_bytes(2, "big") + seed.data[at + 2 :]
        kind, problem = mutation_worker.outcome(data)
        assert kind in {"ok", "parse_error"}, (vr, problem)
        assert problem is None, (vr, problem)


@pytest.mark.parametrize(
    "preamble",
    [
        b"MZ\x90\0" + bytes(124),
        b"\x7fELF\2\1\1" + bytes(121),
        b"#!/bin/sh\nrm -rf /\n".ljust(128, b"\0"),
        b"DICM" * 32,
    ],
    ids=["pe", "elf", "script", "dicm"],
)
def test_preamble_contents_do_not_change_the_scan(preamble: bytes) -> None:
    data = SEEDS["CT_small.dcm"].data
    assert dicomrelay.scan(preamble + data[128:]) == dicomrelay.scan(data)


def _deflated(dataset_head: bytes, zero_mib: int) -> bytes:
    """A deflated file: `dataset_head`, then `zero_mib` MiB of zeros. A full flush
    resets the compressor, so every MiB compresses to the same bytes (about 1 KB)."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(dataset_head) + co.flush(zlib.Z_FULL_FLUSH)
    mib = co.compress(bytes(1 << 20)) + co.flush(zlib.Z_FULL_FLUSH)
    return meta_group(DEFLATED_LE) + head + mib * zero_mib + co.flush()


def test_deflate_bomb_is_rejected_without_allocating_gigabytes(tmp_path: Path) -> None:
    # ~1 GiB of zeros in about 1 MB: must fail at the inflate cap, not allocate it all.
    head = element(UID, b"UI", b"1.2\0") + element(0x7FE00010, b"OB", b"", length=1 << 30)
    data = _deflated(head, 1024)
    assert len(data) < 1_200_000
    result = scan_in_child(data, tmp_path)
    assert result.returncode == 0, result.stderr[-500:]
    verdict, rss_growth_kib = result.stdout.splitlines()
    assert verdict.startswith("DicomParseError"), verdict
    assert int(rss_growth_kib) < 384 * 1024, f"inflating used {int(rss_growth_kib) // 1024} MiB"


def test_small_deflated_file_is_read() -> None:
    head = element(UID, b"UI", b"1.2\0") + element(0x7FE00010, b"OB", b"", length=1 << 20)
    info = dicomrelay.scan(_deflated(head, 1))
    assert (info.deflated, info.sop_class_uid, info.pixel_data_length) == (True, "1.2", 1 << 20)


@pytest.mark.parametrize("cut", [10, 100, 1000])
def test_truncated_deflate_stream_is_rejected(cut: int) -> None:
    # (image_dfl.dcm has 8 bytes after the end of its deflate stream: cut more.)
    data = (TEST_FILES_DIR / "image_dfl.dcm").read_bytes()
    err = scan_error(data[: len(data) - cut])
    assert err.offset <= len(data)


def test_garbage_deflate_stream_is_rejected() -> None:
    scan_error(meta_group(DEFLATED_LE) + bytes(range(256)) * 4)


def test_layout_walker_agrees_with_the_seeds() -> None:
    # The prefix test above trusts tests/dicom_builders.layout: check it on its own.
    for name in STRUCTURED:
        lay = layout(SEEDS[name].data)
        assert lay.top_level_ends, name
        assert lay.top_level_ends[-1] == len(SEEDS[name].data), name
