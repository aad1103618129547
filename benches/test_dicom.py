"""DICOM networking, the same 1,000-slice CT study in the same run:
DCMTK storescu into our storescp against into DCMTK storescp, and our storescu
into DCMTK storescp against DCMTK's own storescu. Images/s of each, and the
ratios, go to build-artifacts/dicom-ratios.json."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benches.peers import DCMTK, ENV, free_port, listening, settle_disk
from dicomrelay.dicom.received_log import RECEIVED_LOG

REPORT = Path("build-artifacts/dicom-ratios.json")
RESULTS: dict[str, float] = {}

pytestmark = pytest.mark.skipif(
    not (DCMTK / "storescp").exists(), reason="DCMTK is not installed (make deps)"
)


@pytest.fixture(params=["dcmtk-storescp", "dicomrelay-storescp"])
def scp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, int, Path]]:
    port, out = free_port(), tmp_path / "out"
    out.mkdir()
    if request.param == "dcmtk-storescp":
        command = [str(DCMTK / "storescp"), "-od", str(out), "-aet", "SCP", str(port)]
    else:
        command = [sys.executable, "-m", "dicomrelay", "storescp", str(port), "-od", str(out)]
        command += ["-aet", "SCP", "--host", "127.0.0.1"]
    with listening(command, port):
        yield request.param, port, out


@pytest.mark.parametrize("scu", ["dcmtk-storescu", "dicomrelay-storescu"])
def test_store_1000(benchmark: Any, study_paths: list[Path], scp: Any, scu: str) -> None:
    name, port, out = scp
    if scu == "dicomrelay-storescu" and name == "dicomrelay-storescp":
        pytest.skip("the pairs compared are each side against DCMTK")
    files = [str(p) for p in study_paths]
    if scu == "dcmtk-storescu":
        command = [str(DCMTK / "storescu"), "-aec", "SCP", "127.0.0.1", str(port), *files]
    else:
        command = [sys.executable, "-m", "dicomrelay", "storescu", "127.0.0.1", str(port)]
        command += [*files, "-aec", "SCP"]

    def send() -> float:
        # The files of the last round go; the folder stays (the server holds it).
        for stored in out.iterdir():
            if stored.is_file():
                stored.unlink()
        settle_disk()
        t0 = time.perf_counter()
        subprocess.run(command, env=ENV, check=True, capture_output=True)
        return time.perf_counter() - t0

    benchmark.group = "dicom-1000"
    seconds = min(benchmark.pedantic(send, rounds=2, iterations=1), send())
    stored = [p for p in out.iterdir() if p.is_file() and p.name != RECEIVED_LOG]
    assert len(stored) == len(files)
    rate = len(files) / seconds
    RESULTS[f"{scu} -> {name}"] = rate
    benchmark.extra_info["images_per_second"] = round(rate, 1)


def test_report_dicom_ratios() -> None:
    base = RESULTS.get("dcmtk-storescu -> dcmtk-storescp")
    if base is None:
        pytest.skip("DCMTK was not measured in this run")
    ratios = {
        "storescu -> dicomrelay storescp, vs DCMTK storescp": RESULTS.get(
            "dcmtk-storescu -> dicomrelay-storescp", 0.0
        )
        / base,
        "dicomrelay storescu -> storescp, vs DCMTK storescu": RESULTS.get(
            "dicomrelay-storescu -> dcmtk-storescp", 0.0
        )
        / base,
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps({"images_per_second": RESULTS, "ratios": ratios}, indent=2))
    for label, ratio in ratios.items():
        print(f"{label}: {ratio:.2f}x")
