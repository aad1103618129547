"""dicomrelay: move DICOM studies between organisations, verified end to end.

The hot path is native: :func:`scan` reads a Part 10 file's header and digests
its bytes without copying them.
"""

from __future__ import annotations

from dicomrelay._native import (
    DEFAULT_CHUNK_SIZE,
    InstanceInfo,
    __version__,
    scan,
    scan_file,
    scan_many,
)
from dicomrelay.errors import DicomParseError, DicomrelayError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DicomParseError",
    "DicomrelayError",
    "InstanceInfo",
    "__version__",
    "scan",
    "scan_file",
    "scan_many",
]
