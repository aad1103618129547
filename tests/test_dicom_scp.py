"""Our storescp against real peers: DCMTK storescu and echoscu, pynetdicom, and
our own SCU sending a malformed dataset; rogue callers refused; the server
keeps serving."""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import anyio
import blake3
import orjson
import pytest
from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts

from dicomrelay import InstanceInfo, scan_file, synth
from dicomrelay.dicom.dimse import Status
from dicomrelay.dicom.part10 import file_meta
from dicomrelay.dicom.scp import StoreScp
from dicomrelay.dicom.scu import AssociationError, Client, contexts_for
from peers import DCMTK, dicomrelay_command, free_port, listening, run

pytestmark = pytest.mark.skipif(not (DCMTK / "storescu").exists(), reason="DCMTK not installed")


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``dicomrelay storescp`` RELAY, accepting calling AE titles STORESCU,
    DICOMRELAY and PYNETDICOM, and only associations addressed to it."""
    port, out = free_port(), tmp_path / "received"
    command = dicomrelay_command("storescp", str(port), "-od", str(out), "-aet", "RELAY")
    command += ["--allow", "STORESCU", "--allow", "DICOMRELAY", "--allow", "PYNETDICOM"]
    command += ["--require-called-aet"]
    with listening([*command, "--host", "127.0.0.1"], port):
        yield port, out


def dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run([str(DCMTK / tool), *args])


def dataset(path: Path) -> bytes:
    return path.read_bytes()[scan_file(path).dataset_offset :]


def stored(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("*.dcm"))


def test_dcmtk_storescu_into_our_scp(scp: tuple[int, Path], tmp_path: Path) -> None:
    port, out = scp
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 40)
    calling = ["-aet", "STORESCU", "-aec", "RELAY", "127.0.0.1", str(port)]
    result = dcmtk("storescu", *calling, "+sd", str(study))
    assert result.returncode == 0, result.stderr
    got = {scan_file(p).sop_instance_uid: p for p in stored(out)}
    assert len(got) == 40
    for source in study.iterdir():
        assert dataset(got[scan_file(source).sop_instance_uid]) == dataset(source)
    echo = dcmtk("echoscu", *calling)
    assert echo.returncode == 0, echo.stderr


def test_rogue_callers_are_refused_and_the_server_goes_on(
    scp: tuple[int, Path], tmp_path: Path
) -> None:
    port, out = scp
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 2)
    rogue = dcmtk(
        "storescu", "-aet", "ROGUE", "-aec", "RELAY", "127.0.0.1", str(port), "+sd", str(study)
    )
    assert rogue.returncode != 0
    assert "Rejected" in rogue.stderr or "rejected" in rogue.stderr.lower()
    wrong_called = dcmtk("echoscu", "-aet", "STORESCU", "-aec", "OTHER", "127.0.0.1", str(port))
    assert wrong_called.returncode != 0
    assert stored(out) == []
    assert (
        dcmtk("echoscu", "-aet", "STORESCU", "-aec", "RELAY", "127.0.0.1", str(port)).returncode
        == 0
    )
    refused = [orjson.loads(line) for line in (out / "refused.jsonl").read_bytes().splitlines()]
    assert [
        (r["what"], r["calling_ae_title"], r["called_ae_title"], r["reason"]) for r in refused
    ] == [
        ("association", "ROGUE", "RELAY", "calling AE title not recognized"),
        ("association", "STORESCU", "OTHER", "called AE title not recognized"),
    ]
    assert all(r["peer"].startswith("127.0.0.1:") for r in refused)


def test_a_malformed_dataset_is_refused_and_quarantined(
    scp: tuple[int, Path], tmp_path: Path
) -> None:
    port, out = scp
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 2)
    good, spoiled = sorted(study.iterdir())
    info = scan_file(spoiled)
    spoiled.write_bytes(spoiled.read_bytes()[: info.size - 1000])  # pixel data cut short

    async def send() -> tuple[int, int]:
        infos = [scan_file(good), info]
        async with await Client.connect(
            "127.0.0.1", port, called_ae_title="RELAY", contexts=contexts_for(infos)
        ) as client:
            bad = await client.store(spoiled, info)
            ok = await client.store(good)
            return bad, ok

    bad, ok = anyio.run(send)
    assert bad & 0xF000 == Status.CANNOT_UNDERSTAND
    assert ok == Status.SUCCESS
    assert [scan_file(p).sop_instance_uid for p in stored(out)] == [
        scan_file(good).sop_instance_uid
    ]
    quarantined = list((out / "quarantine").glob("*.reason"))
    assert len(quarantined) == 1
    assert "malformed" in quarantined[0].read_text()
    [refused] = [orjson.loads(line) for line in (out / "refused.jsonl").read_bytes().splitlines()]
    assert (refused["what"], refused["sop_instance_uid"]) == ("dataset", info.sop_instance_uid)
    assert refused["reason"].startswith("malformed dataset")


def test_pynetdicom_scu_into_our_scp(scp: tuple[int, Path], tmp_path: Path) -> None:
    port, out = scp
    study = synth.write_study(tmp_path / "study", synth.PROFILES["ct"], 3)
    ae = AE(ae_title="PYNETDICOM")
    ae.requested_contexts = StoragePresentationContexts[:100]
    assoc = ae.associate("127.0.0.1", port, ae_title="RELAY")
    assert assoc.is_established
    try:
        for path in sorted(study.iterdir()):
            status = assoc.send_c_store(dcmread(path))
            assert status.Status == 0
    finally:
        assoc.release()
    assert len(stored(out)) == 3


def test_our_scu_is_refused_with_a_typed_error_when_rogue(scp: tuple[int, Path]) -> None:
    port, _ = scp

    async def echo() -> None:
        async with await Client.connect(
            "127.0.0.1", port, calling_ae_title="ROGUE", called_ae_title="RELAY"
        ) as client:
            await client.echo()

    with pytest.raises(AssociationError, match="rejected"):
        anyio.run(echo)


@pytest.mark.parametrize("digest", ["sha256", "blake3"])
def test_each_instance_recorded_with_its_digest(tmp_path: Path, digest: str) -> None:
    """Once storescu's release is answered, every instance is durable under its
    name and in the received log with the digest of its file's bytes."""
    port, out = free_port(), tmp_path / "received"
    command = dicomrelay_command("storescp", str(port), "-od", str(out), "-aet", "RELAY")
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 12)
    calling = ["-aet", "STORESCU", "-aec", "RELAY", "127.0.0.1", str(port)]
    with listening([*command, "--host", "127.0.0.1", "--digest", digest], port):
        assert dcmtk("storescu", *calling, "+sd", str(study)).returncode == 0
    records = [orjson.loads(line) for line in (out / "received.jsonl").read_bytes().splitlines()]
    assert len(records) == 12
    expected = hashlib.sha256 if digest == "sha256" else blake3.blake3
    for record in records:
        path = out / record["path"]
        assert record["digest_algorithm"] == digest
        assert expected(path.read_bytes()).hexdigest() == record["digest"]
        assert record["sop_instance_uid"] == scan_file(path).sop_instance_uid
        assert record["calling_ae_title"] == "STORESCU"
    assert not list((out / ".incoming").glob("*.dcm"))[8:], "only the spare files are left"


def test_sync_each_instance(tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "received"
    command = dicomrelay_command("storescp", str(port), "-od", str(out), "-aet", "RELAY")
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 10)
    with listening([*command, "--host", "127.0.0.1", "--sync-each"], port):
        result = dcmtk("storescu", "-aec", "RELAY", "127.0.0.1", str(port), "+sd", str(study))
        assert result.returncode == 0, result.stderr
    assert len(stored(out)) == 10


def test_output_folder_removed_between_associations(scp: tuple[int, Path], tmp_path: Path) -> None:
    """An operator clearing the output folder under the running server: the
    next association is stored whole all the same."""
    port, out = scp
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 6)
    calling = ["-aet", "STORESCU", "-aec", "RELAY", "127.0.0.1", str(port), "+sd", str(study)]
    assert dcmtk("storescu", *calling).returncode == 0
    shutil.rmtree(out)
    result = dcmtk("storescu", *calling)
    assert result.returncode == 0, result.stderr
    assert len(stored(out)) == 6


def test_our_storescu_into_our_storescp_with_defaults(tmp_path: Path) -> None:
    """Neither side told an AE title: storescp (DICOMRELAY) accepts storescu's
    ANY-SCP, as DCMTK's storescp accepts any called AE title."""
    port, out = free_port(), tmp_path / "received"
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 5)
    command = [*dicomrelay_command("storescp", str(port), "-od", str(out)), "--host", "127.0.0.1"]
    with listening(command, port):
        result = run(dicomrelay_command("storescu", "127.0.0.1", str(port), str(study)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sent 5 of 5 ")
    assert sorted(dataset(p) for p in stored(out)) == sorted(dataset(p) for p in study.iterdir())


MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def store_crafted(port: int, called: str, dataset: bytes, tmp_path: Path) -> int:
    """C-STORE of ``dataset`` (any bytes, even none) as instance 1.2.3.4 of
    MR Image Storage, by our SCU: the status answered."""
    meta = file_meta(
        sop_class_uid=MR_STORAGE, sop_instance_uid="1.2.3.4", transfer_syntax_uid=EXPLICIT_LE
    )
    path = tmp_path / "crafted.dcm"
    path.write_bytes(meta + dataset)
    info = cast(  # what scan_file cannot make of a dataset without UIDs
        InstanceInfo,
        SimpleNamespace(
            sop_class_uid=MR_STORAGE,
            sop_instance_uid="1.2.3.4",
            transfer_syntax_uid=EXPLICIT_LE,
            size=len(meta) + len(dataset),
            dataset_offset=len(meta),
        ),
    )

    async def send() -> int:
        async with await Client.connect(
            "127.0.0.1", port, called_ae_title=called, contexts=contexts_for([info])
        ) as client:
            return await client.store(path, info)

    return anyio.run(send)


def test_an_empty_dataset_is_answered_cannot_understand(
    scp: tuple[int, Path], tmp_path: Path
) -> None:
    """PS3.4 Table B.2-1: C000 (cannot understand), not A900 (does not match the
    SOP class, for a dataset naming another instance). DCMTK's storescp answers
    C000 to a dataset without SOP Instance UID, as we do."""
    port, out = scp
    patient_only = struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 6) + b"DOE^J "
    assert store_crafted(port, "RELAY", b"", tmp_path) == Status.CANNOT_UNDERSTAND
    assert store_crafted(port, "RELAY", patient_only, tmp_path) == Status.CANNOT_UNDERSTAND
    reasons = sorted(p.read_text() for p in (out / "quarantine").glob("*.reason"))
    assert reasons == ["empty dataset\n", "no SOP Instance UID\n"]
    assert stored(out) == []
    dcmtk_port, dcmtk_out = free_port(), tmp_path / "dcmtk"
    dcmtk_out.mkdir()
    with listening([str(DCMTK / "storescp"), "-od", str(dcmtk_out), str(dcmtk_port)], dcmtk_port):
        theirs = store_crafted(dcmtk_port, "STORESCP", patient_only, tmp_path)
    assert theirs == Status.CANNOT_UNDERSTAND


def open_descriptors() -> int:
    """Descriptors open, once garbage that would close some is collected: what
    is left open was never going to close."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_stopped_scp_leaves_no_descriptor_open(tmp_path: Path) -> None:
    """Served and stopped five times in one process, as ``serve`` restarts a
    node, after an association each time: as many descriptors open as before."""
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 2)
    infos = [(p, scan_file(p)) for p in sorted(study.iterdir())]

    async def cycle() -> None:
        scp = StoreScp(ae_title="RELAY", output_dir=tmp_path / "out", quarantine_dir=tmp_path / "q")
        up = anyio.Event()
        ports: list[int] = []

        def ready(port: int) -> None:
            ports.append(port)
            up.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: scp.serve("127.0.0.1", 0, ready=ready))
            await up.wait()
            contexts = contexts_for([i for _, i in infos])
            async with await Client.connect("127.0.0.1", ports[0], contexts=contexts) as client:
                for path, info in infos:
                    assert await client.store(path, info) == Status.SUCCESS
            tg.cancel_scope.cancel()

    async def cycles() -> tuple[int, int]:
        await cycle()  # the loop's and the thread pool's own, once
        before = open_descriptors()
        for _ in range(5):
            await cycle()
        return before, open_descriptors()

    before, after = anyio.run(cycles)
    assert after == before
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 2
