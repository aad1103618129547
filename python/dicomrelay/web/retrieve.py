"""WADO-RS bodies (PS3.18 10.4), streamed from the store: instances as
multipart/related application/dicom (the stored bytes, unchanged), frames
as multipart/related of their media type, one instance or frame read at a
time: memory stays flat however large the study."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence

from dicomrelay.errors import InstanceNotStored
from dicomrelay.instance_store import InstanceReader, InstanceStore
from dicomrelay.ledger.archive import StoredAttributes
from dicomrelay.web import dicom_json, pixels
from dicomrelay.web.multipart import closing, part_header
from dicomrelay.web.pixels import Frame


class Located:
    """The instances a response reads, located in the store beforehand (one
    ledger query, on the loop) so that the body's worker thread opens and reads
    them without the loop: each open takes a descriptor of its own."""

    def __init__(self, openers: dict[str, Callable[[], InstanceReader]]) -> None:
        self._openers = openers

    @classmethod
    async def of(cls, store: InstanceStore, digests: Sequence[str]) -> Located:
        """InstanceNotStored if the store holds one of them no more (dropped by
        retention since it was indexed)."""
        where = await store.locations(list(dict.fromkeys(digests)))
        missing = [d for d in digests if d not in where]
        if missing:
            raise InstanceNotStored(f"no instance {missing[0]} in this node's store")
        return cls({d: store.opener(d, w) for d, w in where.items()})

    def open(self, digest: str) -> InstanceReader:
        return self._openers[digest]()


def new_boundary() -> str:
    return f"dicomrelay-{uuid.uuid4().hex}"


def instances_body(
    located: Located, instances: Sequence[StoredAttributes], boundary: str
) -> Iterator[bytes]:
    """Each instance a part, its bytes as stored, read a chunk at a time
    (the iterator runs on a worker thread: reads never block the loop)."""
    for a in instances:
        with located.open(a.digest) as stored:
            yield part_header(
                boundary,
                f"application/dicom; transfer-syntax={a.transfer_syntax}",
                {"Content-Length": str(stored.size)},
            )
            yield from stored
        yield b"\r\n"
    yield closing(boundary)


def read_range(located: Located, digest: str, start: int, stop: int) -> bytes:
    """A small range of a stored instance, whole (headers, frame tables, a frame)."""
    with located.open(digest) as stored:
        stored.seek(start)
        return stored.read(max(0, stop - start))


def frames_body(
    located: Located,
    a: StoredAttributes,
    frames: Sequence[Frame],
    media_type: str,
    boundary: str,
) -> Iterator[bytes]:
    with located.open(a.digest) as stored:
        for frame in frames:
            yield part_header(
                boundary,
                f"{media_type}; transfer-syntax={a.transfer_syntax}",
                {"Content-Length": str(frame.length)},
            )
            for start, stop in frame.pieces:
                stored.seek(start)
                left = stop - start
                while left > 0:
                    piece = stored.read(min(left, 1 << 20))
                    if not piece:
                        break
                    left -= len(piece)
                    yield piece
            yield b"\r\n"
    yield closing(boundary)


def header_of(located: Located, a: StoredAttributes) -> bytes:
    """The instance's bytes before its pixel data value (all of it if none, or
    if the scanner could not say where: a deflated dataset)."""
    return read_range(
        located, a.digest, 0, a.pixel_offset if a.pixel_offset is not None else a.size
    )


def frames(located: Located, a: StoredAttributes, numbers: list[int]) -> list[Frame]:
    """Where the numbered frames of a stored instance lie (reads its offset table, if any)."""

    def read(start: int, stop: int) -> bytes:
        return read_range(located, a.digest, start, stop)

    return pixels.pick(pixels.frames_of(a, read), numbers)


def rendered_image(located: Located, a: StoredAttributes, number: int) -> pixels.Picture:
    """A frame of a stored instance as an 8-bit picture (BadRequest if it cannot be)."""
    [frame] = frames(located, a, [number])
    data = b"".join(read_range(located, a.digest, start, stop) for start, stop in frame.pieces)
    if a.encapsulated:
        kind = pixels.FRAME_MEDIA_TYPES.get(a.transfer_syntax, "application/octet-stream")
        return pixels.encapsulated_image(data, kind)
    header = dicom_json.header_dataset(header_of(located, a))
    return pixels.native_image(data, a, header)


def rendered(located: Located, a: StoredAttributes, number: int, media_type: str) -> bytes:
    return pixels.encode(rendered_image(located, a, number), media_type)
