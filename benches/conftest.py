"""Benchmark inputs (synthesised once per session) and the ratio report."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benches import races, ratios, synth
from benches.synth import Payload
from dicomrelay import synth as dicomrelay_synth

# The small-object transfer: 16 KiB secondary captures, studies of the loadtest's
# default size (500), 5,000 in all.
SMALL_STUDIES, SMALL_STUDY_SIZE = 10, 500


@pytest.fixture(scope="session")
def ct_slice() -> bytes:
    """One 512x512 16-bit CT slice, explicit VR little endian (about 514 KB)."""
    return synth.encode(synth.ct_dataset())


@pytest.fixture(scope="session")
def ct_path(ct_slice: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slice") / "CT000000.dcm"
    path.write_bytes(ct_slice)
    return path


@pytest.fixture(scope="session")
def ct_multiframe_64mib() -> bytes:
    """128 frames of the slice: a 64 MiB object, large enough to measure GB/s."""
    return synth.encode(synth.ct_dataset(frames=128))


@pytest.fixture(scope="session")
def ct_multiframe_16mib() -> bytes:
    """32 frames: 16 chunks of 1 MiB (plus the header's tail in a 17th)."""
    return synth.encode(synth.ct_dataset(frames=32))


@pytest.fixture(scope="session")
def study_paths(ct_slice: bytes, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A 1,000-slice series in one folder, each slice with its own SOP Instance UID."""
    return synth.write_study(ct_slice, tmp_path_factory.mktemp("study"), synth.STUDY_SIZE)


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5,000 small objects (16 KiB of pixels, about 17 KB a file) in 10 studies
    of 500, one folder each: the same files for every contender."""
    root = tmp_path_factory.mktemp("small")
    for n in range(SMALL_STUDIES):
        dicomrelay_synth.write_study(
            root / f"study-{n:02d}", dicomrelay_synth.PROFILES["small"], SMALL_STUDY_SIZE, seed=n
        )
    return root


@pytest.fixture(scope="session")
def ct_instance() -> bytes:
    """One synthetic CT instance of the loadtest's profile (patient SYN00000001)."""
    profile = dicomrelay_synth.PROFILES["ct"]
    return dicomrelay_synth.instance(
        profile,
        study_uid=dicomrelay_synth.new_uid(),
        series_uid=dicomrelay_synth.new_uid(),
        sop_uid=dicomrelay_synth.new_uid(),
        number=1,
        patient_id="SYN00000001",
        pixels=os.urandom(profile.pixel_bytes),
    )


@pytest.fixture(params=["512KB", "64MB"])
def digest_payload(request: pytest.FixtureRequest) -> Payload:
    fixture = {"512KB": "ct_slice", "64MB": "ct_multiframe_64mib"}[request.param]
    return Payload(label=request.param, data=request.getfixturevalue(fixture))


def pytest_configure(config: pytest.Config) -> None:
    # pytest-benchmark writes --benchmark-json without making its folder.
    bench_json: Path | None = config.getoption("benchmark_json", None)
    if bench_json is not None:
        Path(bench_json).parent.mkdir(parents=True, exist_ok=True)


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables
def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    for path, lines in races.write_reports(ratios.report_path(config).parent):
        terminalreporter.write_sep("-", f"whole transfers, dicomrelay and DCMTK -> {path}")
        for line in lines:
            terminalreporter.write_line(line)
    summary = ratios.summarise(config)
    if summary is None:
        return
    lines, document = summary
    path = ratios.report_path(config)
    ratios.write(path, document)
    if not lines:
        return
    terminalreporter.write_sep("-", f"dicomrelay ratios ({ratios.STATISTIC}) -> {path}")
    for line in lines:
        terminalreporter.write_line(line)
