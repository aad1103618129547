"""A study as a ZIP laid out as a patient's CD (``dicomdir.py``), streamed:
the DICOMDIR first, then each instance read from the store a chunk at a
time only when its turn comes, so memory stays flat however large the study.

The archive (``zip_stream``): entries stored (no compression: pixel data
hardly compresses, and stored entries cost no CPU), Zip64 where sizes or
offsets pass 4 GB, each entry's CRC in a data descriptor after its bytes.
Every size is known beforehand, so the archive's length is too: the browser
shows a download's progress."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from dicomrelay.ledger.archive import StoredAttributes
from dicomrelay.web import dicom_json, dicomdir
from dicomrelay.web.retrieve import Located, header_of
from dicomrelay.web.zip_stream import StoredZip

DICOMDIR_NAME = "DICOMDIR"


def media_instances(
    located: Located, instances: Sequence[StoredAttributes]
) -> list[tuple[str, dicomdir.MediaInstance]]:
    """Each instance's header read from the store (its bytes before the pixel
    data only), keyed by digest. Runs on a worker thread."""
    out = []
    for a in instances:
        header = dicom_json.header_dataset(header_of(located, a))
        out.append(
            (
                a.digest,
                dicomdir.MediaInstance(
                    sop_class_uid=a.sop_class_uid,
                    sop_uid=a.sop_uid,
                    transfer_syntax=a.transfer_syntax,
                    study_uid=a.study_uid,
                    series_uid=a.series_uid,
                    header=dicomdir.kept(header),
                ),
            )
        )
    return out


def _chunks(located: Located, digest: str) -> Iterator[bytes]:
    # A generator: the instance is opened when the archive reaches it, not before.
    with located.open(digest) as stored:
        yield from stored


def study_zip(located: Located, instances: Sequence[StoredAttributes]) -> StoredZip:
    """The archive, ready to iterate (``len()`` is its size in bytes). Reads
    every instance's header first (for the DICOMDIR), on a worker thread."""
    placed = dicomdir.lay_out(media_instances(located, instances))
    sizes = {a.digest: a.size for a in instances}
    return stored_zip(
        dicomdir.dicomdir(placed),
        [(p.path, sizes[p.key], _chunks(located, p.key)) for p in placed],
    )


def stored_zip(directory: bytes, files: Sequence[tuple[str, int, Iterable[bytes]]]) -> StoredZip:
    """A ZIP of the DICOMDIR and of ``(path, size, chunks)`` files, stored,
    each file's chunks taken only when the archive reaches it."""
    return StoredZip([(DICOMDIR_NAME, len(directory), [directory]), *files])
