"""Our storescp against real peers: DCMTK storescu and echoscu, pynetdicom, and
our own SCU sending a malformed dataset; rogue callers refused; the server
keeps serving."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import blake3
import orjson
import pytest
from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts

from dicomrelay import scan_file, synth
from dicomrelay.dicom.dimse import Status
from dicomrelay.dicom.scu import AssociationError, Client, contexts_for
from peers import DCMTK, dicomrelay_command, free_port, listening, run

pytestmark = pytest.mark.skipif(not (DCMTK / "storescu").exists(), reason="DCMTK not installed")


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``dicomrelay storescp`` accepting calling AE titles STORESCU and DICOMRELAY."""
    port, out = free_port(), tmp_path / "received"
    command = dicomrelay_command("storescp", str(port), "-od", str(out), "-aet", "RELAY")
    command += ["--allow", "STORESCU", "--allow", "DICOMRELAY", "--allow", "PYNETDICOM"]
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
