"""One object at a time: header scans, whole-object digests and chunk plans,
each beside the library a user would otherwise reach for."""

from __future__ import annotations

import hashlib
from io import BytesIO
from pathlib import Path

import blake3
import pydicom
from pytest_benchmark.fixture import BenchmarkFixture

import dicomrelay
from benches.synth import Payload

CHUNK = 1 << 20


def test_scan_bytes(benchmark: BenchmarkFixture, ct_slice: bytes) -> None:
    benchmark.group = "header"
    info = benchmark(dicomrelay.scan, ct_slice)
    assert info.rows == 512


def test_pydicom_bytes(benchmark: BenchmarkFixture, ct_slice: bytes) -> None:
    benchmark.group = "header"
    # BytesIO is made inside the timed call, as a caller holding bytes must.
    ds = benchmark(lambda: pydicom.dcmread(BytesIO(ct_slice), stop_before_pixels=True))
    assert ds.Rows == 512


def test_scan_file(benchmark: BenchmarkFixture, ct_path: Path) -> None:
    benchmark.group = "header"
    info = benchmark(dicomrelay.scan_file, ct_path)
    assert info.rows == 512


def test_pydicom_file(benchmark: BenchmarkFixture, ct_path: Path) -> None:
    benchmark.group = "header"
    ds = benchmark(pydicom.dcmread, ct_path, stop_before_pixels=True)
    assert ds.Rows == 512


def _digest_group(benchmark: BenchmarkFixture, payload: Payload) -> bytes:
    benchmark.group = f"digest-{payload.label}"
    benchmark.extra_info["bytes"] = len(payload.data)
    return payload.data


def test_scan_sha256(benchmark: BenchmarkFixture, digest_payload: Payload) -> None:
    data = _digest_group(benchmark, digest_payload)
    info = benchmark(dicomrelay.scan, data, digest="sha256")
    assert info.digest == hashlib.sha256(data).hexdigest()


def test_hashlib_sha256(benchmark: BenchmarkFixture, digest_payload: Payload) -> None:
    data = _digest_group(benchmark, digest_payload)
    benchmark(lambda: hashlib.sha256(data).digest())


def test_scan_blake3(benchmark: BenchmarkFixture, digest_payload: Payload) -> None:
    data = _digest_group(benchmark, digest_payload)
    info = benchmark(dicomrelay.scan, data, digest="blake3")
    assert info.digest == blake3.blake3(data).hexdigest()


def test_blake3_package(benchmark: BenchmarkFixture, digest_payload: Payload) -> None:
    data = _digest_group(benchmark, digest_payload)
    # One thread (the package's default), like the scanner's hasher.
    benchmark(lambda: blake3.blake3(data).digest())


class TestChunked:
    """A 16 MiB object cut into a 1 MiB chunk plan, against one digest of it whole."""

    def test_scan_sha256_chunked(
        self, benchmark: BenchmarkFixture, ct_multiframe_16mib: bytes
    ) -> None:
        benchmark.group = "chunked"
        benchmark.extra_info["bytes"] = len(ct_multiframe_16mib)
        info = benchmark(dicomrelay.scan, ct_multiframe_16mib, digest="sha256", chunk_size=CHUNK)
        assert len(info.chunk_digests) == -(-len(ct_multiframe_16mib) // CHUNK)

    def test_scan_sha256(self, benchmark: BenchmarkFixture, ct_multiframe_16mib: bytes) -> None:
        benchmark.group = "chunked"
        benchmark.extra_info["bytes"] = len(ct_multiframe_16mib)
        benchmark(dicomrelay.scan, ct_multiframe_16mib, digest="sha256")

    def test_hashlib_sha256(self, benchmark: BenchmarkFixture, ct_multiframe_16mib: bytes) -> None:
        benchmark.group = "chunked"
        benchmark.extra_info["bytes"] = len(ct_multiframe_16mib)
        benchmark(lambda: hashlib.sha256(ct_multiframe_16mib).digest())
