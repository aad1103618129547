"""A ZIP archive of stored (uncompressed) entries, made as it is read.

Every entry's size is given beforehand, so the archive's length is known
before a byte is made (a download's Content-Length); each entry's bytes are
taken from its chunks only when the archive reaches it, and its CRC-32 goes
in a data descriptor after them (general purpose flag bit 3). Zip64 fields
(APPNOTE 4.5.3) are written where a size or an offset does not fit 32 bits,
and the Zip64 end records where the directory's place or count does not.
Names are UTF-8 (flag bit 11).
"""

from __future__ import annotations

import datetime
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from dicomrelay.errors import DicomrelayError

LIMIT_32 = 0xFFFFFFFF
LIMIT_16 = 0xFFFF
FLAGS = 0x0808  # sizes and CRC in a data descriptor; UTF-8 names
VERSION = 20  # 2.0: stored entries in folders
VERSION_64 = 45  # 4.5: Zip64
LOCAL = struct.Struct("<IHHHHHIIIHH")
DESCRIPTOR = struct.Struct("<IIII")
DESCRIPTOR_64 = struct.Struct("<IIQQ")
CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
END = struct.Struct("<IHHHHIIH")
END_64 = struct.Struct("<IQHHIIQQQQ")
LOCATOR_64 = struct.Struct("<IIQI")


class ArchiveError(DicomrelayError):
    """An entry's chunks did not hold the size it was given."""


@dataclass(frozen=True, slots=True)
class _Entry:
    name: bytes
    size: int
    chunks: Iterable[bytes]
    offset: int  # of its local header

    @property
    def big(self) -> bool:
        return self.size >= LIMIT_32

    def local_extra(self) -> bytes:
        # Zip64 sizes, zero here: the data descriptor carries them.
        return struct.pack("<HHQQ", 1, 16, 0, 0) if self.big else b""

    def central_extra(self) -> bytes:
        fields = []
        if self.big:
            fields += [self.size, self.size]  # uncompressed, then compressed
        if self.offset >= LIMIT_32:
            fields.append(self.offset)
        if not fields:
            return b""
        return struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields)

    def length(self) -> int:
        descriptor = DESCRIPTOR_64 if self.big else DESCRIPTOR
        return LOCAL.size + len(self.name) + len(self.local_extra()) + self.size + descriptor.size


class StoredZip:
    """The archive of ``files``, ``(name, size, chunks)`` each, in order:
    ``len()`` is its size in bytes, iterating it makes it (once)."""

    def __init__(
        self,
        files: Sequence[tuple[str, int, Iterable[bytes]]],
        *,
        modified: datetime.datetime | None = None,
    ) -> None:
        when = modified or datetime.datetime.now()
        self._time = (when.hour << 11) | (when.minute << 5) | (when.second // 2)
        self._date = (max(when.year - 1980, 0) << 9) | (when.month << 5) | when.day
        self._entries: list[_Entry] = []
        offset = 0
        for name, size, chunks in files:
            entry = _Entry(name.encode(), size, chunks, offset)
            self._entries.append(entry)
            offset += entry.length()
        self._directory_offset = offset
        self._directory_size = sum(
            CENTRAL.size + len(e.name) + len(e.central_extra()) for e in self._entries
        )
        self._zip64_end = (
            len(self._entries) >= LIMIT_16 or offset >= LIMIT_32 or self._directory_size >= LIMIT_32
        )
        ends = END_64.size + LOCATOR_64.size if self._zip64_end else 0
        self._length = offset + self._directory_size + ends + END.size

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        crcs = []
        for entry in self._entries:
            yield self._local_header(entry)
            crc, taken = 0, 0
            for chunk in entry.chunks:
                crc = zlib.crc32(chunk, crc)
                taken += len(chunk)
                if taken > entry.size:
                    break
                yield chunk
            if taken != entry.size:
                raise ArchiveError(
                    f"{entry.name.decode()}: {taken} bytes where {entry.size} were given"
                )
            crcs.append(crc)
            descriptor = DESCRIPTOR_64 if entry.big else DESCRIPTOR
            yield descriptor.pack(0x08074B50, crc, entry.size, entry.size)
        yield b"".join(self._central(e, crc) for e, crc in zip(self._entries, crcs, strict=True))
        yield self._end()

    def _version(self, entry: _Entry) -> int:
        return VERSION_64 if entry.big or entry.offset >= LIMIT_32 else VERSION

    def _local_header(self, entry: _Entry) -> bytes:
        extra = entry.local_extra()
        sizes = LIMIT_32 if entry.big else 0
        header = LOCAL.pack(
            0x04034B50,
            self._version(entry),
            FLAGS,
            0,  # stored
            self._time,
            self._date,
            0,  # the CRC follows the data
            sizes,
            sizes,
            len(entry.name),
            len(extra),
        )
        return header + entry.name + extra

    def _central(self, entry: _Entry, crc: int) -> bytes:
        extra = entry.central_extra()
        size = LIMIT_32 if entry.big else entry.size
        version = self._version(entry)
        header = CENTRAL.pack(
            0x02014B50,
            version,  # made by
            version,  # needed
            FLAGS,
            0,
            self._time,
            self._date,
            crc,
            size,
            size,
            len(entry.name),
            len(extra),
            0,  # comment
            0,  # disk
            0,  # internal attributes
            0,  # external attributes
            min(entry.offset, LIMIT_32),
        )
        return header + entry.name + extra

    def _end(self) -> bytes:
        count, size, offset = len(self._entries), self._directory_size, self._directory_offset
        out = b""
        if self._zip64_end:
            end_64_at = offset + size
            out += END_64.pack(
                0x06064B50,
                END_64.size - 12,
                VERSION_64,
                VERSION_64,
                0,
                0,
                count,
                count,
                size,
                offset,
            )
            out += LOCATOR_64.pack(0x07064B50, 0, end_64_at, 1)
        return out + END.pack(
            0x06054B50,
            0,
            0,
            min(count, LIMIT_16),
            min(count, LIMIT_16),
            min(size, LIMIT_32),
            min(offset, LIMIT_32),
            0,
        )
