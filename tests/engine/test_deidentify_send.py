"""A study for a research organisation leaves de-identified, through a real
second node: every instance the research node stores is read with pydicom
and held against Table E.1-1 and its original; UIDs stay consistent within
the study and are the same when sent again with the same key; instances
whose pixels may show identity are held in the quarantine (the rest of the
study goes), and one released later joins the same de-identified study."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from io import BytesIO
from pathlib import Path

import anyio
import pydicom
import pytest
from pydicom.dataset import Dataset, FileDataset
from pydicom.tag import Tag

from deid_reference import read, remapped_uid
from dicomrelay import quarantine, scan, synth
from dicomrelay.audit import AuditQuery
from dicomrelay.config import Peer, Route, StoreConfig
from dicomrelay.deidentify import Option, resolved_action
from dicomrelay.errors import StudyHeld
from dicomrelay.instance_store import InstanceStore, Record
from dicomrelay.intake import queue
from dicomrelay.ledger import HoldState, TransferState
from dicomrelay.node import Node
from dicomrelay.policy import Deidentify, PolicyRefused, Rule
from dicomrelay.retention import DAY, StoreKeeper
from dicomrelay.rewrite import Set, rewrite_file
from test_deidentify_study import make_study, uids
from test_deidentify_table import TABLE, check_row, originals, output_elements

from .chain_helpers import routing_node, run, storescu_args
from .helpers import QUICK, Pki, closed_port, node_config, peer, query

pytestmark = pytest.mark.anyio

OPTIONS = ("retain-longitudinal-modified-dates", "retain-patient-characteristics")
BURNED_IN_ANNOTATION = 0x00280301


def research_rule(key: Path, **more: object) -> Rule:
    deidentify = Deidentify(options=OPTIONS, key_file=key, **more)  # type: ignore[arg-type]
    return Rule(
        name="research",
        direction="send",
        allow=True,
        roles=frozenset({"research"}),
        modalities=frozenset({"CT", "OT"}),
        deidentify=deidentify,
    )


@asynccontextmanager
async def research_pair(
    orgs: Pki, root: Path, key: Path, *, rule: Rule | None = None
) -> AsyncIterator[tuple[Node, Node]]:
    """RES1 (a research organisation, listening) and RX1, whose rule for
    research destinations de-identifies with ``key``."""
    receiver = node_config(
        "RES1",
        root / "res1",
        identity=orgs.identity("RES1"),
        peers=(peer("RX1", 1),),
        listen_port=0,
    )
    async with Node(receiver) as rx:
        assert rx.port is not None
        sender = node_config(
            "RX1",
            root / "rx1",
            identity=orgs.identity("RX1"),
            peers=(Peer(code="RES1", host="127.0.0.1", port=rx.port, role="research"),),
        )
        sender = dataclasses.replace(sender, rules=(rule or research_rule(key),))
        async with Node(sender) as tx:
            yield tx, rx


def build_study(folder: Path) -> tuple[list[Path], Path, Path]:
    """Six CT instances in two series that reference each other (from
    pydicom's CT_small: names, dates, IDs, private elements), a seventh CT
    whose Burned In Annotation is YES, and a secondary capture without that
    attribute, all of one study."""
    ct = make_study(folder)
    study = read(ct[0]).StudyInstanceUID
    burned = folder / "burned.dcm"
    ds = read(ct[0])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.BurnedInAnnotation = "YES"
    ds.save_as(burned)
    capture_dir = synth.write_study(folder.parent / "capture", synth.PROFILES["small"], 1)
    capture = folder / "capture.dcm"
    source = next(capture_dir.iterdir())
    rewrite_file(source, capture, [Set(tag=0x0020000D, value=study, vr="UI")])
    return ct, burned, capture


def key_file(root: Path, name: str = "project.key") -> Path:
    path = root / name
    path.write_text(os.urandom(32).hex() + "\n")
    return path


async def received_bytes(rx: Node, study: str) -> dict[str, bytes]:
    """What the research node stored of ``study``, by SOP Instance UID."""
    return {
        sop: bytes(await rx.store.read_instance(digest)) for sop, digest in await rx.study(study)
    }


async def received(rx: Node, study: str) -> dict[str, FileDataset]:
    """What the research node stored of ``study``, read by pydicom, by SOP Instance UID."""
    return {
        sop: pydicom.dcmread(BytesIO(data))
        for sop, data in (await received_bytes(rx, study)).items()
    }


# What identifies CT_small's patient, and where it was made, as text.
IDENTIFYING = ("PatientName", "PatientID", "InstitutionName", "StationName", "StudyID")


def assert_nothing_identifying(data: bytes, before: Dataset) -> None:
    """No identifying value, nor any instance UID, of the original is
    anywhere in the bytes that arrived (the pixel data apart)."""
    header = data[: data.rfind(b"\xe0\x7f\x10\x00")]  # up to (7FE0,0010)
    values = [str(before.get(k)) for k in IDENTIFYING if before.get(k)]
    values += [before.StudyInstanceUID, before.SeriesInstanceUID, before.SOPInstanceUID]
    values += [before.FrameOfReferenceUID]
    assert len(values) == 9
    for value in values:
        assert value.encode() not in header, f"{value!r} arrived"


def check_deidentified(after: Dataset, before_path: Path, key: bytes) -> None:
    """One received instance against Table E.1-1 and its original."""
    before_ds = read(before_path)
    before = originals(before_ds)
    for tag, elem in output_elements(after):
        assert not Tag(tag).is_private, f"private ({tag:08X}) kept"
        row = TABLE.row(tag)
        if row is None:
            continue
        # The options this rule takes: dates move, characteristics stay.
        action = resolved_action(row, {Option(o) for o in OPTIONS})
        if action in ("K", "C"):
            continue
        check_row(row, action, tag, elem, before.get(tag, set()))
    assert after.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in after.DeidentificationMethodCodeSequence]
    assert codes[0] == "113100"  # the Basic Profile, then each option's code
    assert set(codes[1:]) == {"113107", "113108"}
    assert after.LongitudinalTemporalInformationModified == "MODIFIED"
    assert after.PatientName != before_ds.PatientName
    assert after.PatientID != before_ds.PatientID
    assert after.StudyDate != before_ds.StudyDate
    # The pixels travel as they were.
    assert after.PixelData == before_ds.PixelData
    assert after.SOPInstanceUID == remapped_uid(key, before_ds.SOPInstanceUID)
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID


async def test_a_research_destination_gets_de_identified_data_only(
    orgs: Pki, tmp_path: Path
) -> None:
    ct, burned, capture = build_study(tmp_path / "study")
    folder = ct[0].parent
    key_path = key_file(tmp_path)
    key = key_path.read_bytes().strip()
    original = read(ct[0])
    new_study = remapped_uid(key, original.StudyInstanceUID)
    async with research_pair(orgs, tmp_path, key_path) as (tx, rx):
        transfer = await tx.send(folder, to="RES1")
        receipt = await transfer.wait()
        # The study went, less what its pixels may identify.
        assert sorted(h.reason.split()[0] for h in transfer.held) == ["Burned", "Secondary"]
        assert receipt.study_instance_uid == new_study
        first = await received(rx, new_study)
        assert len(first) == len(ct)
        by_sop = {remapped_uid(key, read(p).SOPInstanceUID): p for p in ct}
        for sop, ds in first.items():
            check_deidentified(ds, by_sop[sop], key)
        for sop, data in (await received_bytes(rx, new_study)).items():
            assert_nothing_identifying(data, read(by_sop[sop]))
        # Nothing of the originals' UIDs arrived; references follow their instances.
        sent = list(first.values())
        assert {ds.StudyInstanceUID for ds in sent} == {new_study}
        assert len({ds.SeriesInstanceUID for ds in sent}) == 2
        assert len({ds.FrameOfReferenceUID for ds in sent}) == 1
        source_uids = {u for p in ct for u in uids(read(p))}
        kept = {u for ds in sent for u in uids(ds)} & source_uids
        assert kept <= {original.SOPClassUID, original.file_meta.TransferSyntaxUID}
        for ds in sent:
            for item in ds.get("SourceImageSequence", []):
                assert item.ReferencedSOPInstanceUID in first
        # The spool went with the transfer; the held copies stay.
        assert not list((tx.config.data_dir / "outbox").rglob("spool"))
        held = await tx.ledger.held_instances()
        assert {h.sop_uid for h in held} == {
            read(burned).SOPInstanceUID,
            read(capture).SOPInstanceUID,
        }
        assert all(Path(h.location).read_bytes() == Path(
            burned if h.sop_uid == read(burned).SOPInstanceUID else capture
        ).read_bytes() for h in held)  # fmt: skip

        # Sent again with the same key: the same UIDs, the same bytes (the
        # research node already holds them all).
        again = await tx.send(folder, to="RES1")
        second = await again.wait()
        assert {h.id for h in again.held} == {h.id for h in held}
        assert second.study_instance_uid == new_study
        assert sorted(i.digest for i in second.instances) == sorted(
            i.digest for i in receipt.instances
        )
        assert (await received(rx, new_study)).keys() == first.keys()

        # An operator looks at the burned-in CT's pixels and releases it: it
        # goes de-identified, into the same de-identified study.
        [burned_hold] = [h for h in held if h.sop_uid == read(burned).SOPInstanceUID][:1]
        released = await quarantine.release(tx.config, tx.ledger, burned_hold.id)
        await tx.take(released.transfer.id).wait()
        after = await received(rx, new_study)
        new_sop = remapped_uid(key, read(burned).SOPInstanceUID)
        assert set(after) == set(first) | {new_sop}
        check_deidentified(after[new_sop], burned, key)
        assert after[new_sop].BurnedInAnnotation == "YES"
        assert not Path(burned_hold.location).exists()
        state = await tx.ledger.held_instance(burned_hold.id)
        assert state is not None
        assert state.state is HoldState.RELEASED
        assert state.resolution == released.transfer.id
        actions = [r.action for r in await tx.ledger.audit_trail(AuditQuery())]
        # The original study's trail (and its patient's) includes the
        # de-identified copies' transfers: made, sent, released.
        for query in (
            AuditQuery(study_uid=original.StudyInstanceUID),
            AuditQuery(patient_id=original.PatientID),
        ):
            trail = await tx.ledger.audit_trail(query)
            carried = {r.transfer_id for r in trail if r.action == "sent"}
            assert carried == {transfer.id, again.id, released.transfer.id}, query
    assert actions.count("deidentified") == 3
    assert actions.count("quarantined") == 2  # held once, though sent twice
    assert "quarantine-released" in actions
    # What the research node knows of the patient: nothing of the original's.
    assert original.PatientID not in {ds.PatientID for ds in after.values()}


async def test_another_key_gives_unrelated_uids(orgs: Pki, tmp_path: Path) -> None:
    ct = make_study(tmp_path / "study")
    studies = []
    for name in ("one", "two"):
        key = key_file(tmp_path, f"{name}.key")
        async with research_pair(orgs, tmp_path / name, key) as (tx, _rx):
            receipt = await (await tx.send(ct[0].parent, to="RES1")).wait()
            studies.append(receipt.study_instance_uid)
    assert studies[0] != studies[1]
    assert read(ct[0]).StudyInstanceUID not in studies


async def test_refused_at_send_before_anything_is_made(orgs: Pki, tmp_path: Path) -> None:
    """MR is not among the research rule's modalities: refused whole, with
    nothing spooled, held or queued, and the refusal audited."""
    key_path = key_file(tmp_path)
    mr = synth.write_study(tmp_path / "mr", synth.PROFILES["mr"], 3)
    async with research_pair(orgs, tmp_path, key_path) as (tx, _rx):
        with pytest.raises(PolicyRefused, match=r"no rule allows MR to RES1 \(research\)"):
            await tx.send(mr, to="RES1")
        assert await tx.ledger.all_outgoing() == []
        assert await tx.ledger.held_instances(None) == []
        trail = await tx.ledger.audit_trail(AuditQuery())
    assert [r.action for r in trail] == ["policy-refused"]
    assert not any((tx.config.data_dir / "outbox").rglob("*"))
    assert not (tx.config.data_dir / "quarantine").exists()


async def test_a_study_all_held_is_not_queued(orgs: Pki, tmp_path: Path) -> None:
    key_path = key_file(tmp_path)
    captures = synth.write_study(tmp_path / "sc", synth.PROFILES["small"], 2)
    async with research_pair(orgs, tmp_path, key_path) as (tx, _rx):
        with pytest.raises(StudyHeld, match="all 2 instances held in quarantine"):
            await tx.send(captures, to="RES1")
        assert await tx.ledger.all_outgoing() == []
        held = await tx.ledger.held_instances()
        assert len(held) == 2
        assert all(h.kind == "burned-in-annotation" and h.org == "RES1" for h in held)
        assert (await tx.status())["held"] == 2
        # Released under rules that no longer allow it: refused, still held.
        ct_only = dataclasses.replace(research_rule(key_path), modalities=frozenset({"CT"}))
        stricter = dataclasses.replace(tx.config, rules=(ct_only,))
        with pytest.raises(PolicyRefused, match=r"no rule allows OT to RES1"):
            await quarantine.release(stricter, tx.ledger, held[1].id)
        still = await tx.ledger.held_instance(held[1].id)
        assert still is not None
        assert still.state is HoldState.HELD
        assert Path(still.location).exists()
        assert await tx.ledger.all_outgoing() == []
        # Deleted: the bytes go, the record stays.
        gone = await quarantine.delete(tx.config, tx.ledger, held[0].id)
        assert not Path(gone.location).exists()
        assert (await tx.status())["held"] == 1
    assert not list((tx.config.data_dir / "outbox").rglob("spool"))


async def test_allow_burned_in_sends_the_whole_study(orgs: Pki, tmp_path: Path) -> None:
    ct, _burned, _capture = build_study(tmp_path / "study")
    key_path = key_file(tmp_path)
    rule = research_rule(key_path, allow_burned_in=True)
    async with research_pair(orgs, tmp_path, key_path, rule=rule) as (tx, rx):
        transfer = await tx.send(ct[0].parent, to="RES1")
        receipt = await transfer.wait()
        assert transfer.held == ()
        assert len(receipt.instances) == len(ct) + 2
        stored = await received(rx, receipt.study_instance_uid)
    assert sum(1 for ds in stored.values() if ds.get("BurnedInAnnotation") == "YES") == 1


async def test_routed_from_the_store_leaves_de_identified(orgs: Pki, tmp_path: Path) -> None:
    """What the node's store holds (as its DICOM SCP keeps what a PACS sent)
    goes to a research destination de-identified, read from its segment."""
    ct = make_study(tmp_path / "study")
    key_path = key_file(tmp_path)
    key = key_path.read_bytes().strip()
    async with research_pair(orgs, tmp_path, key_path) as (tx, rx):
        # The sender keeps a store only when it receives: give it one.
        store = await InstanceStore.open(tmp_path / "rx1-store", tx.ledger, segment_size=4 << 20)
        try:
            records = []
            for path in ct:
                data = path.read_bytes()
                info = scan(data, digest="sha256")
                assert info.digest is not None
                records.append(Record(data, info.digest, "sha256"))
            await store.write_round(records, [])
            tx.outbox.store = store
            transfer = await tx.outbox.send_stored([r.digest for r in records], to="RES1")
            receipt = await transfer.wait()
        finally:
            store.close()
        stored = await received(rx, receipt.study_instance_uid)
    by_sop = {remapped_uid(key, read(p).SOPInstanceUID): p for p in ct}
    assert stored.keys() == by_sop.keys()
    for sop, ds in stored.items():
        check_deidentified(ds, by_sop[sop], key)


async def test_a_route_from_the_pacs_leaves_de_identified(orgs: Pki, tmp_path: Path) -> None:
    """A modality stores a study into the node's DICOM SCP (DCMTK storescu);
    its route names the research organisation: the study goes on from the
    node's store, de-identified. Each de-identified copy names the stored
    instance it was made from, so retention drops those once it is sent."""
    ct = make_study(tmp_path / "study")
    key_path = key_file(tmp_path)
    key = key_path.read_bytes().strip()
    receiver = node_config(
        "RES1", tmp_path / "res1", identity=orgs.identity("RES1"), peers=(peer("RX1", 1),),
        listen_port=0,
    )  # fmt: skip
    async with Node(receiver) as rx:
        assert rx.port is not None
        config = routing_node(orgs, tmp_path / "rx1", rx.port, (Route(to="RES1"),))
        research = Peer(code="RES1", host="127.0.0.1", port=rx.port, role="research")
        config = dataclasses.replace(config, peers=(research,), rules=(research_rule(key_path),))
        async with Node(config) as tx:
            assert tx.dicom_port is not None
            args = storescu_args(tx.dicom_port, ct, proposal=None)
            result = await anyio.to_thread.run_sync(run, args)
            assert result.returncode == 0, result.stderr
            with anyio.fail_after(60):
                while not (done := await tx.ledger.all_outgoing(state=TransferState.DONE)):
                    await anyio.sleep(0.05)
            [transfer] = done
            assert transfer.study_instance_uid == remapped_uid(key, read(ct[0]).StudyInstanceUID)
            stored = await received(rx, transfer.study_instance_uid)
            rows = query(
                tx.config.data_dir / "ledger.sqlite",
                "SELECT origin, digest, path FROM outgoing_instances ORDER BY idx",
            )
            origins = [origin for origin, _, _ in rows]
            kept_before = await tx.store.locations(origins)
            keeper = StoreKeeper(tx.store, StoreConfig(segment_mb=4, keep_days=1))
            await keeper.sweep(transfer.created + DAY / 2)  # sent less than a day before
            kept_young = await tx.store.locations(origins)
            await keeper.sweep(time.time() + 2 * DAY)
            kept_after = await tx.store.locations(origins)
    assert len(rows) == len(ct)
    for origin, digest, path in rows:
        assert origin is not None  # the stored original, not the copy sent
        assert origin != digest
        assert not path.startswith("store:")
    assert kept_before.keys() == kept_young.keys() == set(origins)
    assert kept_after == {}
    by_sop = {remapped_uid(key, read(p).SOPInstanceUID): p for p in ct}
    assert stored.keys() == by_sop.keys()
    for sop, ds in stored.items():
        check_deidentified(ds, by_sop[sop], key)


async def test_a_study_de_identified_two_ways_is_refused(orgs: Pki, tmp_path: Path) -> None:
    """One transfer carries one study: rules that would de-identify its
    instances differently (so that they would arrive as two studies) refuse it."""
    ct, _burned, _capture = build_study(tmp_path / "study")
    key_path = key_file(tmp_path)
    ct_rule = dataclasses.replace(research_rule(key_path), name="ct", modalities=frozenset({"CT"}))
    other = Deidentify(options=("retain-uids",), key_file=key_path)
    ot_rule = dataclasses.replace(
        research_rule(key_path), name="ot", modalities=frozenset({"OT"}), deidentify=other
    )
    async with research_pair(orgs, tmp_path, key_path) as (tx, _rx):
        config = dataclasses.replace(tx.config, rules=(ct_rule, ot_rule))
        with pytest.raises(PolicyRefused, match="rules ct, ot transform its instances differently"):
            await queue(config, tx.ledger, ct[0].parent, to="RES1", priority="routine")
        assert await tx.ledger.all_outgoing() == []
        [row] = await tx.ledger.audit_trail(AuditQuery())
    assert row.action == "policy-refused"


async def test_a_spooled_transfer_resumes_after_a_restart(orgs: Pki, tmp_path: Path) -> None:
    """The research node is down: the de-identified copy waits in its spool
    through the sender's restart, goes once the research node is up, and its
    spool goes with it."""
    ct = make_study(tmp_path / "study")
    key_path = key_file(tmp_path)
    key = key_path.read_bytes().strip()
    port = closed_port()
    sender = node_config(
        "RX1",
        tmp_path / "rx1",
        identity=orgs.identity("RX1"),
        peers=(Peer(code="RES1", host="127.0.0.1", port=port, role="research"),),
        limits=dataclasses.replace(QUICK, max_attempts=10_000, backoff_cap=0.2),
    )
    sender = dataclasses.replace(sender, rules=(research_rule(key_path),))
    async with Node(sender) as tx:
        transfer = await tx.send(ct[0].parent, to="RES1")

        async def attempted() -> bool:
            row = await tx.ledger.outgoing(transfer.id)
            return row is not None and row.attempts > 0

        with anyio.fail_after(30):
            while not await attempted():  # and failed: nobody listens there yet
                await anyio.sleep(0.02)
    [spool_file] = list((tmp_path / "rx1" / "outbox").rglob("spool"))
    receiver = node_config(
        "RES1",
        tmp_path / "res1",
        identity=orgs.identity("RES1"),
        peers=(peer("RX1", 1),),
        listen_port=port,
    )
    async with Node(receiver) as rx, Node(sender) as tx:
        assert spool_file.exists()
        with anyio.fail_after(60):
            receipt = await tx.take(transfer.id).wait()
        stored = await received(rx, receipt.study_instance_uid)
    assert receipt.study_instance_uid == remapped_uid(key, read(ct[0]).StudyInstanceUID)
    assert len(stored) == len(ct)
    assert not spool_file.parent.exists()
