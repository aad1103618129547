"""The whole chain of an exchange: DCMTK storescu (a hospital's PACS) -> our SCP
on node A -> the wire -> node B -> our SCU -> DCMTK storescp (the other
hospital's PACS), every dataset intact at the end."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from dicomrelay import scan_file, synth
from dicomrelay.config import DicomConfig, NodeConfig, Pacs, Peer, Route
from dicomrelay.node import Node

from .helpers import Pki, closed_port, node_config

DCMTK = Path("/usr/bin")
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not (DCMTK / "storescp").exists(), reason="DCMTK is not installed"),
]


def delivering_node(
    orgs: Pki, data_dir: Path, pacs_port: int, *, delivery_attempts: int = 5
) -> NodeConfig:
    """RX2, listening, delivering what it commits into the PACS "PACSB"."""
    return dataclasses.replace(
        node_config(
            "RX2",
            data_dir,
            identity=orgs.identity("RX2"),
            peers=(Peer(code="RX1", host="127.0.0.1", port=1),),
            listen_port=0,
        ),
        dicom=DicomConfig(
            ae_title="RELAYB",
            deliver_to=Pacs(ae_title="PACSB", host="127.0.0.1", port=pacs_port),
            delivery_attempts=delivery_attempts,
        ),
    )


def dataset(path: Path) -> bytes:
    return path.read_bytes()[scan_file(path).dataset_offset :]


async def test_dcmtk_to_node_a_to_node_b_to_dcmtk(orgs: Pki, tmp_path: Path) -> None:
    count = 30
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], count)
    pacs_out = tmp_path / "pacs-b"
    pacs_out.mkdir()
    pacs_port = closed_port()
    pacs = subprocess.Popen(
        [str(DCMTK / "storescp"), "-od", str(pacs_out), "-aet", "PACSB", "+B", str(pacs_port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        b_cfg = delivering_node(orgs, tmp_path / "b", pacs_port)
        with anyio.fail_after(120):
            async with Node(b_cfg) as b:
                assert b.port is not None
                a_cfg = dataclasses.replace(
                    node_config(
                        "RX1",
                        tmp_path / "a",
                        identity=orgs.identity("RX1"),
                        peers=(Peer(code="RX2", host="127.0.0.1", port=b.port),),
                    ),
                    dicom=DicomConfig(
                        ae_title="RELAYA",
                        listen_port=0,
                        allowed_calling=("PACSA",),
                        routes=(Route(to="RX2", modality="MR"),),
                    ),
                )
                async with Node(a_cfg) as a:
                    assert a.dicom_port is not None
                    storescu = [str(DCMTK / "storescu"), "-aet", "PACSA", "-aec", "RELAYA"]
                    storescu += ["127.0.0.1", str(a.dicom_port), "+sd", str(study)]
                    sent = await anyio.to_thread.run_sync(
                        lambda: subprocess.run(
                            storescu,
                            env={**os.environ, "TCP_NODELAY": "1"},
                            capture_output=True,
                            text=True,
                        )
                    )
                    assert sent.returncode == 0, sent.stderr
                    while len(list(pacs_out.iterdir())) < count:
                        await anyio.sleep(0.1)
                    time.sleep(0.2)  # storescp renames each file as it finishes
    finally:
        pacs.terminate()
        pacs.wait(timeout=10)
    received = {scan_file(p).sop_instance_uid: p for p in pacs_out.iterdir()}
    assert len(received) == count
    for source in study.iterdir():
        assert dataset(received[scan_file(source).sop_instance_uid]) == dataset(source)


async def test_pacs_delivery_survives_a_restart(orgs: Pki, tmp_path: Path) -> None:
    """The PACS is down when the study is committed; the node stops while still
    retrying, the PACS comes up, and the restarted node delivers the study."""
    count = 5
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], count)
    pacs_out = tmp_path / "pacs-b"
    pacs_out.mkdir()
    pacs_port = closed_port()
    b_cfg = delivering_node(orgs, tmp_path / "b", pacs_port, delivery_attempts=1000)
    with anyio.fail_after(120):
        async with Node(b_cfg) as b:
            assert b.port is not None
            a_cfg = node_config(
                "RX1",
                tmp_path / "a",
                identity=orgs.identity("RX1"),
                peers=(Peer(code="RX2", host="127.0.0.1", port=b.port),),
            )
            async with Node(a_cfg) as a:
                await (await a.send(study, to="RX2")).wait()
            await anyio.sleep(0.3)  # a few failed delivery attempts
            assert (await b.status()).get("deliveries_pending") == 1
        pacs = subprocess.Popen(
            [str(DCMTK / "storescp"), "-od", str(pacs_out), "-aet", "PACSB", str(pacs_port)],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            async with Node(b_cfg) as b:
                while (await b.status()).get("deliveries_done") != 1:
                    await anyio.sleep(0.1)
        finally:
            pacs.terminate()
            pacs.wait(timeout=10)
    assert len(list(pacs_out.iterdir())) == count
