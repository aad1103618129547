"""The node's SCP stores what it receives straight from memory into the
segment store: no temporary file is made for an instance, and a node killed
(SIGKILL) in the middle of an association starts again serving only the
instances its ledger recorded, each whole and true to its digest."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from dicomrelay import scan, scan_file, synth
from dicomrelay.node import Node
from peers import free_port, wait_listening

from .chain_helpers import dataset, routing_node, run, storescu_args
from .helpers import Pki, closed_port, corrupt_records, query, read_stored, segment_dir
from .helpers import stored_records as recorded
from .processes import Child, node_toml

pytestmark = pytest.mark.anyio
TIMEOUT = 120


def spare_files(data_dir: Path) -> list[Path]:
    """The SCP's temporary files: made (ahead of need) only for a dataset
    written to a file."""
    incoming = data_dir / "dicom" / "received" / ".incoming"
    return sorted(incoming.iterdir()) if incoming.exists() else []


async def test_the_node_scp_makes_no_file_per_instance(orgs: Pki, tmp_path: Path) -> None:
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 24, seed=71)
    files = sorted(study.glob("*.dcm"))
    config = routing_node(orgs, tmp_path / "a", closed_port(), ())
    with anyio.fail_after(TIMEOUT):
        async with Node(config) as a:
            assert a.dicom_port is not None
            done = await anyio.to_thread.run_sync(
                run, storescu_args(a.dicom_port, files, proposal=None)
            )
            assert done.returncode == 0, done.stderr
            # Not one spare was asked for: the pool makes them on first demand.
            assert spare_files(tmp_path / "a") == []
            sent = {scan_file(p).sop_instance_uid: dataset(p) for p in files}
            records = recorded(tmp_path / "a")
            assert len(records) == len(files)
            for digest in records:
                data = bytes(await a.store.read_instance(digest))
                info = scan(data)
                assert data[info.dataset_offset :] == sent[info.sop_instance_uid]


def dicom_node_toml(orgs: Pki, root: Path, port: int) -> Path:
    config = node_toml(
        root / "node.toml",
        orgs.identity("RX1"),
        data_dir=root / "data",
        peer=("RX2", closed_port()),
        store={"segment_mb": 8},
    )
    with config.open("a") as f:
        f.write(
            f'\n[dicom]\nae_title = "RELAYA"\nlisten_port = {port}\nallowed_calling = ["PACSA"]\n'
        )
    return config


def past_recorded_end(data_dir: Path) -> bytes:
    """The active segment's bytes past the end the ledger recorded."""
    name = (segment_dir(data_dir) / "store-name").read_text().strip()
    [(segment, end)] = query(
        data_dir / "ledger.sqlite",
        "SELECT segment, end_offset FROM segment_ends WHERE store = ?",
        name,
    )
    path = segment_dir(data_dir) / f"{segment:016x}.seg"
    with path.open("rb") as f:
        f.seek(end)
        return f.read()


def test_a_node_killed_mid_association_serves_only_what_it_recorded(
    orgs: Pki, tmp_path: Path
) -> None:
    study = synth.write_study(tmp_path / "study", synth.PROFILES["ct"], 80, seed=72)
    files = sorted(study.glob("*.dcm"))
    sent = {str(scan_file(p).sop_instance_uid): dataset(p) for p in files}
    port = free_port()
    config = dicom_node_toml(orgs, tmp_path, port)
    data_dir = tmp_path / "data"
    node = Child.dicomrelay("serve", "--config", os.fspath(config))
    try:
        wait_listening(port, 60)
        sender = subprocess.Popen(
            storescu_args(port, files, proposal=None),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Killed once some rounds are recorded, with more still arriving.
        deadline = time.monotonic() + 60
        while len(recorded(data_dir)) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert node.kill(), node.output()
        assert sender.wait(60) != 0, "an association with its node killed ended well"
        before = recorded(data_dir)
        assert 5 <= len(before) < len(files)
        node = Child.dicomrelay("serve", "--config", os.fspath(config))
        wait_listening(port, 60)
        # Recovery cut what no round recorded: nothing past the recorded end.
        tail = past_recorded_end(data_dir)
        assert tail.count(0) == len(tail)
        assert corrupt_records(data_dir) == []
        for digest in before:
            data = read_stored(data_dir, digest)
            assert data[scan(data).dataset_offset :] == sent[str(scan(data).sop_instance_uid)]
        # Sent again whole: each instance once (those stored already are not
        # written again).
        again = run(storescu_args(port, files, proposal=None))
        assert again.returncode == 0, again.stderr
        after = recorded(data_dir)
        assert set(before) <= set(after)
        uids = [str(scan(read_stored(data_dir, d)).sop_instance_uid) for d in after]
        assert sorted(uids) == sorted(sent)
        assert spare_files(data_dir) == []
    finally:
        node.stop()
