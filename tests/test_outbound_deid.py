"""De-identification into a transfer's spool, without sockets: each spooled
instance is byte for byte what ``rewrite_file`` makes of its source (in every
encoding: explicit and implicit little endian, big endian, deflated), read
from anywhere in a larger file (as a record in a segment is), with the pixel
bytes untouched; held instances are kept whole; a failure leaves nothing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from dicomrelay import scan_file, spool
from dicomrelay.deid_files import read_header
from dicomrelay.deidentify import Option, plan_deidentification
from dicomrelay.errors import DicomParseError
from dicomrelay.outbound_deid import (
    SourceInstance,
    Transform,
    open_file_region,
    spool_study,
)
from dicomrelay.rewrite import rewrite_file
from dicomrelay.spool import SPOOL_NAME, Region, locator, parse_locator

KEY = b"the spool tests' project key, 32"
OPTIONS = frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES})
FILES = ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"]


def bundled(name: str) -> Path:
    return Path(str(get_testdata_file(name)))


def source(path: Path) -> SourceInstance:
    return SourceInstance(scan_file(path), os.fspath(path))


def expected(path: Path, out: Path) -> bytes:
    plan = plan_deidentification(read_header(path, OPTIONS), OPTIONS, KEY, allow_burned_in=True)
    rewrite_file(path, out, plan.edits)
    return out.read_bytes()


def spooled_bytes(spool: Path, entries: list[tuple[int, int]]) -> list[bytes]:
    data = spool.read_bytes()
    return [data[o : o + n] for o, n in entries]


def test_a_locator_names_a_place_in_a_spool() -> None:
    name = locator("/var/lib/relay/outbox/t1/spool", 1234)
    assert name == "spool:1234:/var/lib/relay/outbox/t1/spool"
    assert parse_locator(name) == ("/var/lib/relay/outbox/t1/spool", 1234)


def test_spooled_instances_are_what_the_rewriter_makes(tmp_path: Path) -> None:
    paths = [bundled(n) for n in FILES]
    # (image_dfl.dcm is a secondary capture: allowed here, held in the test below.)
    transform = Transform(options=OPTIONS, key=KEY, allow_burned_in=True)
    done = spool_study(
        [source(p) for p in paths],
        open_file_region,
        transform,
        tmp_path / "t1",
        tmp_path / "quarantine",
        digest="sha256",
        chunk_size=4096,
    )
    assert done.held == []
    assert done.spool.path == tmp_path / "t1" / SPOOL_NAME
    outputs = spooled_bytes(done.spool.path, done.spool.entries)
    for n, (path, out, info) in enumerate(zip(paths, outputs, done.infos, strict=True)):
        assert out == expected(path, tmp_path / f"{n}.dcm"), path.name
        assert info.digest == hashlib.sha256(out).hexdigest()
        assert info.chunk_digests[0] == hashlib.sha256(out[:4096]).hexdigest()
        assert info.patient_id != scan_file(path).patient_id


def test_records_inside_a_larger_file_are_read_in_place(tmp_path: Path) -> None:
    """As a segment holds records: each instance at an offset that is not a
    page's, between other bytes; its pixel data copied from there."""
    paths = [bundled(n) for n in FILES[:3]]
    segment = tmp_path / "segment"
    regions: dict[str, tuple[int, int]] = {}
    with open(segment, "wb") as f:
        for path in paths:
            f.write(os.urandom(777))
            data = path.read_bytes()
            regions[os.fspath(path)] = (f.tell(), len(data))
            f.write(data)
        f.write(os.urandom(99))

    def opener(s: SourceInstance) -> Region:
        base, length = regions[s.where]
        return Region(os.open(segment, os.O_RDONLY), base, length)

    done = spool_study(
        [source(p) for p in paths],
        opener,
        Transform(options=OPTIONS, key=KEY),
        tmp_path / "t2",
        tmp_path / "quarantine",
        digest="blake3",
        chunk_size=1 << 20,
    )
    outputs = spooled_bytes(done.spool.path, done.spool.entries)
    for n, (path, out) in enumerate(zip(paths, outputs, strict=True)):
        assert out == expected(path, tmp_path / f"{n}.dcm"), path.name


def test_without_a_transform_instances_are_copied_as_they_are(tmp_path: Path) -> None:
    paths = [bundled(n) for n in FILES]
    done = spool_study(
        [source(p) for p in paths],
        open_file_region,
        None,
        tmp_path / "t3",
        tmp_path / "quarantine",
        digest="sha256",
        chunk_size=1 << 20,
    )
    assert spooled_bytes(done.spool.path, done.spool.entries) == [p.read_bytes() for p in paths]


def test_burned_in_instances_are_held_whole(tmp_path: Path) -> None:
    capture = bundled(
        "image_dfl.dcm"
    )  # a secondary capture without Burned In Annotation (deflated)
    ct = bundled("CT_small.dcm")
    done = spool_study(
        [source(ct), source(capture)],
        open_file_region,
        Transform(options=frozenset(), key=KEY),
        tmp_path / "t4",
        tmp_path / "quarantine",
        digest="sha256",
        chunk_size=1 << 20,
    )
    assert len(done.infos) == 1
    [held] = done.held
    assert held.source.where == os.fspath(capture)
    assert "Secondary Capture Image without Burned In Annotation" in held.reason.reason
    assert held.path.parent == tmp_path / "quarantine"
    assert held.path.read_bytes() == capture.read_bytes()
    assert held.digest == hashlib.sha256(capture.read_bytes()).hexdigest()
    allowed = spool_study(
        [source(capture)],
        open_file_region,
        Transform(options=frozenset(), key=KEY, allow_burned_in=True),
        tmp_path / "t5",
        tmp_path / "quarantine",
        digest="sha256",
        chunk_size=1 << 20,
    )
    assert allowed.held == []
    assert len(allowed.infos) == 1


def test_a_failure_leaves_no_spool_and_no_held_copy(tmp_path: Path) -> None:
    capture = bundled("image_dfl.dcm")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(bundled("CT_small.dcm").read_bytes()[:5000])  # cut in its pixel data
    sources = [source(capture), SourceInstance(scan_file(capture), os.fspath(broken))]
    with pytest.raises(DicomParseError):
        spool_study(
            sources,
            open_file_region,
            Transform(options=frozenset(), key=KEY),
            tmp_path / "t6",
            tmp_path / "quarantine",
            digest="sha256",
            chunk_size=1 << 20,
        )
    assert not (tmp_path / "t6").exists()
    assert list((tmp_path / "quarantine").iterdir()) == []


def test_large_instances_are_read_back_mapped_and_written_back_as_they_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thresholds lowered so that the small files take the paths of large
    ones: read back through a mapping, and written back to disk while the
    next instances are written."""
    monkeypatch.setattr(spool, "READ_WHOLE", 1024)
    monkeypatch.setattr(spool, "WRITEBACK_BYTES", 4096)
    paths = [bundled(n) for n in FILES[:3]] * 3
    done = spool_study(
        [source(p) for p in paths],
        open_file_region,
        Transform(options=OPTIONS, key=KEY),
        tmp_path / "t7",
        tmp_path / "quarantine",
        digest="sha256",
        chunk_size=2048,
    )
    outputs = spooled_bytes(done.spool.path, done.spool.entries)
    for out, info in zip(outputs, done.infos, strict=True):
        assert info.digest == hashlib.sha256(out).hexdigest()
        assert len(info.chunk_digests) == -(-len(out) // 2048)
        assert (
            info.chunk_digests[-1] == hashlib.sha256(out[-(len(out) % 2048 or 2048) :]).hexdigest()
        )
