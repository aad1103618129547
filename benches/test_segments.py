"""Storing received instances durably, 64 a round, 16 KB and 513 KB each: the
segment store (records appended into a preallocated segment file with direct
I/O, one fdatasync per round) beside one file per instance (the
DurableWriter: direct I/O on writer threads, one syncfs per round, a rename
and a directory fsync per folder), in the same run, on the same payloads."""

from __future__ import annotations

import hashlib
import itertools
import random
import select
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from dicomrelay._native import DurableWriter, Payload, SegmentStore

ROUND = 64
SIZES = {"16KB": 16 * 1024, "513KB": 513 * 1024}
ROUNDS = 12


@dataclass(frozen=True)
class Instances:
    label: str
    payloads: list[Payload]
    digests: list[str]


@pytest.fixture(scope="module", params=list(SIZES))
def instances(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Instances:
    """A round of distinct instances as the receiver holds them: page-aligned
    native buffers (read back from a scratch store, which makes them so)."""
    size = SIZES[request.param]
    rng = random.Random(size)
    data = [rng.randbytes(size) for _ in range(ROUND)]
    digests = [hashlib.sha256(d).hexdigest() for d in data]
    with SegmentStore(tmp_path_factory.mktemp("scratch"), durable_end=None) as scratch:
        locations = scratch.append_many(zip(data, digests, strict=True))
        scratch.commit()
        payloads = [scratch.read(loc, d) for loc, d in zip(locations, digests, strict=True)]
    return Instances(request.param, payloads, digests)


def _group(benchmark: BenchmarkFixture, instances: Instances) -> None:
    benchmark.group = f"store-{instances.label}"
    # files/s in the ratio report: instances made durable per second.
    benchmark.extra_info["files"] = ROUND
    benchmark.extra_info["bytes"] = sum(len(p) for p in instances.payloads)


@pytest.fixture
def segments(tmp_path: Path) -> Iterator[SegmentStore]:
    with SegmentStore(tmp_path / "segments", durable_end=None) as store:
        yield store


def test_append_segments(
    benchmark: BenchmarkFixture, instances: Instances, segments: SegmentStore
) -> None:
    _group(benchmark, instances)
    records = list(zip(instances.payloads, instances.digests, strict=True))

    def one_round() -> tuple[int, int]:
        segments.append_many(records)
        return segments.commit()

    benchmark.pedantic(  # type: ignore[no-untyped-call]
        one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1
    )
    assert segments.durable_end[1] > 0


def test_append_files(benchmark: BenchmarkFixture, instances: Instances, tmp_path: Path) -> None:
    _group(benchmark, instances)
    root = tmp_path / "store"
    (root / "incoming").mkdir(parents=True)
    writer = DurableWriter(root)
    tokens = itertools.count()

    def one_round() -> None:
        waiting = set()
        for payload, digest in zip(instances.payloads, instances.digests, strict=True):
            token = next(tokens)
            final = root / "blobs" / digest[:2] / f"{digest}.{token}"
            writer.submit(token, payload, root / "incoming" / f"{token}.tmp", final)
            waiting.add(token)
        while waiting:
            select.select([writer.fileno()], [], [], 10)
            for token, error in writer.completed():
                assert error is None, error
                waiting.discard(token)

    try:
        benchmark.pedantic(  # type: ignore[no-untyped-call]
            one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1
        )
    finally:
        writer.close()
