"""The download's ZIP beyond 4 GB: Zip64 sizes and offsets that zipfile
reads, its length known before a byte is made, and the bytes of each file
taken only when the archive reaches it. The 4.3 GB of zeros are written as
holes of a sparse file, so the test needs almost no disk."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

from dicomrelay.web.study_zip import DICOMDIR_NAME, stored_zip

CHUNK = 1 << 20
BIG = (4 << 30) + 300 * CHUNK  # past what 32-bit sizes and offsets hold
ZERO_CHUNK = bytes(CHUNK)


def zeros(size: int, opened: list[str], name: str) -> Iterator[bytes]:
    opened.append(name)
    block = bytes(CHUNK)
    for start in range(0, size, CHUNK):
        yield block[: min(CHUNK, size - start)]


def test_a_study_past_4_gb_is_a_zip64_archive(tmp_path: Path) -> None:
    opened: list[str] = []
    small = b"DICM" * 1000
    archive = stored_zip(
        b"directory",
        [
            ("DICOM/ST000001/SE000001/IM000001", BIG, zeros(BIG, opened, "big")),
            ("DICOM/ST000001/SE000001/IM000002", len(small), iter([small[:10], small[10:]])),
        ],
    )
    length = len(archive)
    assert length > BIG
    assert opened == []  # nothing read before the archive is streamed
    path = tmp_path / "study.zip"
    written = 0
    with open(path, "wb") as out:
        for piece in archive:
            if piece == ZERO_CHUNK:
                out.seek(len(piece), os.SEEK_CUR)  # a hole: no disk for zeros
            else:
                out.write(piece)
            written += len(piece)
        out.truncate()
    assert written == length == path.stat().st_size
    assert opened == ["big"]
    with zipfile.ZipFile(path) as z:
        big, last = z.infolist()[1:]
        assert z.infolist()[0].filename == DICOMDIR_NAME
        assert z.read(DICOMDIR_NAME) == b"directory"
        assert big.file_size == BIG
        assert big.compress_type == zipfile.ZIP_STORED
        assert last.header_offset > 1 << 32
        assert z.read(last) == small  # its CRC checked, found past the 4 GB mark
