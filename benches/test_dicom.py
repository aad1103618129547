"""DICOM networking, the same 1,000-slice CT study in the same run:
DCMTK storescu into our storescp and into a node's SCP (which stores into the
node's segment store) against into DCMTK storescp, and our storescu into
DCMTK storescp against DCMTK's own storescu. Images/s of each (the median
of its interleaved rounds), the ratios, and CPU per image and side (user and
system apart) go to build-artifacts/dicom-ratios.json and to the end of the
session's output."""

from __future__ import annotations

import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from benches import races
from benches.peers import DCMTK, free_port, listening, rounds, run_client, settle_disk
from dicomrelay import pki
from dicomrelay.dicom.received_log import RECEIVED_LOG

CPU_COVERS = {
    "sender": "storescu's whole process, its start-up included (the Python"
    " interpreter's and imports for dicomrelay's, milliseconds for DCMTK's)",
    "receiver": "storescp's process from listening to storescu's end",
}

pytestmark = pytest.mark.skipif(
    not (DCMTK / "storescp").exists(), reason="DCMTK is not installed (make deps)"
)


# Each pair races DCMTK's own pair, round by round (see peers.rounds): rounds of
# one contender never run back to back, so whatever drifts during the session
# (here the disk slows as it fills with rounds' files) falls on every contender alike.
PAIRS = [
    ("dcmtk-storescp", "dcmtk-storescu"),
    ("dicomrelay-storescp", "dcmtk-storescu"),
    ("dicomrelay-storescp-blake3", "dcmtk-storescu"),
    ("dicomrelay-node", "dcmtk-storescu"),
    ("dcmtk-storescp", "dicomrelay-storescu"),
]
ROUNDS = 3


def node_config(port: int, out: Path) -> Path:
    """A node whose SCP "SCP" takes storescu's associations, its data in ``out``
    (its mTLS identity is needed to start, not used: it has no peer to reach)."""
    ca = pki.make_ca(out / "pki")
    me = pki.issue_org(ca.parent, "RX1", out / "pki")
    config = out / "node.toml"
    config.write_text(
        f'[node]\norg = "RX1"\ndata_dir = "{out / "data"}"\n\n'
        f'[tls]\ncert = "{me.cert}"\nkey = "{me.key}"\nca = "{ca}"\n\n'
        f'[dicom]\nae_title = "SCP"\nlisten_port = {port}\n'
        'allowed_calling = ["STORESCU"]\n'
    )
    return config


def node_stored(out: Path) -> int:
    """The instances a node's ledger locates in its store."""
    with sqlite3.connect(out / "data" / "ledger.sqlite") as db:
        [(count,)] = db.execute("SELECT count(*) FROM segment_records").fetchall()
    return int(count)


def scp_command(name: str, port: int, out: Path) -> list[str]:
    if name == "dicomrelay-node":
        config = node_config(port, out)
        return [sys.executable, "-m", "dicomrelay", "serve", "--config", str(config)]
    if name == "dcmtk-storescp":
        return [str(DCMTK / "storescp"), "-od", str(out), "-aet", "SCP", str(port)]
    command = [sys.executable, "-m", "dicomrelay", "storescp", str(port), "-od", str(out)]
    digest = "blake3" if name.endswith("-blake3") else "sha256"
    return [*command, "-aet", "SCP", "--host", "127.0.0.1", "--digest", digest]


def scu_command(name: str, port: int, files: list[str]) -> list[str]:
    if name == "dcmtk-storescu":
        return [str(DCMTK / "storescu"), "-aec", "SCP", "127.0.0.1", str(port), *files]
    command = [sys.executable, "-m", "dicomrelay", "storescu", "127.0.0.1", str(port)]
    return [*command, *files, "-aec", "SCP"]


@pytest.mark.parametrize(
    ("round_", "scp", "scu"),
    [(n, scp, scu) for n, (scp, scu) in rounds(PAIRS, ROUNDS)],
    ids=[f"{scu}->{scp}-round{n}" for n, (scp, scu) in rounds(PAIRS, ROUNDS)],
)
def test_store_1000(
    benchmark: Any, study_paths: list[Path], tmp_path: Path, round_: int, scp: str, scu: str
) -> None:
    port, out = free_port(), tmp_path / "out"
    out.mkdir()
    files = [str(p) for p in study_paths]
    race = races.race(
        report="dicom",
        name="dicom-1000",
        baseline="dcmtk-storescu -> dcmtk-storescp",
        describe="1,000 CT slices of 514 KB by C-STORE, one association",
        cpu_notes=CPU_COVERS,
    )

    benchmark.group = "dicom-1000"
    with listening(scp_command(scp, port, out), port) as server:
        settle_disk()
        before = server.cpu()
        seconds, client = benchmark.pedantic(
            run_client, args=(scu_command(scu, port, files),), rounds=1, iterations=1
        )
        receiver = server.cpu() - before
    if scp == "dicomrelay-node":
        assert node_stored(out) == len(files)
    else:
        stored = [p for p in out.iterdir() if p.is_file() and p.name != RECEIVED_LOG]
        assert len(stored) == len(files)
    shutil.rmtree(out)  # the next round (another contender's) pays for the deletion
    measured = races.Round(
        images=len(files),
        seconds=seconds,
        cpu_ms_per_image={
            "sender": client.per_image_ms(len(files)),
            "receiver": receiver.per_image_ms(len(files)),
        },
    )
    race.record(f"{scu} -> {scp}", measured)
    benchmark.extra_info.update(
        images_per_second=round(measured.images_per_second, 1),
        cpu_ms_per_image=dict(measured.cpu_ms_per_image),
    )
