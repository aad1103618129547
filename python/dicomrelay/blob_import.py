"""Instances that releases before the segment store kept as one file each
(``store/blobs/<2 hex digits>/<digest>``), moved into the node's store the
first time it starts: a round at a time, each file checked against the
digest that names it, then removed. A file that matches no digest algorithm
is left where it is, and logged."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import anyio.to_thread

from dicomrelay._native import Hasher
from dicomrelay.config import DigestName
from dicomrelay.instance_store import InstanceStore, Record

log = logging.getLogger("dicomrelay.blob_import")
ROUND = 256
ALGORITHMS: tuple[DigestName, ...] = ("sha256", "blake3")


def algorithm_of(path: Path) -> DigestName | None:
    """The algorithm whose digest of the file's bytes is its name, if any."""
    hashers = {a: Hasher(a) for a in ALGORITHMS}
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            for h in hashers.values():
                h.update(piece)
    return next((a for a, h in hashers.items() if h.hexdigest() == path.name), None)


def _blobs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("??/*") if p.is_file() and len(p.name) == 64)


async def import_blobs(root: Path, store: InstanceStore) -> int:
    """Move the blob files under ``root`` into ``store``; how many moved."""
    if not root.is_dir():
        return 0
    moved = 0
    paths = await anyio.to_thread.run_sync(_blobs, root)
    for start in range(0, len(paths), ROUND):
        batch = paths[start : start + ROUND]
        records = []
        for path in batch:
            algorithm = await anyio.to_thread.run_sync(algorithm_of, path)
            if algorithm is None:
                log.error("%s does not hash to its name: left where it is", path)
                continue
            records.append(Record(path, path.name, algorithm))
        await store.write_round(records, [])
        for record in records:
            assert isinstance(record.data, Path)
            with contextlib.suppress(OSError):
                record.data.unlink()
        moved += len(records)
    if moved:
        log.info("moved %d instance files from %s into the segment store", moved, root)
    return moved
