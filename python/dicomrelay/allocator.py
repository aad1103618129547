"""Keep freed heap memory for reuse, in dicomrelay's own processes.

Each image passes through buffers of hundreds of kilobytes. With glibc's
defaults, freeing one at the top of the heap gives the memory back to the
kernel and the next image faults it in again, page by page: about a tenth of
a storage SCP's CPU. Raising the trim and mmap thresholds keeps those pages
mapped (peak RSS stays where it is). Only the command-line entry points call
this: a library must not retune its host's allocator.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 256 << 20  # free memory kept at the top of the heap
MMAP_THRESHOLD = 64 << 20  # blocks below this come from the heap, not mmap


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        # The process's own symbols, libc's among them: find_library would
        # spawn ldconfig, a tenth of a CLI command's start-up.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False  # musl and others have no mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
