"""End to end: the same 1,000-slice CT study through dicomrelay (two processes,
mutual TLS, SHA-256 verified, durable commit) and through DCMTK storescu ->
storescp (no encryption, no verification, no fsync), in the same run.

Each contender's images/s comes from its own transfer time: dicomrelay's
loadtest reports the time from the first send to the last signed receipt;
DCMTK's is storescu's wall time (its process start included, which costs it a
few milliseconds). The ratios go to build-artifacts/transfer-ratios.json.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benches.peers import DCMTK, ENV, free_port, listening, settle_disk
from dicomrelay.loadtest.run import LoadtestOptions, run_loadtest

RESULTS: dict[str, float] = {}
REPORT = Path("build-artifacts/transfer-ratios.json")

pytestmark = pytest.mark.skipif(
    not (DCMTK / "storescp").exists(), reason="DCMTK is not installed (make deps)"
)


@pytest.fixture(scope="module")
def study_dir(study_paths: list[Path]) -> Path:
    return study_paths[0].parent


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK's storescp, writing files."""
    port, out = free_port(), tmp_path / "storescp"
    out.mkdir()
    with listening([str(DCMTK / "storescp"), "-od", str(out), "-aet", "STORESCP", str(port)], port):
        yield port, out


def record(name: str, images: int, seconds: float, extra: dict[str, Any]) -> None:
    rate = images / seconds
    RESULTS[name] = max(RESULTS.get(name, 0.0), rate)
    extra.update(images=images, seconds=round(seconds, 3), images_per_second=round(rate, 1))


def test_dcmtk_storescu_storescp(
    benchmark: Any, study_dir: Path, storescp: tuple[int, Path]
) -> None:
    port, out = storescp
    files = sorted(str(p) for p in study_dir.iterdir())
    command = [str(DCMTK / "storescu"), "-aec", "STORESCP", "127.0.0.1", str(port), *files]

    times: list[float] = []

    def send() -> float:
        shutil.rmtree(out)
        out.mkdir()
        settle_disk()
        t0 = time.perf_counter()
        subprocess.run(command, env=ENV, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
        return times[-1]

    benchmark.group = "transfer-1000"
    benchmark.pedantic(send, rounds=2, iterations=1)
    seconds = min(times)  # the same statistic as for dicomrelay below
    assert len(list(out.iterdir())) == len(files)
    record("dcmtk", len(files), seconds, benchmark.extra_info)


@pytest.mark.parametrize(
    ("name", "digest", "plaintext"),
    [
        ("dicomrelay", "sha256", False),
        ("dicomrelay-blake3", "blake3", False),
        ("dicomrelay-plaintext", "sha256", True),
    ],
)
def test_dicomrelay_transfer(
    benchmark: Any, study_dir: Path, name: str, digest: str, plaintext: bool, tmp_path: Path
) -> None:
    options = LoadtestOptions(
        source=study_dir,
        digest="blake3" if digest == "blake3" else "sha256",
        plaintext=plaintext,
        workdir=tmp_path,
    )
    summaries: list[dict[str, Any]] = []

    def send() -> float:
        settle_disk()
        summary = run_loadtest(options)
        summaries.append(summary)
        seconds: float = summary["seconds"]
        return seconds

    benchmark.group = "transfer-1000"
    benchmark.pedantic(send, rounds=2, iterations=1)
    best = min(summaries, key=lambda s: s["seconds"])
    assert best["failed"] == 0
    assert best["images"] == best["expected_images"]
    record(name, best["images"], best["seconds"], benchmark.extra_info)
    benchmark.extra_info["p99_latency_ms"] = best["p99_latency_ms"]
    benchmark.extra_info["receiver_peak_rss_mb"] = best["receiver_peak_rss_mb"]
    benchmark.extra_info["sender_peak_rss_mb"] = best["sender_peak_rss_mb"]


def test_report_transfer_ratios() -> None:
    """Images/s of each dicomrelay mode over DCMTK's, from this run."""
    if "dcmtk" not in RESULTS:
        pytest.skip("DCMTK was not measured in this run")
    ratios = {
        name: round(rate / RESULTS["dcmtk"], 3) for name, rate in RESULTS.items() if name != "dcmtk"
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps({"images_per_second": RESULTS, "vs_dcmtk": ratios}, indent=2))
    for name, ratio in ratios.items():
        print(f"{name}: {RESULTS[name]:.0f} images/s = {ratio:.2f}x DCMTK ({RESULTS['dcmtk']:.0f})")
