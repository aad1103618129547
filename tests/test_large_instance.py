"""A single multi-GB instance (whole-slide pathology, a long cine loop) crosses
between two node processes in chunks, with bounded memory on both sides.

Size: DICOMRELAY_LARGE_GB (default 4, decimal: a native pixel data element
holds at most 2**32 - 2 bytes). Memory: each side's peak RSS may grow by
less than 100 MB over the same side's peak in a run with a small study.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from dicomrelay import synth
from dicomrelay.loadtest.run import LoadtestOptions, run_loadtest

SIZE = int(float(os.environ.get("DICOMRELAY_LARGE_GB", "4")) * 1e9) // 2 * 2
GROWTH_LIMIT_MB = 100
RECORD_HEADER = 64  # a segment record's header, before its data (rust/core/src/segment/format.rs)


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
    # One record in the receiver's segment store, its bytes the source's.
    [receiver] = tmp_path.glob("dicomrelay-loadtest-*/receiver")
    with sqlite3.connect(receiver / "ledger.sqlite") as db:
        rows = db.execute("SELECT digest, segment, record_offset, length FROM segment_records")
        [(digest, segment, offset, length)] = rows.fetchall()
    assert digest == expected.hexdigest()
    assert length == path.stat().st_size
    stored = hashlib.sha256()
    with open(receiver / "store" / "segments" / f"{segment:016x}.seg", "rb") as f:
        f.seek(offset + RECORD_HEADER)
        left = length
        while left:
            piece = f.read(min(left, 8 << 20))
            assert piece, "the record runs past its segment"
            stored.update(piece)
            left -= len(piece)
    assert stored.hexdigest() == digest
