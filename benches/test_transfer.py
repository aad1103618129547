"""End to end, the same files through dicomrelay (two processes, mutual TLS,
SHA-256 verified, durable commit) and through DCMTK storescu -> storescp (no
encryption, no verification, no fsync), in the same run, rounds interleaved:

- ct: a 1,000-slice CT study (514 KB a slice);
- small: 5,000 small objects (16 KiB secondary captures, about 17 KB a file),
  in 10 studies of 500.

Each contender's images/s comes from its own transfer time: dicomrelay's
loadtest reports the time from the first send to the last signed receipt;
DCMTK's is storescu's wall time (its process start included, which costs it a
few milliseconds). CPU per image and side, user and system apart: dicomrelay's
workers measure their own during the transfer; DCMTK's storescu is measured
whole (it starts in milliseconds), its storescp from ready to storescu's end.
The medians of the rounds, and their ratios, go to
build-artifacts/transfer-ratios.json and to the end of the session's output.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from benches import races
from benches.peers import DCMTK, free_port, listening, rounds, run_client, settle_disk
from dicomrelay.loadtest.run import LoadtestOptions, run_loadtest

pytestmark = pytest.mark.skipif(
    not (DCMTK / "storescp").exists(), reason="DCMTK is not installed (make deps)"
)

CPU_COVERS = {
    "dicomrelay": "each side's own process from the first send to the last receipt"
    " (sender) or from listening to the end (receiver); start-up excluded",
    "dcmtk": "storescu's whole process (start-up included); storescp from listening to"
    " storescu's end",
}


@pytest.fixture(scope="module")
def study_dir(study_paths: list[Path]) -> Path:
    return study_paths[0].parent


def transfer_race(name: str, what: str) -> races.Race:
    return races.race(
        report="transfer", name=name, baseline="dcmtk", describe=what, cpu_notes=CPU_COVERS
    )


def run_dcmtk(benchmark: Any, files: list[str], out: Path) -> races.Round:
    """storescu -> storescp: no encryption, no verification, no fsync. The
    benchmark times storescu alone."""
    port = free_port()
    out.mkdir()
    command = [str(DCMTK / "storescu"), "-aec", "STORESCP", "127.0.0.1", str(port), *files]
    server = [str(DCMTK / "storescp"), "-od", str(out), "-aet", "STORESCP", str(port)]
    with listening(server, port) as scp:
        settle_disk()
        before = scp.cpu()
        seconds, client = benchmark.pedantic(run_client, args=(command,), rounds=1, iterations=1)
        receiver = scp.cpu() - before
    assert len(list(out.iterdir())) == len(files)
    shutil.rmtree(out)  # the next round (another contender's) pays for the deletion
    images = len(files)
    return races.Round(
        images=images,
        seconds=seconds,
        cpu_ms_per_image={
            "sender": client.per_image_ms(images),
            "receiver": receiver.per_image_ms(images),
        },
    )


def run_dicomrelay(
    benchmark: Any, source: Path, workdir: Path, digest: str, plaintext: bool
) -> races.Round:
    """A loadtest of the files under ``source``; the benchmark times all of it
    (the nodes' start included), the round the transfer alone."""
    options = LoadtestOptions(
        source=source,
        digest="blake3" if digest == "blake3" else "sha256",
        plaintext=plaintext,
        workdir=workdir,
    )

    def send() -> dict[str, Any]:
        settle_disk()
        return run_loadtest(options)

    summary: dict[str, Any] = benchmark.pedantic(send, rounds=1, iterations=1)
    assert summary["failed"] == 0
    assert summary["images"] == summary["expected_images"]
    # dicomrelay's time is the loadtest's own: first send to last signed receipt.
    return races.Round(
        images=summary["images"],
        seconds=summary["seconds"],
        cpu_ms_per_image={
            side: {kind: summary[f"{side}_{kind}_cpu_ms_per_image"] for kind in races.KINDS}
            for side in races.SIDES
        },
    )


def note(benchmark: Any, measured: races.Round) -> None:
    benchmark.extra_info.update(
        images=measured.images,
        seconds=round(measured.seconds, 3),
        images_per_second=round(measured.images_per_second, 1),
        cpu_ms_per_image=dict(measured.cpu_ms_per_image),
    )


# name -> (digest, plaintext) for dicomrelay; "dcmtk" is storescu -> storescp.
CONTENDERS: dict[str, tuple[str, bool]] = {
    "dcmtk": ("", False),
    "dicomrelay": ("sha256", False),
    "dicomrelay-blake3": ("blake3", False),
    "dicomrelay-plaintext": ("sha256", True),
}
# Round by round, every contender in turn (see peers.rounds): rounds of one
# contender never run back to back, so whatever drifts during the session
# (here the disk slows as it fills with rounds' files) falls on every contender
# alike. The report gives each contender's median round.
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
    race = transfer_race("ct-1000", "1,000 CT slices of 514 KB, one study")
    if name == "dcmtk":
        files = sorted(str(p) for p in study_dir.iterdir())
        measured = run_dcmtk(benchmark, files, tmp_path / "storescp")
    else:
        digest, plaintext = CONTENDERS[name]
        measured = run_dicomrelay(benchmark, study_dir, tmp_path, digest, plaintext)
    race.record(name, measured)
    note(benchmark, measured)


SMALL_CONTENDERS = ("dcmtk", "dicomrelay")


@pytest.mark.parametrize(
    ("round_", "name"),
    rounds(SMALL_CONTENDERS, ROUNDS),
    ids=[f"{name}-round{n}" for n, name in rounds(SMALL_CONTENDERS, ROUNDS)],
)
def test_transfer_small_5000(
    benchmark: Any, small_dir: Path, tmp_path: Path, round_: int, name: str
) -> None:
    benchmark.group = "transfer-small-5000"
    race = transfer_race(
        "small-5000", "5,000 small objects (16 KiB secondary captures), 10 studies of 500"
    )
    if name == "dcmtk":
        files = sorted(str(p) for p in small_dir.rglob("*.dcm"))
        measured = run_dcmtk(benchmark, files, tmp_path / "storescp")
    else:
        measured = run_dicomrelay(benchmark, small_dir, tmp_path, "sha256", False)
    race.record(name, measured)
    note(benchmark, measured)
