"""What ``Node.send`` accepts as a study, turned into the files it sends."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
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
            return sorted(_files_under(os.path.abspath(root)))
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


def _files_under(folder: str) -> Iterator[str]:
    """Every regular file under ``folder``, recursively (symbolic links
    followed, as to a file; a directory entry's type saves a stat per file)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from _files_under(entry.path)
            elif entry.is_file():
                yield entry.path
