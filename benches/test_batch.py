"""A 1,000-slice series, scanned as the engine takes in a study."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
from pytest_benchmark.fixture import BenchmarkFixture

import dicomrelay
from benches.synth import STUDY_SIZE

GROUP = "batch-1000"


def _batch_group(benchmark: BenchmarkFixture, paths: list[Path]) -> None:
    benchmark.group = GROUP
    benchmark.extra_info["files"] = len(paths)
    benchmark.extra_info["bytes"] = sum(p.stat().st_size for p in paths)


def test_scan_many(benchmark: BenchmarkFixture, study_paths: list[Path]) -> None:
    _batch_group(benchmark, study_paths)
    infos = benchmark(dicomrelay.scan_many, study_paths)
    uids = {i.sop_instance_uid for i in infos if isinstance(i, dicomrelay.InstanceInfo)}
    assert len(uids) == STUDY_SIZE


def test_scan_many_sha256(benchmark: BenchmarkFixture, study_paths: list[Path]) -> None:
    _batch_group(benchmark, study_paths)
    infos = benchmark(dicomrelay.scan_many, study_paths, digest="sha256")
    assert all(isinstance(i, dicomrelay.InstanceInfo) and i.digest for i in infos)


def _hashlib_loop(paths: list[Path]) -> int:
    return sum(hashlib.sha256(p.read_bytes()).digest()[0] for p in paths)


def test_hashlib_loop(benchmark: BenchmarkFixture, study_paths: list[Path]) -> None:
    """The digest peer: what a Python caller does to digest every file."""
    _batch_group(benchmark, study_paths)
    # pedantic() is unannotated in pytest-benchmark.
    benchmark.pedantic(  # type: ignore[no-untyped-call]
        _hashlib_loop, args=(study_paths,), rounds=3, warmup_rounds=1
    )


def _pydicom_loop(paths: list[Path]) -> int:
    rows = 0
    for path in paths:
        rows += pydicom.dcmread(path, stop_before_pixels=True).Rows
    return rows


def test_pydicom_loop(benchmark: BenchmarkFixture, study_paths: list[Path]) -> None:
    _batch_group(benchmark, study_paths)
    # About half a second a round: a few rounds say enough, and keep CI short.
    rows = benchmark.pedantic(  # type: ignore[no-untyped-call]
        _pydicom_loop, args=(study_paths,), rounds=3, warmup_rounds=1
    )
    assert rows == 512 * STUDY_SIZE
