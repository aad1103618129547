"""Text values at the edges, each compared with pydicom reading the same bytes:
person names, multi-valued strings, integer strings, and every character set
the scanner decodes."""

from __future__ import annotations

import pytest

import dicomrelay
from dicom_builders import element, expected_from_pydicom


def check_against_pydicom(data: bytes) -> None:
    expected = expected_from_pydicom(data)
    got = dicomrelay.scan(data).as_dict()
    assert {k: got[k] for k in expected} == expected


def _one_text_element(vr: bytes, value: bytes, charset: bytes = b"ISO_IR 192") -> bytes:
    """A raw explicit VR LE dataset: a character set, a UID, and one text value
    (padded to an even length with a space, as every length must be)."""
    tag = {b"PN": 0x00100010, b"LO": 0x00100020, b"IS": 0x00280008}[vr]
    return (
        element(0x00080005, b"CS", charset + b" " * (len(charset) % 2))
        + element(0x00080016, b"UI", b"1.2.3\0")
        + element(tag, vr, value + b" " * (len(value) % 2))
    )


@pytest.mark.parametrize(
    "value",
    [
        b"Wang^XiaoDong=\xe7\x8e\x8b^\xe5\xb0\x8f\xe6\x9d\xb1= ",  # empty last group (chrX1.dcm)
        b"Yamada^Tarou==",
        b"A^B^^^ ",
        b" Leading^Space",
        b"Smith^John\\Doe^Jane=",  # multi-valued, trailing '=' on the second value
        b"\0",
    ],
)
def test_person_name_as_pydicom_gives_it(value: bytes) -> None:
    data = _one_text_element(b"PN", value)
    check_against_pydicom(data)


@pytest.mark.parametrize("value", [b"A\\B", b"A \\B ", b"\\", b"A\\\\B\0", b"  "])
def test_multivalued_text_as_pydicom_gives_it(value: bytes) -> None:
    data = _one_text_element(b"LO", value)
    check_against_pydicom(data)


@pytest.mark.parametrize(
    "value", [b"12", b" 12 ", b"1.0", b"+3", b"-0", b"007", b"1e2", b"1.5", b"abc", b"", b"1\\2"]
)
def test_number_of_frames_as_pydicom_gives_it(value: bytes) -> None:
    data = _one_text_element(b"IS", value)
    check_against_pydicom(data)


@pytest.mark.parametrize(
    ("charset", "vr", "value"),
    [
        (b"ISO_IR 100", b"LO", "Müller-Lüdenscheidt".encode("latin-1")),
        (b"ISO_IR 100", b"LO", b"\x80\x9f"),  # C1 controls: still Latin-1
        (b"ISO_IR 6", b"LO", b"\xe9t\xe9"),  # non-ASCII in the default repertoire
        (b"NOT A CHARSET", b"LO", b"\xe9t\xe9"),
        (b"ISO_IR 101", b"LO", b"\xb1"),
        (b"ISO_IR 109", b"LO", b"\xa1"),
        (b"ISO_IR 110", b"LO", b"\xa1"),
        (b"ISO_IR 144", b"LO", b"\xbb\xee\xdd\xd4\xde\xdd"),
        (b"ISO_IR 127", b"LO", b"\xc7"),
        (b"ISO_IR 126", b"LO", b"\xae\xd2\xff"),
        (b"ISO_IR 138", b"LO", b"\xe0"),
        (b"ISO_IR 148", b"LO", b"\xfd"),
        (b"ISO_IR 166", b"LO", b"\xa1"),
        (b"ISO_IR 13", b"LO", b"\xd4\xcf"),
        (b"GB18030", b"PN", b"\xcd\xf5^\xd0\xa1\xb6\xab"),
        (b"GBK", b"LO", b"\x81\x40"),
        (b"ISO_IR 192", b"LO", b"ab\xff\xfecd"),  # invalid UTF-8: replaced, not an error
        (b"ISO_IR 192", b"LO", b"\xed\xa0\x80"),  # an encoded surrogate
        (b"\\ISO 2022 IR 149", b"PN", b"\x1b$)C\xb1\xe8\xc8\xf1\xc1\xdf"),
        (b"\\ISO 2022 IR 87", b"PN", b"\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B"),
        # Half-width katakana (JIS X 0201, 8-bit) beside JIS X 0208 (chrH32.dcm)
        (b"ISO 2022 IR 13\\ISO 2022 IR 87", b"PN", b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3"),
    ],
)
def test_character_sets_as_pydicom_decodes_them(charset: bytes, vr: bytes, value: bytes) -> None:
    check_against_pydicom(_one_text_element(vr, value, charset))


def test_uid_with_path_traversal_is_reported_verbatim() -> None:
    # The scanner reports what the file says; keeping "../" out of storage paths
    # is the blob store's job, and it can only do it if it sees the real value.
    data = element(0x00080016, b"UI", b"1.2\0") + element(0x00080018, b"UI", b"../../etc/passwd")
    assert dicomrelay.scan(data).sop_instance_uid == "../../etc/passwd"
