"""WADO-RS bodies (PS3.18 10.4), streamed from the store: instances as
multipart/related application/dicom (the stored bytes, unchanged), frames
as multipart/related of their media type, one instance or frame read at a
time: memory stays flat however large the study."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

from dicomrelay.ledger.archive import StoredAttributes
from dicomrelay.store import BlobStore
from dicomrelay.web.multipart import closing, part_header
from dicomrelay.web.pixels import Frame


def new_boundary() -> str:
    return f"dicomrelay-{uuid.uuid4().hex}"


def instances_body(
    store: BlobStore, instances: Sequence[StoredAttributes], boundary: str
) -> Iterator[bytes]:
    """Each instance a part, its bytes as stored, read a chunk at a time
    (the iterator runs on a worker thread: reads never block the loop)."""
    for a in instances:
        stored = store.open_instance(a.digest)
        yield part_header(
            boundary,
            f"application/dicom; transfer-syntax={a.transfer_syntax}",
            {"Content-Length": str(stored.length)},
        )
        yield from stored.chunks
        yield b"\r\n"
    yield closing(boundary)


def read_range(store: BlobStore, digest: str, start: int, stop: int) -> bytes:
    """A small range of a stored instance, whole (headers, frame tables, a frame)."""
    return b"".join(store.open_instance(digest, start=start, stop=stop).chunks)


def frames_body(
    store: BlobStore,
    a: StoredAttributes,
    frames: Sequence[Frame],
    media_type: str,
    boundary: str,
) -> Iterator[bytes]:
    for frame in frames:
        yield part_header(
            boundary,
            f"{media_type}; transfer-syntax={a.transfer_syntax}",
            {"Content-Length": str(frame.length)},
        )
        for start, stop in frame.pieces:
            yield from store.open_instance(a.digest, start=start, stop=stop).chunks
        yield b"\r\n"
    yield closing(boundary)


def header_of(store: BlobStore, a: StoredAttributes) -> bytes:
    """The instance's bytes before its pixel data value (all of it if none, or
    if the scanner could not say where: a deflated dataset)."""
    return read_range(store, a.digest, 0, a.pixel_offset if a.pixel_offset is not None else a.size)
