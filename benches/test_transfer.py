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
from pathlib import Path
from typing import Any

import pytest

from benches.peers import DCMTK, ENV, free_port, listening, rounds, settle_disk
from dicomrelay.loadtest.run import LoadtestOptions, run_loadtest

RESULTS: dict[str, float] = {}
REPORT = Path("build-artifacts/transfer-ratios.json")

pytestmark = pytest.mark.skipif(
    not (DCMTK / "storescp").exists(), reason="DCMTK is not installed (make deps)"
)


@pytest.fixture(scope="module")
def study_dir(study_paths: list[Path]) -> Path:
    return study_paths[0].parent


def record(name: str, images: int, seconds: float, extra: dict[str, Any]) -> None:
    rate = images / seconds
    RESULTS[name] = max(RESULTS.get(name, 0.0), rate)  # the best round, as for the min time
    extra.update(images=images, seconds=round(seconds, 3), images_per_second=round(rate, 1))


# name -> (digest, plaintext) for dicomrelay; "dcmtk" is storescu -> storescp.
CONTENDERS: dict[str, tuple[str, bool]] = {
    "dcmtk": ("", False),
    "dicomrelay": ("sha256", False),
    "dicomrelay-blake3": ("blake3", False),
    "dicomrelay-plaintext": ("sha256", True),
}
# Round by round, every contender in turn (see peers.rounds): rounds of one
# contender never run back to back, so whatever drifts during the session
# (here the disk slows as it fills with rounds' files) falls on every contender alike.
ROUNDS = 3


@pytest.mark.parametrize(
    ("round_", "name"),
    rounds(list(CONTENDERS), ROUNDS),
    ids=[f"{name}-round{n}" for n, name in rounds(list(CONTENDERS), ROUNDS)],
)
def test_transfer_1000(
    benchmark: Any, study_dir: Path, tmp_path: Path, round_: int, name: str
) -> None:
    benchmark.group = "transfer-1000"
    if name == "dcmtk":
        # storescu -> storescp: no encryption, no verification, no fsync.
        port, out = free_port(), tmp_path / "storescp"
        out.mkdir()
        files = sorted(str(p) for p in study_dir.iterdir())
        command = [str(DCMTK / "storescu"), "-aec", "STORESCP", "127.0.0.1", str(port), *files]

        def storescu() -> float:
            settle_disk()
            t0 = time.perf_counter()
            subprocess.run(command, env=ENV, check=True, capture_output=True)
            return time.perf_counter() - t0

        server = [str(DCMTK / "storescp"), "-od", str(out), "-aet", "STORESCP", str(port)]
        with listening(server, port):
            seconds = benchmark.pedantic(storescu, rounds=1, iterations=1)
        assert len(list(out.iterdir())) == len(files)
        shutil.rmtree(out)  # the next round (another contender's) pays for the deletion
        record(name, len(files), seconds, benchmark.extra_info)
        return
    digest, plaintext = CONTENDERS[name]
    options = LoadtestOptions(
        source=study_dir,
        digest="blake3" if digest == "blake3" else "sha256",
        plaintext=plaintext,
        workdir=tmp_path,
    )

    def send() -> dict[str, Any]:
        settle_disk()
        return run_loadtest(options)

    summary = benchmark.pedantic(send, rounds=1, iterations=1)
    assert summary["failed"] == 0
    assert summary["images"] == summary["expected_images"]
    # dicomrelay's time is the loadtest's own: first send to last signed receipt.
    record(name, summary["images"], summary["seconds"], benchmark.extra_info)
    for key in ("p99_latency_ms", "receiver_peak_rss_mb", "sender_peak_rss_mb"):
        benchmark.extra_info[key] = summary[key]


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
