"""The whole chain of an exchange: DCMTK storescu (a hospital's PACS) -> our SCP
on node A -> the wire -> node B -> our SCU -> DCMTK storescp (the other
hospital's PACS), every dataset intact at the end: a synthetic MR study, a
1,000-image CT study, and every one of pydicom's bundled files DCMTK can send.

For pydicom's files, "intact" is judged against what DCMTK storescu puts on the
wire (it re-encodes what it reads: drops trailing padding, recomputes group
lengths, sends implicit VR as explicit VR, deflates anew), as a DCMTK storescp
records it in bit-preserving mode: at PACSB each dataset must be that, byte for
byte, in the same transfer syntax; and, read by pydicom, the source file element
for element (tag, VR, value, pixel data; group lengths and padding aside).
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import anyio
import pytest
from pydicom.data import get_testdata_file, get_testdata_files

from dicomrelay import quarantine, scan_file, synth
from dicomrelay.config import DicomTls, Peer, Route
from dicomrelay.dicom.dimse import Status
from dicomrelay.dicom.scu import Client, contexts_for
from dicomrelay.errors import CannotRelease
from dicomrelay.ledger.quarantine import HoldState
from dicomrelay.node import Node
from dicomrelay.web import metrics
from tls_certificates import Pki as DicomPki
from tls_certificates import make_pki

from .chain_helpers import (
    DCMTK,
    Sendable,
    Verdict,
    ask_dcmtk,
    assert_same_elements,
    chain,
    dataset,
    delivering_node,
    held,
    routing_node,
    run,
    storescu_args,
    transfer_syntax,
)
from .helpers import Pki, closed_port, node_config, query

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not (DCMTK / "storescp").exists(), reason="DCMTK is not installed"),
]
ASYNCIO_ONLY = [pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio")]


async def test_dcmtk_to_node_a_to_node_b_to_dcmtk(orgs: Pki, tmp_path: Path) -> None:
    count = 30
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], count)
    with anyio.fail_after(120):
        async with chain(orgs, tmp_path, routes=(Route(to="RX2", modality="MR"),)) as c:
            await c.store(storescu_args(c.port, ["+sd", study], proposal=None), studies=1)
            await c.settle()
            assert not c.problems()
    received = held(c.pacs)
    assert len(received) == count
    for source in study.iterdir():
        assert dataset(received[scan_file(source).sop_instance_uid or ""]) == dataset(source)


@pytest.mark.parametrize("anyio_backend", ASYNCIO_ONLY)  # one backend: 504 MB through the chain
async def test_a_thousand_image_ct_study(orgs: Pki, tmp_path: Path) -> None:
    """1,000 CT slices of 513 KB on one association: every one at PACSB, once,
    its dataset byte for byte the source's."""
    count = 1000
    study = synth.write_study(tmp_path / "study", synth.PROFILES["ct"], count)
    with anyio.fail_after(300):
        async with chain(orgs, tmp_path, routes=(Route(to="RX2", modality="CT"),)) as c:
            await c.store(storescu_args(c.port, ["+sd", study], proposal=None), studies=1)
            await c.settle(timeout=240)
            assert not c.problems()
    received = held(c.pacs)  # one file per SOP Instance UID, or it fails
    sources = {scan_file(p).sop_instance_uid or "": p for p in study.iterdir()}
    assert len(sources) == count
    assert sorted(received) == sorted(sources)
    for uid, source in sources.items():
        assert dataset(received[uid]) == dataset(source), f"instance {uid} differs"
    for bulky in ("study", "a", "b", "pacs-b"):  # 2 GB not worth keeping for pytest
        shutil.rmtree(tmp_path / bulky)


# DICOM TLS on both DICOM hops.
@pytest.fixture(scope="module")
def dicom_pki(tmp_path_factory: pytest.TempPathFactory) -> DicomPki:
    return make_pki(tmp_path_factory.mktemp("dicom-pki"))


@pytest.mark.parametrize("anyio_backend", ASYNCIO_ONLY)  # the TLS is the point, not the loop
async def test_the_chain_over_dicom_tls(orgs: Pki, dicom_pki: DicomPki, tmp_path: Path) -> None:
    """PACSA -> node A's SCP and node B -> PACSB over DICOM TLS, mutually
    authenticated; a plaintext PACSA is refused and nothing of it is routed."""
    count = 10
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], count)
    pki = dicom_pki
    scp_tls = DicomTls(
        certificate=pki.server.cert, private_key=pki.server.key, trusted_cas=(pki.ca,)
    )
    scu_tls = DicomTls(
        certificate=pki.client.cert, private_key=pki.client.key, trusted_cas=(pki.ca,)
    )
    pacs_tls = [*pki.server.tls, *pki.trust]
    pacsa_tls = [*pki.client.tls, *pki.trust]
    with anyio.fail_after(120):
        async with chain(orgs, tmp_path, a_tls=scp_tls, b_tls=scu_tls, pacs_tls=pacs_tls) as c:
            plain = await c.storescu(storescu_args(c.port, ["+sd", study], proposal=None))
            assert plain.returncode != 0, plain.stdout
            a_db = c.a.config.data_dir / "ledger.sqlite"
            [(action, detail)] = query(a_db, "SELECT action, detail FROM audit")
            assert action == "dicom-tls-refused"
            assert detail.startswith("127.0.0.1:"), detail
            assert query(a_db, "SELECT count(*) FROM outgoing") == [(0,)]
            kept = [p for p in (c.a.config.data_dir / "dicom").rglob("*") if p.is_file()]
            assert kept == []
            args = storescu_args(c.port, ["+sd", study], proposal=None, tls=pacsa_tls)
            await c.store(args, studies=1)
            await c.settle()
            assert not c.problems()
            routed = "SELECT count(*) FROM audit WHERE action = 'routed'"
            assert query(a_db, routed) == [(1,)]
    delivered = held(c.pacs)
    assert len(delivered) == count
    for source in study.iterdir():
        assert dataset(delivered[scan_file(source).sop_instance_uid or ""]) == dataset(source)


# pydicom's bundled files.
@pytest.fixture(scope="module")
def dcmtk(tmp_path_factory: pytest.TempPathFactory) -> Verdict:
    """Each of pydicom's files sent alone by DCMTK storescu (proposing the file's
    own transfer syntax) to a DCMTK storescp: what DCMTK sends, and what not."""
    base = Path(str(get_testdata_file("CT_small.dcm"))).parent
    paths = [Path(p) for p in get_testdata_files()]
    files = {str(p.relative_to(base)): p for p in paths if p.is_file()}
    verdict = ask_dcmtk(files, tmp_path_factory.mktemp("dcmtk"))
    assert len(verdict.sendable) + len(verdict.refused) == len(files)
    return verdict


def in_rounds(files: list[Sendable]) -> list[list[Sendable]]:
    """The files in rounds holding one file per SOP Instance UID (pydicom's
    variants of one image share it): the first of each, then the second..."""
    variants: dict[str, list[Sendable]] = defaultdict(list)
    for s in files:
        variants[s.sop_instance_uid].append(s)
    most = max(map(len, variants.values()), default=0)
    return [[v[n] for v in variants.values() if len(v) > n] for n in range(most)]


def assert_delivered_intact(pacs: Path, files: list[Sendable]) -> None:
    received = held(pacs)
    for s in files:
        final = received.get(s.sop_instance_uid)
        assert final is not None, f"{s.name} never reached PACSB"
        assert transfer_syntax(final) == s.transfer_syntax, s.name
        assert dataset(final) == dataset(s.reference), f"{s.name}: not what DCMTK sent"
        if dataset(final) != dataset(s.source):
            assert_same_elements(s.source, final)


# The files of pydicom 3.0's test data that DCMTK 3.6.7's storescu does not
# send: it finds no SOP Class or Instance UID to put in the C-STORE request.
DCMTK_CANNOT_SEND = {
    # Not DICOM at all.
    "README.txt",
    "crayons.icc",
    "dicomdirtests/README.txt",
    "dicomdirtests/TINY_ALPHA/README",
    "rtplan.dump",
    "rtstruct.dump",
    "test1.json",
    "test_PN.json",
    "zipMR.gz",
    # Media directories, not instances.
    "dicomdirtests/DICOMDIR",
    "dicomdirtests/DICOMDIR-bigEnd",
    "dicomdirtests/DICOMDIR-empty.dcm",
    "dicomdirtests/DICOMDIR-implicit",
    "dicomdirtests/DICOMDIR-nooffset",
    "dicomdirtests/DICOMDIR-nopatient",
    "dicomdirtests/DICOMDIR-reordered",
    "dicomdirtests/TINY_ALPHA/DICOMDIR",
    # Datasets without SOP Class and Instance UID.
    "UN_sequence.dcm",
    "empty_charset_LEI.dcm",
    "meta_missing_tsyntax.dcm",
    "nested_priv_SQ.dcm",
    "no_meta_group_length.dcm",
    "priv_SQ.dcm",
    # SOP Class and Instance UID with VR UN, which DCMTK does not read as UIDs.
    "rtdose_rle.dcm",
    "rtdose_rle_1frame.dcm",
    # Cut short.
    "MR_truncated.dcm",
    "rtplan_truncated.dcm",
    # A stray byte before the first element, and no file meta.
    "no_meta.dcm",
    # Implicit VR data labelled with an explicit VR transfer syntax.
    "SC_rgb_jpeg.dcm",
}


def test_what_dcmtk_cannot_send_is_reported(dcmtk: Verdict) -> None:
    """The files DCMTK storescu refuses, exactly, each for want of a SOP Class
    or Instance UID (DCMTK's own words); every other one it sent and storescp
    stored, for the tests below to carry through the chain."""
    assert sorted(dcmtk.refused) == sorted(DCMTK_CANNOT_SEND)
    for name, why in dcmtk.refused.items():
        assert why.endswith("F: missing SOP class (or instance) in file"), f"{name}: {why}"
    assert not dcmtk.refused.keys() & {s.name for s in dcmtk.sendable}
    assert len(dcmtk.sendable) > 100


async def test_every_pydicom_file_dcmtk_can_send(orgs: Pki, tmp_path: Path, dcmtk: Verdict) -> None:
    """Every file DCMTK can send (those without a Study Instance UID: see the
    next test), one association per transfer syntax storescu must propose,
    routed study by study, delivered into PACSB, each dataset intact there.

    pydicom's variants of one image share its SOP Instance UID, so the files
    go in rounds (the first file of each SOP Instance UID, then the second...)
    and each must replace the last at PACSB, as it would sent there directly
    (storescp keeps the last file of each SOP Instance UID). One association at
    a time, each settled, so that "the last" is known: node B delivers a study
    after each commit, and two deliveries of one study may overtake each other.
    (Within one association node A keeps the last copy it was sent, its SCP
    naming files by SOP Instance UID, and routes it once for each C-STORE.)
    """
    rounds = in_rounds([s for s in dcmtk.sendable if s.study_instance_uid])
    assert rounds
    with anyio.fail_after(300):
        async with chain(orgs, tmp_path) as c:
            for files in rounds:
                await c.send(files, settle=True)
                assert not c.problems()
                assert_delivered_intact(c.pacs, files)
    first = {s.sop_instance_uid for s in rounds[0]}
    assert sorted(held(c.pacs)) == sorted(first), "PACSB holds an instance never sent"


async def test_an_instance_without_a_study_is_refused_or_delivered(
    orgs: Pki, tmp_path: Path, dcmtk: Verdict
) -> None:
    """No route can carry an instance without a Study Instance UID (type 1 in
    every composite IOD): either DCMTK storescu hears that it was not stored,
    or it reaches PACSB; never accepted and then lost at node A."""
    files = [s for s in dcmtk.sendable if not s.study_instance_uid]
    if not files:
        pytest.skip("every file DCMTK can send has a Study Instance UID")
    accepted = []
    with anyio.fail_after(120):
        async with chain(orgs, tmp_path) as c:
            for s in files:
                result = await c.storescu(storescu_args(c.port, [s.source], proposal=s.proposal))
                if result.returncode == 0:
                    accepted.append(s)
                    c.routed += 1
            await c.settle()
    assert_delivered_intact(c.pacs, accepted)


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


async def test_a_released_association_is_already_routed(orgs: Pki, tmp_path: Path) -> None:
    """Once node A answers the release, every study the association stored is
    durable and routed in A's ledger: a crash after that loses nothing, even
    with the destination down."""
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 8)
    config = routing_node(orgs, tmp_path / "a", closed_port(), (Route(to="RX2"),))
    async with Node(config) as a:
        assert a.dicom_port is not None
        args = storescu_args(a.dicom_port, sorted(study.glob("*.dcm")), proposal=None)
        result = await anyio.to_thread.run_sync(run, args)
        assert result.returncode == 0, result.stderr
        rows = query(tmp_path / "a" / "ledger.sqlite", "SELECT destination, total FROM outgoing")
        assert rows == [("RX2", 8)]


async def test_callers_turned_away_are_audited(orgs: Pki, tmp_path: Path) -> None:
    """Node A audits every DICOM caller it turns away, as it audits wire peers:
    an association from an AE title it does not know, and a dataset it
    refused (and routes nothing of either). The dataset is held in the node's
    one quarantine: a hold in its ledger, which ``dicomrelay quarantine``
    lists, shows and deletes, and ``/metrics`` counts."""
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 1)
    [spoiled] = study.iterdir()
    info = scan_file(spoiled)
    spoiled.write_bytes(spoiled.read_bytes()[: info.size - 1000])  # pixel data cut short
    with anyio.fail_after(120):
        async with chain(orgs, tmp_path) as c:
            echo = [str(DCMTK / "echoscu"), "-aet", "ROGUE", "-aec", "RELAYA"]
            rogue = run([*echo, "127.0.0.1", str(c.port)])
            assert rogue.returncode != 0
            async with await Client.connect(
                "127.0.0.1",
                c.port,
                calling_ae_title="PACSA",
                called_ae_title="RELAYA",
                contexts=contexts_for([info]),
            ) as client:
                status = await client.store(spoiled, info)
            a_db = c.a.config.data_dir / "ledger.sqlite"
            audit = query(a_db, "SELECT org, action, detail FROM audit ORDER BY id")
            outgoing = query(a_db, "SELECT count(*) FROM outgoing")
            [hold] = await c.a.ledger.held_instances()
            counted = metrics.quarantined(await c.a.ledger.held_counts())
            with pytest.raises(CannotRelease):
                await quarantine.release(c.a.config, c.a.ledger, hold.id)
            kept = Path(hold.location).read_bytes()
            await quarantine.delete(c.a.config, c.a.ledger, hold.id)
            gone = not Path(hold.location).exists()
            [after] = await c.a.ledger.held_instances(HoldState.DELETED)
    assert status & 0xF000 == Status.CANNOT_UNDERSTAND
    [(org, action, detail), (org2, action2, detail2), *_] = audit
    assert (org, action) == ("RX1", "dicom-association-refused")
    assert re.fullmatch(r"ROGUE at 127\.0\.0\.1:\d+: calling AE title not recognized", detail)
    assert (org2, action2) == ("RX1", "dicom-dataset-refused")
    assert detail2.startswith(f"{info.sop_instance_uid} from PACSA at 127.0.0.1:"), detail2
    assert "malformed dataset" in detail2
    assert detail2.endswith(f"; held in quarantine as {hold.id}")
    assert outgoing == [(0,)]
    # The hold: the node's own organisation's, the caller named in its context.
    assert (hold.kind, hold.direction, hold.org) == ("dicom-refused", "receive", "RX1")
    assert hold.sop_uid == info.sop_instance_uid
    assert hold.reason.startswith("malformed dataset: ")
    assert hold.context["calling_ae_title"] == "PACSA"
    assert hold.context["via"] == "c-store"
    assert Path(hold.location) == tmp_path / "a" / "quarantine" / f"{hold.id}.dcm"
    # The dataset as the caller sent it, behind the file meta the SCP writes.
    assert kept.endswith(spoiled.read_bytes()[info.dataset_offset :])
    assert hold.size == len(kept)
    assert not (tmp_path / "a" / "dicom" / "quarantine").exists()  # no second folder
    assert counted["dicom-refused"] == 1
    assert gone
    assert after.id == hold.id


def open_descriptors() -> int:
    """Descriptors open, once garbage that would close some is collected: what
    is left open was never going to close."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_a_restarted_node_leaves_no_descriptor_open(orgs: Pki, tmp_path: Path) -> None:
    """Node A started and stopped five times in one process, as ``serve``
    restarts it, each time taking a study from DCMTK storescu: as many
    descriptors open at the end as after the first run."""
    study = synth.write_study(tmp_path / "study", synth.PROFILES["mr"], 2)
    config = routing_node(orgs, tmp_path / "a", closed_port(), (Route(to="RX2"),))

    async def run_once() -> None:
        async with Node(config) as a:
            assert a.dicom_port is not None
            args = storescu_args(a.dicom_port, sorted(study.glob("*.dcm")), proposal=None)
            result = await anyio.to_thread.run_sync(run, args)
            assert result.returncode == 0, result.stderr

    with anyio.fail_after(120):
        await run_once()  # what the process opens once (thread pools, the loop's own)
        before = open_descriptors()
        for _ in range(5):
            await run_once()
        assert open_descriptors() == before
