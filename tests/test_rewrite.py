"""Header rewriting on hand-built datasets: nested sequences of defined and
undefined length, big endian, deflated, group lengths, files written and
digested, and the edits that cannot be applied."""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path

import blake3
import pytest
from pydicom.datadict import DicomDictionary  # type: ignore[attr-defined]

from dicom_builders import (
    BIG,
    DEFLATED_LE,
    EXPLICIT,
    EXPLICIT_BE,
    IMPLICIT,
    IMPLICIT_LE,
    UNDEFINED,
    Encoding,
    element,
    item,
    item_delimiter,
    meta_group,
    read_with_pydicom,
    sequence_delimiter,
)
from dicomrelay import scan
from dicomrelay.errors import DicomParseError, RewriteError
from dicomrelay.rewrite import (
    AddItem,
    Edit,
    Empty,
    NewElement,
    RemapUids,
    Remove,
    Replace,
    Rewritten,
    Set,
    rewrite,
    rewrite_file,
)
from rewrite_reference import bundled, group_length_errors, new_uid

PIXELS = bytes(range(256)) * 8


def whole(data: bytes, result: Rewritten) -> bytes:
    return result.header + data[result.pixel_offset :][: result.pixel_length] + result.trailer


def nested(enc: Encoding, *, undefined: bool) -> bytes:
    """A study whose (0008,1115) sequence holds an item with a nested
    (0008,1140) sequence, each at the given lengths, and pixel data last."""
    n = UNDEFINED if undefined else None

    def seq(tag: int, items: list[bytes]) -> bytes:
        if undefined:
            body = b"".join(item(i, enc, length=UNDEFINED) + item_delimiter(enc) for i in items)
            return element(tag, b"SQ", body + sequence_delimiter(enc), enc, length=n)
        return element(tag, b"SQ", b"".join(item(i, enc) for i in items), enc)

    inner = element(0x00081155, b"UI", b"1.2.3.4\0", enc) + element(0x00100020, b"LO", b"DEEP", enc)
    outer = element(0x00081150, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0", enc) + seq(
        0x00081140, [inner]
    )
    dataset = (
        element(0x00080018, b"UI", b"1.2.3.9\0", enc)
        + seq(0x00081115, [outer, outer])
        + element(0x00100020, b"LO", b"TOP ", enc)
        + element(0x7FE00010, b"OW", PIXELS, enc)
    )
    syntax = {IMPLICIT: IMPLICIT_LE, BIG: EXPLICIT_BE}.get(enc, "1.2.840.10008.1.2.1")
    return meta_group(syntax) + dataset


@pytest.mark.parametrize("enc", [EXPLICIT, IMPLICIT, BIG], ids=["explicit", "implicit", "big"])
@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
def test_nested_edits_keep_every_length_right(enc: Encoding, undefined: bool) -> None:
    data = nested(enc, undefined=undefined)
    edits: list[Edit] = [
        Replace(tag=0x00100020, value="A MUCH LONGER PATIENT ID", vr="LO"),
        Set(tag=0x00100010, value="Doe^Jane", vr="PN"),
    ]
    result = rewrite(data, edits)
    out = whole(data, result)
    ds = read_with_pydicom(out)
    assert ds.PatientID == "A MUCH LONGER PATIENT ID"
    assert ds.PatientName == "Doe^Jane"
    for outer in ds[0x00081115].value:
        assert outer[0x00081140].value[0].PatientID == "A MUCH LONGER PATIENT ID"
        assert outer[0x00081140].value[0][0x00081155].value == "1.2.3.4"
    assert len(ds[0x00081115].value) == 2
    assert ds.PixelData == PIXELS
    assert data[result.pixel_offset :][: result.pixel_length] == PIXELS
    # Undefined lengths stay undefined; defined ones are recomputed.
    assert (enc.u32(UNDEFINED) in result.header) is undefined
    # A second pass over the output reads it again and changes nothing more.
    assert whole(out, rewrite(out, edits)) == out


def test_top_level_only_edits_leave_items_alone() -> None:
    data = nested(EXPLICIT, undefined=False)
    out = whole(
        data, rewrite(data, [Replace(tag=0x00100020, value="X", vr="LO", everywhere=False)])
    )
    ds = read_with_pydicom(out)
    assert ds.PatientID == "X"
    assert ds[0x00081115].value[0][0x00081140].value[0].PatientID == "DEEP"


def test_sequences_removed_emptied_and_items_added() -> None:
    data = nested(EXPLICIT, undefined=True)
    emptied = read_with_pydicom(whole(data, rewrite(data, [Empty(tag=0x00081140)])))
    assert [len(o[0x00081140].value) for o in emptied[0x00081115].value] == [0, 0]
    removed = read_with_pydicom(whole(data, rewrite(data, [Remove(tag=0x00081115)])))
    assert 0x00081115 not in removed
    added = AddItem(sequence_tag=0x00081115, elements=((0x00081155, "UI", "9.8.7"),))
    grown = read_with_pydicom(whole(data, rewrite(data, [added])))
    assert [i.get(0x00081155) is not None for i in grown[0x00081115].value] == [False, False, True]


def test_big_endian_numbers_and_binary_values_are_swapped() -> None:
    path = bundled("MR_small_bigendian.dcm")
    data = path.read_bytes()
    edits: list[Edit] = [
        Set(tag=0x00280010, value="48", vr="US"),
        Set(tag=0x00181310, value=struct.pack("<4H", 0, 64, 64, 0), vr="US"),
    ]
    ds = read_with_pydicom(whole(data, rewrite(data, edits)))
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT_BE
    assert ds.Rows == 48
    assert list(ds.AcquisitionMatrix) == [0, 64, 64, 0]


def test_deflated_is_deflated_again() -> None:
    data = bundled("image_dfl.dcm").read_bytes()
    result = rewrite(data, [Set(tag=0x00100020, value="INFLATED-AND-BACK", vr="LO")])
    assert result.pixel_length == 0
    assert result.trailer == b""
    assert len(result.header) % 2 == 0
    info = scan(result.header)
    assert info.deflated
    assert info.transfer_syntax_uid == DEFLATED_LE
    assert info.patient_id == "INFLATED-AND-BACK"
    assert read_with_pydicom(result.header).PixelData == read_with_pydicom(data).PixelData


def test_group_lengths_are_recomputed() -> None:
    body = element(0x00100010, b"PN", b"Doe^John") + element(0x00100020, b"LO", b"ID01")
    dataset = (
        element(0x00080000, b"UL", struct.pack("<I", 24))
        + element(0x00080018, b"UI", b"1.2.3.4.5.6.7.8\0")
        + element(0x00100000, b"UL", struct.pack("<I", len(body)))
        + body
        + element(0x7FE00000, b"UL", struct.pack("<I", 8 + 4 + len(PIXELS)))
        + element(0x7FE00010, b"OW", PIXELS)
    )
    data = meta_group("1.2.840.10008.1.2.1") + dataset
    assert group_length_errors(data) == []
    result = rewrite(
        data, [Set(tag=0x00100020, value="A LONGER ID", vr="LO"), Remove(tag=0x00100010)]
    )
    out = whole(data, result)
    assert group_length_errors(out) == []
    assert read_with_pydicom(out)[0x00100000].value == 8 + 12
    remapped = whole(data, rewrite(data, [RemapUids(tags=None, key=b"k")]))
    assert group_length_errors(remapped) == []
    assert read_with_pydicom(remapped).file_meta.get(0x00020003) is None  # none to follow


def test_meta_follows_the_new_sop_instance_uid() -> None:
    data = bundled("CT_small.dcm").read_bytes()
    before = read_with_pydicom(data)
    ds = read_with_pydicom(whole(data, rewrite(data, [RemapUids(tags=None, key=b"key")])))
    assert ds.SOPInstanceUID == new_uid(b"key", before.SOPInstanceUID)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPClassUID == before.SOPClassUID  # a class, not an instance
    assert ds.StudyInstanceUID == new_uid(b"key", before.StudyInstanceUID)
    assert group_length_errors(whole(data, rewrite(data, [RemapUids(tags=None, key=b"key")]))) == []


def test_rewrite_file_writes_what_rewrite_describes(tmp_path: Path) -> None:
    src = bundled("CT_small.dcm")
    data = src.read_bytes()
    edits = [Set(tag=0x00100020, value="FILE", vr="LO")]
    dst = tmp_path / "out.dcm"
    dst.write_bytes(b"an older file in the way")
    result = rewrite_file(src, dst, edits)
    out = dst.read_bytes()
    assert out == whole(data, rewrite(data, edits))
    assert result.digest == hashlib.sha256(out).hexdigest()
    assert result.size == len(out)
    assert rewrite_file(src, dst, edits, digest="blake3").digest == blake3.blake3(out).hexdigest()
    assert rewrite(data, edits, digest=None).digest is None
    assert [p.name for p in tmp_path.iterdir()] == ["out.dcm"]  # no partial file left
    with pytest.raises(FileNotFoundError):
        rewrite_file(tmp_path / "missing.dcm", tmp_path / "x.dcm", edits)
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 7)
    with pytest.raises(DicomParseError):
        rewrite_file(junk, tmp_path / "y.dcm", edits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk", "out.dcm"]


BAD_EDITS: list[tuple[Edit, int, str]] = [
    (Set(tag=0x00100020, value="x" * 70000, vr="LO"), 0x00100020, "too long"),
    (Set(tag=0x00081115, value="x", vr="LO"), 0x00081115, "sequence"),
    (AddItem(sequence_tag=0x00100020, elements=()), 0x00100020, "not a sequence"),
    (Remove(tag=0x7FE00010), 0x7FE00010, "pixel data"),
    (Empty(tag=0x7FE00010), 0x7FE00010, "pixel data"),
    (Set(tag=0x00020003, value="1.2", vr="UI"), 0x00020003, "meta"),
    (Set(tag=0x00100020, value="x", vr="XX"), 0x00100020, "unknown VR"),
    (Set(tag=0x00091010, value="text", vr="OB"), 0x00091010, "bytes, not text"),
    (Set(tag=0x00280010, value="70000", vr="US"), 0x00280010, "not a value of VR US"),
    (Set(tag=0x00100010, value="漢字", vr="PN"), 0x00100010, "character set"),
    (
        AddItem(
            sequence_tag=0x04000561, elements=((0x00100020, "LO", "a"), (0x00100020, "LO", "b"))
        ),
        0x00100020,
        "twice",
    ),
]


@pytest.mark.parametrize(("edit", "tag", "why"), BAD_EDITS, ids=[w for _, _, w in BAD_EDITS])
def test_edits_that_cannot_be_applied_name_their_tag(edit: Edit, tag: int, why: str) -> None:
    data = nested(EXPLICIT, undefined=False)
    with pytest.raises(RewriteError, match=why) as caught:
        rewrite(data, [edit])
    assert caught.value.tag == tag
    assert f"({tag >> 16:04X},{tag & 0xFFFF:04X})" in str(caught.value)


def test_malformed_edits_are_refused_when_made() -> None:
    with pytest.raises(RewriteError):
        Set(tag=0x1_0000_0000, value="x", vr="LO")
    with pytest.raises(RewriteError):
        Set(tag=0x00100020, value="x", vr="lo")
    with pytest.raises(TypeError):
        Set(tag=0x00100020, value=5, vr="LO")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RemapUids(tags=None, key=b"")


def test_items_nested_past_the_cap_are_refused() -> None:
    elements: tuple[NewElement, ...] = ((0x00100020, "LO", "x"),)
    for _ in range(70):
        elements = ((0x00081115, "SQ", (elements,)),)
    with pytest.raises(RewriteError, match="nested"):
        rewrite(
            nested(EXPLICIT, undefined=False), [AddItem(sequence_tag=0x04000561, elements=elements)]
        )


def test_uid_table_is_the_dictionary_s() -> None:
    source = (Path(__file__).parents[1] / "rust/core/src/rewrite/uids.rs").read_text()
    table = source.split("const UID_TAGS")[1].split("];")[0]
    tags = {int(g + e, 16) for g, e in re.findall(r"0x([0-9A-F]{4})_([0-9A-F]{4})", table)}
    expected = {t for t, v in DicomDictionary.items() if v[0] == "UI" and t >> 16 not in (0, 2)}
    assert tags == expected


@pytest.mark.parametrize("enc", [EXPLICIT, BIG], ids=["little", "big"])
def test_a_sequence_stored_as_un_is_edited_inside(enc: Encoding) -> None:
    # PS3.5 6.2.2: a UN value holds its items in implicit VR little endian.
    inner = element(0x00081150, b"UI", b"1.2.840.10008.5.1.4.1.1.481.5\0", IMPLICIT) + element(
        0x00081155, b"UI", b"1.2.3.4.5.6\0", IMPLICIT
    )
    stored = element(0x300C0002, b"UN", item(inner, IMPLICIT), enc)
    not_items = element(0x300C0004, b"UN", b"\x01\x02\x03\x04\x05\x06\x07\x08", enc)
    syntax = EXPLICIT_BE if enc == BIG else "1.2.840.10008.1.2.1"
    data = meta_group(syntax) + element(0x00080018, b"UI", b"1.2.3\0", enc) + stored + not_items
    out = whole(data, rewrite(data, [RemapUids(tags=None, key=b"k")]))
    assert new_uid(b"k", "1.2.3.4.5.6").encode() in out
    assert b"1.2.3.4.5.6\0" not in out
    if enc == EXPLICIT:
        # (pydicom reads such items in the dataset's byte order, so only here.)
        referenced = read_with_pydicom(out)[0x300C0002].value[0]
        assert referenced[0x00081155].value == new_uid(b"k", "1.2.3.4.5.6")
        assert referenced[0x00081150].value == "1.2.840.10008.5.1.4.1.1.481.5"
    assert out.endswith(not_items)  # a UN value that holds no items stays as it was
    assert b"UN" in out[len(meta_group(syntax)) :]


def test_every_buffer_kind_gives_the_same_rewrite() -> None:
    data = bundled("CT_small.dcm").read_bytes()
    edits = [Set(tag=0x00100020, value="X", vr="LO")]
    expected = rewrite(data, edits)
    assert rewrite(bytearray(data), edits) == expected
    assert rewrite(memoryview(data), edits) == expected
    assert rewrite(data, iter(edits)) == expected
