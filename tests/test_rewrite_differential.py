"""The rewrite against pydicom on every file pydicom ships for its own tests.

For each file and each edit (or list of edits), pydicom makes the same edit
on its own reading of the input; the rewrite's output, read by pydicom, must
hold the same elements with the same values, item by item, and the same
pixel bytes, which the output takes unchanged from the input. Group lengths
must count their groups. Files the scanner refuses are refused here too.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest

from dicom_builders import (
    EXPLICIT_BE,
    IMPLICIT_LE,
    MALFORMED,
    file_id,
    pydicom_test_files,
    read_with_pydicom,
)
from dicomrelay import scan
from dicomrelay.errors import DicomParseError
from dicomrelay.rewrite import (
    AddItem,
    Edit,
    Empty,
    RemapUids,
    Remove,
    RemovePrivate,
    Replace,
    Set,
    rewrite,
)
from rewrite_reference import (
    apply_with_pydicom,
    differences,
    group_length_errors,
    read_private_sequences,
)

FILES = pydicom_test_files()
READABLE = [p for p in FILES if p.name not in MALFORMED]
REFUSED = [p for p in FILES if p.name in MALFORMED]
KEY = b"project key"


ORIGINAL_ATTRIBUTES = AddItem(
    sequence_tag=0x04000561,
    elements=(
        (
            0x04000550,  # Modified Attributes Sequence: the values before
            "SQ",
            (((0x00100020, "LO", "SENDER-ID"), (0x00100021, "LO", "SENDER")),),
        ),
        (0x04000562, "DT", "20261203010203"),
        (0x04000563, "LO", "DICOMRELAY"),
        (0x04000564, "LO", "SENDER-ORG"),
        (0x04000565, "CS", "COERCE"),
    ),
)

EDITS: dict[str, list[Edit]] = {
    "set-existing-or-insert": [Set(tag=0x00100020, value="LOCAL^123", vr="LO")],
    "set-new-long-text": [Set(tag=0x00104000, value="a comment, odd length", vr="LT")],
    "set-numbers": [
        Set(tag=0x00181150, value="77", vr="IS"),
        Set(tag=0x00181310, value="0\\256\\256\\0", vr="US"),
    ],
    "replace-everywhere": [
        Replace(tag=0x00100010, value="Anonymous^Patient", vr="PN"),
        Replace(tag=0x00081155, value="1.2.3.4.5", vr="UI"),
    ],
    "empty-everywhere": [
        Empty(tag=0x00080050),
        Empty(tag=0x00100030),
        Empty(tag=0x00081140),
    ],
    "remove": [
        Remove(tag=0x00080090),
        Remove(tag=0x60003000, mask=0xFF00FFFF),
        Remove(tag=0x00081110),
    ],
    "remove-top-level-only": [Remove(tag=0x00081150, everywhere=False)],
    "remove-private": [RemovePrivate(keep=frozenset({0x00291010}))],
    "remap-uids": [RemapUids(tags=None, key=KEY)],
    "remap-listed-uids": [RemapUids(tags=frozenset({0x0020000D, 0x00081155}), key=KEY)],
    "add-item": [ORIGINAL_ATTRIBUTES, ORIGINAL_ATTRIBUTES],
    "reconcile": [
        ORIGINAL_ATTRIBUTES,
        Set(tag=0x00100020, value="LOCAL-7", vr="LO"),
        Set(tag=0x00100021, value="TRUST-B", vr="LO"),
        Set(tag=0x00080050, value="B-0001", vr="SH"),
        AddItem(sequence_tag=0x00101002, elements=((0x00100020, "LO", "SENDER-ID"),)),
    ],
}


def test_every_bundled_file_is_tried() -> None:
    # Guards the parametrisation: the refused files are exactly the scanner's.
    assert len(READABLE) > 60
    assert len(REFUSED) == len(MALFORMED) == 5


@pytest.mark.parametrize("path", REFUSED, ids=file_id)
def test_files_the_scanner_refuses_are_refused(path: Path) -> None:
    with pytest.raises(DicomParseError):
        rewrite(path.read_bytes(), EDITS["set-existing-or-insert"])


def _output(data: bytes, edits: list[Edit]) -> bytes:
    result = rewrite(data, edits, digest="sha256")
    pixels = data[result.pixel_offset : result.pixel_offset + result.pixel_length]
    return result.header + pixels + result.trailer


@pytest.mark.parametrize("name", sorted(EDITS))
@pytest.mark.parametrize("path", READABLE, ids=file_id)
def test_matches_pydicom_making_the_same_edit(path: Path, name: str) -> None:
    data = path.read_bytes()
    edits = EDITS[name]
    out = _output(data, edits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = read_with_pydicom(data)
        read_private_sequences(expected)
        for edit in edits:
            apply_with_pydicom(expected, edit)
        got = read_with_pydicom(out)
        read_private_sequences(got)
        syntax = str(expected.file_meta.get("TransferSyntaxUID", ""))
        explicit = syntax != IMPLICIT_LE and not got.original_encoding[0]
        assert differences(got, expected, compare_vr=explicit) == []
        meta_got = copy.deepcopy(got.file_meta)
        assert differences(meta_got, expected.file_meta, compare_vr=True) == []
    assert group_length_errors(out) == []
    # The output is what the scanner reads too, with the same pixel data.
    before, after = scan(data), scan(out)
    assert after.pixel_data_length == before.pixel_data_length
    assert after.transfer_syntax_uid == before.transfer_syntax_uid
    if before.pixel_data_offset is not None and not before.deflated:
        assert after.pixel_data_offset is not None
        old = data[before.pixel_data_offset :][: before.pixel_data_length]
        assert out[after.pixel_data_offset :][: after.pixel_data_length] == old


@pytest.mark.parametrize("path", READABLE, ids=file_id)
def test_no_edits_change_nothing_but_group_lengths(path: Path) -> None:
    data = path.read_bytes()
    out = _output(data, [])
    if not scan(data).deflated and not group_length_errors(data):
        assert out == data


def test_big_endian_and_implicit_files_are_among_them() -> None:
    syntaxes = {scan(p.read_bytes()).transfer_syntax_uid for p in READABLE}
    assert {IMPLICIT_LE, EXPLICIT_BE, "1.2.840.10008.1.2.1.99"} <= syntaxes
