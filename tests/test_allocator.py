"""The allocator tuning our command-line processes apply."""

from __future__ import annotations

import sys

import pytest

from dicomrelay.allocator import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_takes_the_thresholds() -> None:
    assert keep_freed_memory() is True
