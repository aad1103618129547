"""multipart/related (RFC 2387, with RFC 2046's framing), sans-IO: bytes in,
parts' headers and data out, never a whole part in memory. STOW-RS bodies
are parsed with it; WADO-RS responses are framed with ``part_header``."""

from __future__ import annotations

from dataclasses import dataclass

from dicomrelay.errors import BadRequest

MAX_HEADER_BYTES = 16 << 10  # a part's header block, at most
MAX_PREAMBLE_BYTES = 64 << 10


@dataclass(frozen=True, slots=True)
class PartStart:
    headers: dict[str, str]  # names in lower case


@dataclass(frozen=True, slots=True)
class PartData:
    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


class MultipartParser:
    """Feed the body as it arrives; each ``feed`` returns the events it
    completes. ``close`` at the end of the body raises BadRequest unless the
    closing delimiter was seen."""

    def __init__(self, boundary: str) -> None:
        if not boundary or len(boundary) > 70:
            raise BadRequest("a multipart boundary is 1 to 70 characters")
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        # The first delimiter may open the body: as if a line break came before it.
        self._buffer = bytearray(b"\r\n")
        self._state = "preamble"  # preamble, after_delimiter, headers, body, done

    def feed(self, data: bytes) -> list[Event]:
        if self._state == "done":
            return []  # the epilogue is ignored
        self._buffer += data
        events: list[Event] = []
        while True:
            before = (self._state, len(self._buffer))
            self._step(events)
            if self._state == "done" or (self._state, len(self._buffer)) == before:
                return events

    def close(self) -> None:
        if self._state != "done":
            raise BadRequest("the multipart body ends before its closing delimiter")

    def _step(self, events: list[Event]) -> None:
        buf, delim = self._buffer, self._delimiter
        if self._state == "preamble":
            i = buf.find(delim)
            if i < 0:
                if len(buf) > MAX_PREAMBLE_BYTES:
                    raise BadRequest("no multipart boundary where the body begins")
                return
            del buf[: i + len(delim)]
            self._state = "after_delimiter"
        elif self._state == "after_delimiter":
            if len(buf) < 2:
                return
            if buf[:2] == b"--":
                self._state = "done"
                buf.clear()
                return
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > 80:
                    raise BadRequest("a multipart delimiter line is malformed")
                return
            if buf[:end].strip(b" \t"):
                raise BadRequest("a multipart delimiter line is malformed")
            del buf[: end + 2]
            self._state = "headers"
        elif self._state == "headers":
            end = buf.find(b"\r\n\r\n")
            if buf.startswith(b"\r\n"):
                end = -2  # no headers at all
            if end == -1:
                if len(buf) > MAX_HEADER_BYTES:
                    raise BadRequest("a multipart part's headers are too long")
                return
            events.append(PartStart(_headers(bytes(buf[: max(end, 0)]))))
            del buf[: end + 4]
            self._state = "body"
        elif self._state == "body":
            i = buf.find(delim)
            if i >= 0:
                if i:
                    events.append(PartData(bytes(buf[:i])))
                events.append(PartEnd())
                del buf[: i + len(delim)]
                self._state = "after_delimiter"
                return
            # Keep what could be the start of a delimiter split across feeds.
            keep = len(delim) - 1
            if len(buf) > keep:
                events.append(PartData(bytes(buf[:-keep])))
                del buf[:-keep]


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise BadRequest(f"a multipart part has a malformed header line: {line[:60]!r}")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers


def part_header(boundary: str, content_type: str, extra: dict[str, str] | None = None) -> bytes:
    """The delimiter and headers that open a part of a response."""
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("latin-1")
