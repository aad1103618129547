"""What de-identification on the way out costs: the same 1,000-slice CT study
sent to a trust (as it is) and to a research organisation (de-identified by
the send rule: each instance's header rewritten into the transfer's spool,
its pixel data copied by the kernel, the spool made durable, read back for
its digests), in the same session, rounds interleaved.

The sender is a node in this process; the receiver a ``dicomrelay serve``
process, fresh each round (it would otherwise hold the study already). A
round's time runs from ``send`` (scanning, policy, de-identification
included) to the signed receipt; the sender's CPU is this process's over the
same span, the receiver's its process's. Each contender's median round, and
the research one's ratio to the trust one, go to
build-artifacts/deidentify-send-ratios.json.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from benches import races
from benches.peers import Cpu, free_port, listening, rounds, settle_disk
from dicomrelay import pki
from dicomrelay.config import NodeConfig, Peer
from dicomrelay.node import Node
from dicomrelay.policy import Deidentify, Rule

CONTENDERS = ("trust", "research")
ROUNDS = 3
OPTIONS = ("retain-longitudinal-modified-dates", "retain-patient-characteristics")


def self_cpu() -> Cpu:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return Cpu(r.ru_utime, r.ru_stime)


def receiver_toml(root: Path, ca: Path, port: int) -> Path:
    identity = pki.issue_org(ca, "RX2", root / "orgs")
    path = root / "rx2.toml"
    path.write_text(
        f'[node]\norg = "RX2"\ndata_dir = "{root / "rx2"}"\nlisten_port = {port}\n\n'
        f'[tls]\ncert = "{identity.cert}"\nkey = "{identity.key}"\nca = "{identity.ca}"\n\n'
        '[[peers]]\norg = "RX1"\nhost = "127.0.0.1"\nport = 1\n\n[store]\nsegment_mb = 256\n'
    )
    return path


def sender_config(root: Path, ca: Path, port: int, role: str, key: Path) -> NodeConfig:
    identity = pki.issue_org(ca, "RX1", root / "orgs")
    config = NodeConfig(
        org="RX1",
        data_dir=root / "rx1",
        identity=identity,
        peers=(Peer(code="RX2", host="127.0.0.1", port=port, role=role),),
    )
    if role != "research":
        return config
    rule = Rule(
        name="research",
        direction="send",
        allow=True,
        roles=frozenset({"research"}),
        deidentify=Deidentify(options=OPTIONS, key_file=key),
    )
    return dataclasses.replace(config, rules=(rule,))


def send_round(study: Path, root: Path, role: str) -> races.Round:
    root.mkdir()
    ca = root / "ca"
    pki.make_ca(ca, "bench CA")
    key = root / "project.key"
    key.write_text(os.urandom(32).hex())
    port = free_port()
    config = sender_config(root, ca, port, role, key)
    images = len(list(study.iterdir()))
    with listening(
        [
            sys.executable,
            "-m",
            "dicomrelay",
            "serve",
            "--config",
            str(receiver_toml(root, ca, port)),
        ],
        port,
    ) as receiver:

        async def send() -> tuple[float, Cpu, Cpu]:
            async with Node(config) as node:
                settle_disk()
                receiver_before, before = receiver.cpu(), self_cpu()
                t0 = time.perf_counter()
                transfer = await node.send(study, to="RX2")
                receipt = await transfer.wait()
                seconds = time.perf_counter() - t0
                sender = self_cpu() - before
                assert len(receipt.instances) == images
                return seconds, sender, receiver.cpu() - receiver_before

        seconds, sender, received = anyio.run(send)
    shutil.rmtree(root)
    return races.Round(
        images=images,
        seconds=seconds,
        cpu_ms_per_image={
            "sender": sender.per_image_ms(images),
            "receiver": received.per_image_ms(images),
        },
    )


@pytest.mark.parametrize(
    ("round_", "role"),
    rounds(CONTENDERS, ROUNDS),
    ids=[f"{role}-round{n}" for n, role in rounds(CONTENDERS, ROUNDS)],
)
def test_send_1000_deidentified(
    benchmark: Any, study_paths: list[Path], tmp_path: Path, round_: int, role: str
) -> None:
    benchmark.group = "deidentify-send-1000"
    race = races.race(
        report="deidentify-send",
        name="ct-1000-deidentified",
        baseline="trust",
        describe="1,000 CT slices of 514 KB, one study: to a trust as it is, and to a research"
        " organisation de-identified on the way out",
        cpu_notes={
            "sender": "this process (the sending node) from send to the receipt",
            "receiver": "the serve process over the same span",
        },
    )
    study = study_paths[0].parent
    measured: races.Round = benchmark.pedantic(
        send_round, args=(study, tmp_path / "round", role), rounds=1, iterations=1
    )
    race.record(role, measured)
    benchmark.extra_info.update(
        images_per_second=round(measured.images_per_second, 1),
        cpu_ms_per_image=dict(measured.cpu_ms_per_image),
    )
