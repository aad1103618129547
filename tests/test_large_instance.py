"""A single multi-GB instance (whole-slide pathology, a long cine loop) crosses
between two node processes in chunks, with bounded memory on both sides.

Size: DICOMRELAY_LARGE_GB (default 4, decimal: a native pixel data element
holds at most 2**32 - 2 bytes). Memory: each side's peak RSS may grow by
less than 100 MB over the same side's peak in a run with a small study.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dicomrelay import synth
from dicomrelay.loadtest.run import LoadtestOptions, run_loadtest

SIZE = int(float(os.environ.get("DICOMRELAY_LARGE_GB", "4")) * 1e9) // 2 * 2
GROWTH_LIMIT_MB = 100


@pytest.mark.timeout(1800)
def test_a_multi_gigabyte_instance_streams_with_bounded_memory(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    synth.write_large_instance(small / "small.dcm", 8 << 20)
    baseline = run_loadtest(LoadtestOptions(source=small, workdir=tmp_path))

    large = tmp_path / "large"
    large.mkdir()
    path = synth.write_large_instance(large / "large.dcm", SIZE)
    expected = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(8 << 20):
            expected.update(piece)
    summary = run_loadtest(LoadtestOptions(source=large, workdir=tmp_path, keep=True))

    assert summary["failed"] == 0
    assert summary["images"] == 1
    for side in ("sender", "receiver"):
        growth = summary[f"{side}_peak_rss_mb"] - baseline[f"{side}_peak_rss_mb"]
        print(f"{side}: peak RSS {summary[f'{side}_peak_rss_mb']} MB, growth {growth:.1f} MB")
        assert growth < GROWTH_LIMIT_MB, f"{side} grew {growth:.0f} MB for {SIZE >> 20} MiB"
    blobs = list(tmp_path.glob("dicomrelay-loadtest-*/receiver/store/blobs/*/*"))
    assert [b.name for b in blobs] == [expected.hexdigest()]
    assert blobs[0].stat().st_size == path.stat().st_size
