"""The native header reader against pydicom: the values the de-identification
planner reads, on every bundled file the scanner accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from deid_reference import header_of, read
from dicom_builders import MALFORMED, charset_test_files, file_id, pydicom_test_files
from dicomrelay._native import header_values, header_values_file
from dicomrelay.deidentify import Option, tags_to_read
from dicomrelay.errors import DicomParseError

TAGS = tags_to_read(list(Option)[1:])  # every option but full dates: every value read
FILES = [p for p in pydicom_test_files() if p.name not in MALFORMED]
# Latin, Cyrillic, Greek, Arabic, Hebrew, Japanese and Korean, UTF-8, GB18030.
CHARSET_FILES = charset_test_files()


def test_every_option_asks_for_values() -> None:
    assert len(TAGS) > 300


@pytest.mark.parametrize("path", FILES + CHARSET_FILES, ids=file_id)
def test_matches_pydicom(path: Path) -> None:
    expected = header_of(read(path), TAGS)
    values, creators = header_values_file(path, sorted(TAGS))
    assert creators == dict(expected.private_creators)
    assert values.keys() == expected.values.keys()
    for tag, text in values.items():
        # pydicom shows a person name's trailing empty groups and a
        # multi-valued string's padding differently; the words are the same.
        assert text.split() == expected.values[tag].split() or text.rstrip("=") == str(
            expected.values[tag]
        ).rstrip("="), f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def test_bytes_and_file_agree(tmp_path: Path) -> None:
    path = FILES[0]
    assert header_values(path.read_bytes(), sorted(TAGS)) == header_values_file(path, sorted(TAGS))


def test_a_malformed_file_is_refused(pydicom_files: list[Path]) -> None:
    bad = next(p for p in pydicom_files if p.name in MALFORMED)
    with pytest.raises(DicomParseError):
        header_values_file(bad, [0x00100010])
