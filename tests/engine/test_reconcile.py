"""Patient-ID reconciliation end to end: trust A (RX1) sends a study to trust
B (RX2) over mutual TLS; B's inbound rule maps A's patient to B's from a CSV
file and B delivers into its PACS (DCMTK's storescp). What the PACS holds
carries B's IDs and accession rule, A's IDs in Original Attributes Sequence
and Other Patient IDs Sequence, and pixel data byte-identical to what A sent
(read with pydicom). A study no mapping places is held, shown by `dicomrelay
status`, resolved by `dicomrelay reconcile`, then delivered; a study B's
inbound rules refuse is refused to A and audited."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import orjson
import pydicom
import pytest

from dicomrelay import scan, scan_file
from dicomrelay.config import NodeConfig
from dicomrelay.node import Node
from dicomrelay.policy import PolicyRefused, Rule
from dicomrelay.reconcile import ForeignPatient, LocalPatient, Reconcile
from dicomrelay.rewrite import Set, rewrite_file
from dicomrelay.transfer import RefusedByReceiver, TransferFailed

from .chain_helpers import dataset, held, storescp
from .helpers import (
    Pki,
    closed_port,
    make_study,
    node_config,
    peer,
    query,
    read_stored,
    receiver_config,
    study_files,
)
from .processes import dicomrelay, node_toml

pytestmark = pytest.mark.anyio
TIMEOUT = 90
SENDER_PATIENT = "SYN00000007"  # make_study(seed=7): A's Patient ID, issuer DICOMRELAY


def b_toml(orgs: Pki, root: Path, pacs_port: int, rules: str) -> Path:
    """Trust B's configuration file: RX1 a trust peer, a PACS to deliver into, ``rules``."""
    me = orgs.identity("RX2")
    path = root / "rx2.toml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""
[node]
org = "RX2"
data_dir = "data"
listen_port = 0

[tls]
cert = "{me.cert}"
key = "{me.key}"
ca = "{me.ca}"

[[peers]]
org = "RX1"
host = "127.0.0.1"
port = 1
role = "trust"

[store]
segment_mb = 4

[dicom]
ae_title = "RELAYB"

[dicom.deliver_to]
ae_title = "PACSB"
host = "127.0.0.1"
port = {pacs_port}

{rules}
"""
    )
    return path


RECONCILE_FROM_A = """
[[rules]]
name = "from-trust-a"
direction = "receive"
from = ["RX1"]

[rules.reconcile]
csv = "patients.csv"
match = ["nhs-number", "sender-id"]
local_issuer = "TRUSTB"
accession_prefix = "A-"
institution_name = "Trust B"
"""


REFUSE_MR = """
[[rules]]
name = "ct-from-trusts"
direction = "receive"
roles = ["trust"]
modalities = ["CT"]
"""


@asynccontextmanager
async def trust_a(orgs: Pki, root: Path, rx_port: int) -> AsyncIterator[Node]:
    config = node_config(
        "RX1", root / "a", identity=orgs.identity("RX1"), peers=(peer("RX2", rx_port),)
    )
    async with Node(config) as tx:
        yield tx


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomrelay", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def wait_for_files(pacs: Path, count: int) -> dict[str, Path]:
    while len([p for p in pacs.iterdir() if p.is_file()]) < count:
        await anyio.sleep(0.05)
    await anyio.sleep(0.2)  # storescp writes each file whole before the next response
    return held(pacs)


def assert_reconciled(
    pacs_files: dict[str, Path], sources: list[Path], *, patient: str, issuer: str
) -> None:
    """Each PACS file: B's IDs, A's in the sequences PS3.3 names, pixel data as A sent it."""
    assert len(pacs_files) == len(sources)
    for source in sources:
        before = pydicom.dcmread(source)
        after = pydicom.dcmread(pacs_files[str(before.SOPInstanceUID)])
        assert (after.PatientID, after.IssuerOfPatientID) == (patient, issuer)
        assert after.AccessionNumber == "A-" + before.AccessionNumber
        assert after.InstitutionName == "Trust B"
        [original] = after.OriginalAttributesSequence
        assert original.ReasonForTheAttributeModification == "COERCE"
        assert original.ModifyingSystem == "dicomrelay RX2"
        assert original.SourceOfPreviousValues == "RX1"
        assert len(original.AttributeModificationDateTime) >= 14
        [previous] = original.ModifiedAttributesSequence
        assert previous.PatientID == before.PatientID == SENDER_PATIENT
        assert previous.IssuerOfPatientID == before.IssuerOfPatientID
        assert previous.AccessionNumber == before.AccessionNumber
        [other] = after.OtherPatientIDsSequence
        assert (other.PatientID, other.IssuerOfPatientID) == (SENDER_PATIENT, "DICOMRELAY")
        # The pixel data: the same bytes, and everything else the same as sent.
        assert after.PixelData == before.PixelData
        changed = {"PatientID", "IssuerOfPatientID", "AccessionNumber", "InstitutionName"}
        added = {"OriginalAttributesSequence", "OtherPatientIDsSequence"}
        assert {e.keyword for e in after} == {e.keyword for e in before} | added | changed
        for element in before:
            if element.keyword not in changed:
                assert after[element.tag].value == element.value, element.keyword


@pytest.mark.parametrize(
    ("profile", "count"),
    [("mr", 4), ("cr", 2)],  # cr: 8.4 MB instances, each through a partial file
)
async def test_a_study_from_trust_a_arrives_in_bs_pacs_under_bs_patient(
    orgs: Pki, tmp_path: Path, profile: str, count: int
) -> None:
    source = make_study(tmp_path / "study", count, profile=profile, seed=7)
    sources = study_files(source)
    pacs_port = closed_port()
    path = b_toml(orgs, tmp_path / "b", pacs_port, RECONCILE_FROM_A)
    (tmp_path / "b" / "patients.csv").write_text(
        "local_patient_id,local_issuer,nhs_number,sender,issuer,patient_id\n"
        f"B-7007,,,RX1,DICOMRELAY,{SENDER_PATIENT}\n"
    )
    with storescp(tmp_path / "pacs", pacs_port), anyio.fail_after(TIMEOUT):
        async with Node(NodeConfig.from_toml(path)) as rx:
            assert rx.port is not None
            async with trust_a(orgs, tmp_path, rx.port) as tx:
                receipt = await (await tx.send(source, to="RX2")).wait()
            pacs = await wait_for_files(tmp_path / "pacs", len(sources))
            db = rx.config.data_dir / "ledger.sqlite"
            while query(db, "SELECT state FROM deliveries") != [("done",)]:
                await anyio.sleep(0.05)
            stored = {uid: digest for uid, digest in await rx.study(receipt.study_instance_uid)}

    assert_reconciled(pacs, sources, patient="B-7007", issuer="TRUSTB")
    # The receipt names what was received: A's files, byte for byte.
    sent = {
        scan_file(p).sop_instance_uid: hashlib.sha256(p.read_bytes()).hexdigest() for p in sources
    }
    assert {i.sop_instance_uid: i.digest for i in receipt.instances} == sent
    # The ledger maps each received digest to the stored result's, which the
    # store holds and the PACS was sent.
    mapped = query(
        db, "SELECT sop_uid, received_digest, reconciled_digest FROM reconciled_instances"
    )
    assert {uid: received for uid, received, _ in mapped} == sent
    assert {uid: result for uid, _, result in mapped} == stored
    for uid, digest in stored.items():
        data = read_stored(rx.config.data_dir, digest)
        assert hashlib.sha256(data).hexdigest() == digest
        assert dataset(pacs[uid]) == data[scan(data).dataset_offset :]  # what B stores, B sent
    # A's received records went (the store keeps the local version only).
    for received in sent.values():
        assert not query(db, "SELECT 1 FROM segment_records WHERE digest = ?", received)
    actions = [a for (a,) in query(db, "SELECT action FROM audit ORDER BY id")]
    assert actions.index("reconciled") < actions.index("delivered")
    [(patient, study, detail)] = query(
        db, "SELECT patient_id, study_uid, detail FROM audit WHERE action = 'reconciled'"
    )
    assert (patient, study) == ("B-7007", receipt.study_instance_uid)
    # Rewritten as they arrived (the received bytes were never stored as such).
    assert f"{len(sources)} instances as they arrived" in detail


async def test_an_unmatched_study_is_held_until_an_operator_names_the_patient(
    orgs: Pki, tmp_path: Path
) -> None:
    source = make_study(tmp_path / "study", 3, seed=7)
    sources = study_files(source)
    pacs_port = closed_port()
    path = b_toml(orgs, tmp_path / "b", pacs_port, RECONCILE_FROM_A)
    (tmp_path / "b" / "patients.csv").write_text(
        "local_patient_id,nhs_number\nB-NHS,9434765919\n"  # nobody A sends
    )
    with storescp(tmp_path / "pacs", pacs_port), anyio.fail_after(TIMEOUT):
        async with Node(NodeConfig.from_toml(path)) as rx:
            assert rx.port is not None
            async with trust_a(orgs, tmp_path, rx.port) as tx:
                receipt = await (await tx.send(source, to="RX2")).wait()  # committed all the same
            study = receipt.study_instance_uid
            db = rx.config.data_dir / "ledger.sqlite"
            while not query(db, "SELECT 1 FROM reconciliations WHERE state = 'held'"):
                await anyio.sleep(0.05)
            assert query(db, "SELECT count(*) FROM deliveries") == [(0,)]  # not delivered

            status = await anyio.to_thread.run_sync(cli, "status", "--json", "--config", str(path))
            assert status.returncode == 0, status.stderr
            report = orjson.loads(status.stdout)
            [needs] = report["needs_reconciliation"]
            assert (needs["study"], needs["from"], needs["patient_id"]) == (
                study,
                "RX1",
                SENDER_PATIENT,
            )
            assert "no local patient" in needs["reason"]
            assert report["counts"]["reconciliations_held"] == 1
            text = await anyio.to_thread.run_sync(cli, "status", "--config", str(path))
            assert f"{study}  from RX1  patient '{SENDER_PATIENT}'" in text.stdout
            listed = await anyio.to_thread.run_sync(
                cli, "reconcile", "--list", "--json", "--config", str(path)
            )
            assert orjson.loads(listed.stdout)["needs_reconciliation"][0]["study"] == study

            wrong = await anyio.to_thread.run_sync(
                cli, "reconcile", "1.2.3.4", "--patient-id", "B-1", "--config", str(path)
            )
            assert wrong.returncode == 2
            assert "no study 1.2.3.4 was held" in wrong.stderr
            resolved = await anyio.to_thread.run_sync(
                cli,
                "reconcile",
                study,
                "--patient-id",
                "B-5555",
                "--issuer",
                "TRUSTB",
                "--config",
                str(path),
            )
            assert resolved.returncode == 0, resolved.stderr
            assert "reconciled to patient B-5555" in resolved.stdout
            pacs = await wait_for_files(tmp_path / "pacs", len(sources))
            again = await anyio.to_thread.run_sync(
                cli, "reconcile", study, "--patient-id", "B-1", "--config", str(path)
            )
            assert again.returncode == 2
            assert "not held (it is reconciled)" in again.stderr

    assert_reconciled(pacs, sources, patient="B-5555", issuer="TRUSTB")
    audit = query(db, "SELECT action, patient_id FROM audit WHERE study_uid = ? ORDER BY id", study)
    actions = [a for a, _ in audit]
    assert actions.index("reconcile-held") < actions.index("reconcile-resolved")
    assert actions.index("reconcile-resolved") < actions.index("reconciled")
    assert actions.index("reconciled") < actions.index("delivered")
    assert ("reconcile-held", SENDER_PATIENT) in audit
    assert ("reconcile-resolved", "B-5555") in audit


async def test_a_study_bs_inbound_rules_refuse_is_refused_to_a_and_audited(
    orgs: Pki, tmp_path: Path
) -> None:
    source = make_study(tmp_path / "study", 3, seed=7)  # MR
    path = b_toml(orgs, tmp_path / "b", closed_port(), REFUSE_MR)
    with anyio.fail_after(TIMEOUT):
        async with Node(NodeConfig.from_toml(path)) as rx:
            assert rx.port is not None
            async with trust_a(orgs, tmp_path, rx.port) as tx:
                transfer = await tx.send(source, to="RX2")
                with pytest.raises(TransferFailed) as refused:
                    await transfer.wait()
                [(state, attempts, error)] = query(
                    tx.config.data_dir / "ledger.sqlite",
                    "SELECT state, attempts, last_error FROM outgoing",
                )
            db = rx.config.data_dir / "ledger.sqlite"
            rows = query(
                db,
                "SELECT org, transfer_id, study_uid, patient_id, detail FROM audit"
                " WHERE action = 'policy-refused'",
            )
            committed = await rx.ledger.counts()
    assert isinstance(refused.value, RefusedByReceiver)
    assert isinstance(refused.value, PolicyRefused)  # caught as either
    assert f"transfer {transfer.id} failed: refused by the receiver's policy:" in str(refused.value)
    assert "no rule allows MR from RX1" in str(refused.value)
    assert (state, attempts) == ("dead", 1)  # not retried: the rules will not change their mind
    assert "no rule allows MR from RX1 (trust)" in error
    [(org, transfer_id, study, patient, detail)] = rows
    assert (org, transfer_id, patient) == ("RX1", transfer.id, SENDER_PATIENT)
    assert study == scan_file(study_files(source)[0]).study_instance_uid
    assert "no rule allows MR from RX1" in detail
    assert committed["received_committed"] == 0
    assert committed["stored_instances"] == 0


async def test_send_tells_a_receivers_policy_refusal_in_one_line(orgs: Pki, tmp_path: Path) -> None:
    """``dicomrelay send`` ends with one line naming the receiver's refusal,
    exit status 1."""
    source = make_study(tmp_path / "study", 2, seed=7)  # MR
    path = b_toml(orgs, tmp_path / "b", closed_port(), REFUSE_MR)
    with anyio.fail_after(TIMEOUT):
        async with Node(NodeConfig.from_toml(path)) as rx:
            assert rx.port is not None
            a = node_toml(
                tmp_path / "rx1.toml",
                orgs.identity("RX1"),
                data_dir=tmp_path / "a",
                peer=("RX2", rx.port),
            )
            sent = await anyio.to_thread.run_sync(
                dicomrelay, "send", str(source), "--to", "RX2", "--config", str(a)
            )
    assert sent.returncode == 1, sent.stderr
    assert "Traceback" not in sent.stderr
    lines = sent.stderr.strip().splitlines()
    told = [line for line in lines if "no rule allows MR from RX1" in line]
    assert told == [lines[-1]]  # told once, as the command's last line
    assert lines[-1].endswith(
        "failed: refused by the receiver's policy: no rule allows MR from RX1 (trust)"
    )
    assert sent.stdout == ""  # no receipt


async def test_what_cannot_be_coerced_cleanly_is_held_not_cut(orgs: Pki, tmp_path: Path) -> None:
    """A prefix that would make the accession number longer than its 16
    characters holds the study (nothing delivered, nothing rewritten in the
    store), with the reason, rather than cutting the number short."""
    source = make_study(tmp_path / "study", 2, seed=7)  # accession ACC000007: 9 characters
    pacs_port = closed_port()
    rules = RECONCILE_FROM_A.replace('accession_prefix = "A-"', 'accession_prefix = "TRUST-B-"')
    path = b_toml(orgs, tmp_path / "b", pacs_port, rules)
    (tmp_path / "b" / "patients.csv").write_text(
        f"sender,issuer,patient_id,local_patient_id\nRX1,DICOMRELAY,{SENDER_PATIENT},B-7007\n"
    )
    with anyio.fail_after(TIMEOUT):
        async with Node(NodeConfig.from_toml(path)) as rx:
            assert rx.port is not None
            async with trust_a(orgs, tmp_path, rx.port) as tx:
                receipt = await (await tx.send(source, to="RX2")).wait()
            db = rx.config.data_dir / "ledger.sqlite"
            while not (
                held_rows := query(db, "SELECT reason FROM reconciliations WHERE state = 'held'")
            ):
                await anyio.sleep(0.05)
            stored = await rx.study(receipt.study_instance_uid)
    [(reason,)] = held_rows
    assert "TRUST-B-ACC000007" in reason
    assert "longer than 16 characters" in reason
    # The store still holds exactly what was received; nothing went to a PACS.
    assert sorted(d for _, d in stored) == sorted(i.digest for i in receipt.instances)
    assert query(db, "SELECT count(*) FROM deliveries") == [(0,)]
    assert query(db, "SELECT count(*) FROM reconciled_instances") == [(0,)]


async def test_an_embedding_service_looks_the_patient_up(orgs: Pki, tmp_path: Path) -> None:
    """From Python, ``Reconcile(lookup=...)``: an async callable is asked, once,
    for the local patient of an NHS-numbered patient; what the node stores
    is filed under the answer."""
    source = make_study(tmp_path / "study", 3, seed=7)
    nhs = [
        Set(tag=0x00100020, value="9434765919", vr="LO"),
        Set(tag=0x00100021, value="NHS", vr="LO"),
    ]
    for path in study_files(source):
        rewrite_file(path, path, nhs)
    asked: list[ForeignPatient] = []

    async def lookup(patient: ForeignPatient) -> LocalPatient | None:
        asked.append(patient)
        await anyio.sleep(0)
        return LocalPatient(patient_id=f"B-{patient.nhs_number}") if patient.nhs_number else None

    rule = Rule(
        name="embedded",
        direction="receive",
        allow=True,
        orgs=frozenset({"RX1"}),
        reconcile=Reconcile(lookup=lookup, local_issuer="TRUSTB"),
    )
    config = dataclasses.replace(receiver_config(orgs, tmp_path), rules=(rule,))
    with anyio.fail_after(TIMEOUT):
        async with Node(config) as rx:
            assert rx.port is not None
            async with trust_a(orgs, tmp_path, rx.port) as tx:
                receipt = await (await tx.send(source, to="RX2")).wait()
            db = rx.config.data_dir / "ledger.sqlite"
            while query(db, "SELECT state FROM reconciliations") != [("reconciled",)]:
                await anyio.sleep(0.05)
            stored = [
                pydicom.dcmread(io.BytesIO(bytes(await rx.store.read_instance(digest))))
                for _uid, digest in await rx.study(receipt.study_instance_uid)
            ]
    assert asked == [ForeignPatient(sender="RX1", patient_id="9434765919", issuer="NHS")]
    assert len(stored) == 3
    for ds in stored:
        assert (ds.PatientID, ds.IssuerOfPatientID) == ("B-9434765919", "TRUSTB")
        [other] = ds.OtherPatientIDsSequence
        assert (other.PatientID, other.IssuerOfPatientID) == ("9434765919", "NHS")


async def test_a_study_naming_two_patients_is_held_and_never_split(
    orgs: Pki, tmp_path: Path
) -> None:
    """The first instances are filed under B's patient as they arrive; one
    naming another patient holds the study. An operator naming a third patient
    would split it, so that is refused (held, with why); naming the patient
    the others were filed under files the rest there too."""
    source = make_study(tmp_path / "study", 3, seed=7)
    odd = study_files(source)[1]
    rewrite_file(odd, odd, [Set(tag=0x00100020, value="OTHER-1", vr="LO")])
    path = b_toml(orgs, tmp_path / "b", closed_port(), RECONCILE_FROM_A)
    (tmp_path / "b" / "patients.csv").write_text(
        f"sender,issuer,patient_id,local_patient_id\nRX1,DICOMRELAY,{SENDER_PATIENT},B-7007\n"
    )

    async def reason(db: Path, after: int) -> str:
        while True:
            rows = query(
                db,
                "SELECT r.reason FROM reconciliations r WHERE r.state = 'held'"
                " AND (SELECT count(*) FROM audit WHERE action = 'reconcile-held') > ?",
                after,
            )
            if rows:
                return str(rows[0][0])
            await anyio.sleep(0.05)

    def resolve(patient: str) -> subprocess.CompletedProcess[str]:
        return cli("reconcile", study, "--patient-id", patient, "--config", str(path))

    with anyio.fail_after(TIMEOUT):
        async with Node(NodeConfig.from_toml(path)) as rx:
            assert rx.port is not None
            async with trust_a(orgs, tmp_path, rx.port) as tx:
                receipt = await (await tx.send(source, to="RX2")).wait()
            study = receipt.study_instance_uid
            db = rx.config.data_dir / "ledger.sqlite"
            first = await reason(db, 0)
            wrong = await anyio.to_thread.run_sync(resolve, "B-9999")
            second = await reason(db, 1)
            right = await anyio.to_thread.run_sync(resolve, "B-7007")
            stored = [
                pydicom.dcmread(io.BytesIO(bytes(await rx.store.read_instance(digest))))
                for _uid, digest in await rx.study(study)
            ]
    assert "names patient 'OTHER-1', not 'SYN00000007'" in first
    assert wrong.returncode == 1
    assert "filed under 'B-7007' as they arrived" in second
    assert right.returncode == 0, right.stderr
    assert sorted(ds.PatientID for ds in stored) == ["B-7007"] * 3
    [odd_one] = [ds for ds in stored if ds.OtherPatientIDsSequence[0].PatientID == "OTHER-1"]
    [previous] = odd_one.OriginalAttributesSequence[0].ModifiedAttributesSequence
    assert previous.PatientID == "OTHER-1"
