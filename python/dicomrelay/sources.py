"""What ``Node.send`` accepts as a study, turned into the files it sends."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

# A folder (searched recursively), a file, or instances: paths or encoded bytes.
Source = str | os.PathLike[str] | Iterable[str | os.PathLike[str] | bytes]


def materialise(source: Source, outbox: Path) -> list[str]:
    """Absolute paths to send (the ledger keeps them, and a worker in another
    directory may send them). In-memory instances are written and fsynced to
    ``outbox`` first, so that a restart can resume them."""
    if isinstance(source, str | os.PathLike):
        root = Path(source)
        if root.is_dir():
            return sorted(os.path.abspath(p) for p in root.rglob("*") if p.is_file())
        return [os.path.abspath(root)]
    paths: list[str] = []
    for n, item in enumerate(source):
        if isinstance(item, bytes | bytearray | memoryview):
            outbox.mkdir(exist_ok=True)
            path = outbox / f"{n:06d}.dcm"
            with open(path, "wb") as f:
                f.write(item)
                f.flush()
                os.fsync(f.fileno())
            paths.append(os.path.abspath(path))
        else:
            paths.append(os.path.abspath(item))
    return paths
