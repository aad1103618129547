"""The streamed ZIP of stored entries: what zipfile reads back (names, bytes,
CRCs, dates), its length known before it is made, Zip64 end records past
65,535 entries, and an entry whose chunks do not hold its size refused."""

from __future__ import annotations

import datetime
import io
import zipfile

import pytest

from dicomrelay.web.zip_stream import ArchiveError, StoredZip

WHEN = datetime.datetime(2026, 12, 3, 10, 41, 30)


def made(archive: StoredZip) -> bytes:
    data = b"".join(archive)
    assert len(data) == len(archive)
    return data


def test_entries_read_back_whole_with_their_names_and_date() -> None:
    files = [
        ("DICOMDIR", 9, [b"directory"]),
        ("DICOM/ST000001/SE000001/IM000001", 7, iter([b"abc", b"", b"defg"])),
        ("empty", 0, []),
        ("ünïcode-név", 3, [b"xyz"]),
    ]
    data = made(StoredZip(files, modified=WHEN))
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None  # every CRC checked
        assert [i.filename for i in z.infolist()] == [f[0] for f in files]
        assert [z.read(i) for i in z.infolist()] == [b"directory", b"abcdefg", b"", b"xyz"]
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        assert z.infolist()[0].date_time == (2026, 12, 3, 10, 41, 30)


def test_more_entries_than_16_bits_count_get_the_zip64_end_records() -> None:
    count = 70_000
    data = made(StoredZip([(f"f{n}", 1, [b"x"]) for n in range(count)], modified=WHEN))
    assert b"PK\x06\x06" in data[-200:]  # the Zip64 end of central directory
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        assert len(names) == count
        assert z.read(names[-1]) == b"x"


@pytest.mark.parametrize(("given", "chunks"), [(5, [b"abcd"]), (3, [b"ab", b"cd"])])
def test_an_entry_that_does_not_hold_its_size_is_refused(given: int, chunks: list[bytes]) -> None:
    archive = StoredZip([("f", given, chunks)], modified=WHEN)
    with pytest.raises(ArchiveError, match=f"f: 4 bytes where {given} were given"):
        made(archive)
