"""The load test's synthetic studies: every profile writes valid Part 10 files
(as pydicom, DCMTK and our scanner read them), the mixed profile is the mix the
README describes, and a run without --count stays inside its disk budget."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom import config as pydicom_config

import dicomrelay
from dicomrelay import synth
from dicomrelay.cli.loadtest_command import DEFAULT_COUNTS
from dicomrelay.loadtest import DISK_BUDGET, PROFILE_NAMES
from dicomrelay.loadtest.plan import MIXED_CYCLE, footprint, image_bytes, plan_studies
from dicomrelay.loadtest.run import LoadtestOptions, summarise
from dicomrelay.loadtest.worker import transfer_cpu, usage

DCMDUMP = shutil.which("dcmdump") or "/usr/bin/dcmdump"
SYNTHETIC = [name for name in PROFILE_NAMES if name != "mixed"]
XRAY = {"cr", "dx"}


@pytest.fixture(scope="module", params=SYNTHETIC)
def written(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[Path]]:
    """A profile's name and two instances of it."""
    name: str = request.param
    folder = synth.write_study(tmp_path_factory.mktemp(name), synth.PROFILES[name], 2, seed=7)
    return name, sorted(folder.iterdir())


def test_pydicom_reads_every_element_and_the_pixels(
    written: tuple[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, files = written
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.RAISE)
    profile = synth.PROFILES[name]
    uids = set()
    for path in files:
        ds = pydicom.dcmread(path)
        for element in [*ds.file_meta, *ds.iterall()]:
            assert element.value is not None or element.VM == 0
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == profile.sop_class_uid
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID == synth.EXPLICIT_VR_LE
        assert ds.Modality == profile.modality
        assert ds.SamplesPerPixel == profile.samples_per_pixel
        assert ds.PhotometricInterpretation == profile.photometric
        assert ds.BitsAllocated == ds.BitsStored == profile.bits
        assert ds.HighBit == profile.bits - 1
        pixels = ds.pixel_array
        if profile.samples_per_pixel > 1:
            assert ds.PlanarConfiguration == 0
            assert pixels.shape == (profile.rows, profile.columns, profile.samples_per_pixel)
        else:
            assert "PlanarConfiguration" not in ds
            assert pixels.shape == (profile.rows, profile.columns)
        assert pixels.dtype.itemsize * 8 == profile.bits
        assert len(ds.PixelData) == profile.pixel_bytes
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == 2


@pytest.mark.skipif(not Path(DCMDUMP).exists(), reason="DCMTK is not installed (make deps)")
def test_dcmtk_reads_it_without_a_complaint(written: tuple[str, list[Path]]) -> None:
    name, files = written
    profile = synth.PROFILES[name]
    for path in files:
        # Nothing printed when the file is damaged (the default), no automatic
        # correction (-dc); warnings and errors go to stderr.
        result = subprocess.run(
            [DCMDUMP, "-dc", "+P", "0028,0002", "+P", "0028,0004", str(path)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert f"US {profile.samples_per_pixel}" in result.stdout
        assert re.search(rf"\[{profile.photometric} ?\]", result.stdout), result.stdout
        ftest = subprocess.run([str(Path(DCMDUMP).with_name("dcmftest")), str(path)])
        assert ftest.returncode == 0, "not a Part 10 file, says dcmftest"


def test_our_scanner_reads_it(written: tuple[str, list[Path]]) -> None:
    name, files = written
    profile = synth.PROFILES[name]
    for path in files:
        info = dicomrelay.scan_file(path)
        assert info.sop_class_uid == profile.sop_class_uid
        assert info.modality == profile.modality
        assert (info.rows, info.columns, info.bits_allocated) == (
            profile.rows,
            profile.columns,
            profile.bits,
        )
        assert info.pixel_data_length == profile.pixel_bytes
        assert not info.encapsulated
        assert path.stat().st_size <= image_bytes(name), "the plan's size is a bound"


def test_small_is_16_kib_of_pixels_in_a_real_sop_class() -> None:
    small = synth.PROFILES["small"]
    assert small.pixel_bytes == 16 * 1024
    assert small.sop_class_uid == synth.SECONDARY_CAPTURE_IMAGE_STORAGE


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_a_default_run_fits_the_budget(profile: str) -> None:
    plan = plan_studies(profile, None, 500)
    assert plan
    assert footprint(plan) <= DISK_BUDGET
    assert all(0 < study.images <= 500 for study in plan)


def test_the_help_says_the_default_counts() -> None:
    said = {
        name: int(count.replace(",", ""))
        for count, name in re.findall(r"(\d[\d,]*) (\w+)", DEFAULT_COUNTS)
    }
    assert set(said) == set(PROFILE_NAMES)
    for name in PROFILE_NAMES:
        assert said[name] == sum(s.images for s in plan_studies(name, None, 500)), name


def test_mixed_is_an_exchanges_mix_of_studies() -> None:
    studies = Counter(s.profile for s in MIXED_CYCLE)
    assert set(studies) == {"cr", "dx", "ct", "mr", "us", "small"}
    xray = sum(n for name, n in studies.items() if name in XRAY)
    assert all(xray > n for name, n in studies.items() if name not in XRAY)
    typical = {s.profile: s.images for s in MIXED_CYCLE}
    assert typical == {"cr": 2, "dx": 2, "ct": 300, "mr": 200, "us": 40, "small": 20}


def test_mixed_studies_are_capped_by_the_study_size() -> None:
    plan = plan_studies("mixed", 1_000, 50)
    assert sum(s.images for s in plan) == 1_000
    assert max(s.images for s in plan) == 50
    assert [s.profile for s in plan[:5]] == ["cr", "ct", "dx", "us", "small"]
    assert [s.images for s in plan[:5]] == [2, 50, 2, 40, 20]


def test_cpu_is_split_into_user_and_system() -> None:
    before = usage()
    sum(i * i for i in range(200_000))
    after = usage()
    assert after["cpu_seconds"] == pytest.approx(
        after["user_cpu_seconds"] + after["system_cpu_seconds"]
    )
    spent = transfer_cpu(before, after)
    assert spent["transfer_user_cpu_seconds"] > 0
    assert spent["transfer_system_cpu_seconds"] >= 0
    side = {
        **after,
        "transfer_user_cpu_seconds": 0.5,
        "transfer_system_cpu_seconds": 0.25,
    }
    sender = {
        **side,
        "seconds": 2.0,
        "images": 1000,
        "failed": 0,
        "retries": 0,
        "bytes": 1,
        "latencies": [],
    }
    summary = summarise(sender, side, LoadtestOptions())
    for who in ("sender", "receiver"):
        assert summary[f"{who}_user_cpu_ms_per_image"] == 0.5
        assert summary[f"{who}_system_cpu_ms_per_image"] == 0.25
        assert summary[f"{who}_cpu_seconds"] == round(after["cpu_seconds"], 2)
