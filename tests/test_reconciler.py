"""The Reconciler's store-side pieces without a network: a record written from
parts reads back as the parts joined (and verifies against its digest); a
transfer the receiving session planned is left alone until it is committed;
an instance rewritten as it arrives is stored rewritten, in the round's own
ledger transaction with its received digest mapped."""

from __future__ import annotations

import datetime
import hashlib
import io
import math
from pathlib import Path

import anyio
import pydicom
import pytest

from dicomrelay import synth
from dicomrelay._native import SegmentStore
from dicomrelay.config import NodeConfig, Peer
from dicomrelay.instance_store import InstanceStore, OnTheWay, Record
from dicomrelay.ledger import IncomingInstance, memory_ledger
from dicomrelay.policy import Rule
from dicomrelay.receiver_control import StudyCommitted
from dicomrelay.reconcile import (
    ForeignPatient,
    LocalPatient,
    Reconcile,
    plan_reconciliation,
)
from dicomrelay.reconciler import Reconciler

pytestmark = pytest.mark.anyio
TID = "c" * 32


def test_a_record_of_parts_reads_back_joined(tmp_path: Path) -> None:
    parts: list[bytes | memoryview] = [
        b"header-bytes",
        memoryview(b"0123456789" * 1000)[5:9005],
        b"",
        b"trailer",
    ]
    joined = b"".join(bytes(p) for p in parts)
    digest = hashlib.sha256(joined).hexdigest()
    with SegmentStore(tmp_path, durable_end=None, segment_size=1 << 20) as store:
        where = store.append_parts(parts, digest)
        store.commit()
        assert where[2] == len(joined)
        assert bytes(store.read(where, digest, verify=True)) == joined


def instance(patient: str = "SYN00000003") -> bytes:
    profile = synth.PROFILES["mr"]
    return synth.instance(
        profile,
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        sop_uid="1.2.3.4.5",
        number=1,
        patient_id=patient,
        pixels=bytes(range(256)) * (profile.pixel_bytes // 256),
    )


async def test_an_instance_rewritten_on_the_way_is_stored_rewritten(tmp_path: Path) -> None:
    ledger = memory_ledger()
    store = await InstanceStore.open(tmp_path / "segments", ledger, segment_size=1 << 22)
    try:
        data = instance()
        received = hashlib.sha256(data).hexdigest()
        edits = plan_reconciliation(
            {0x00100020: "SYN00000003", 0x00100021: "DICOMRELAY"},
            foreign=ForeignPatient(sender="RX1", patient_id="SYN00000003", issuer="DICOMRELAY"),
            local=LocalPatient(patient_id="B-3", issuer="TB"),
            rule=Reconcile(table="patient_mapping"),
            modifying_system="dicomrelay RX2",
            now=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        )
        way = OnTheWay(
            edits=edits, sender="RX1", transfer_id=TID, study_uid="1.2.3", sop_uid="1.2.3.4.5"
        )
        row = IncomingInstance(
            index=0, sop_instance_uid="1.2.3.4.5", size=len(data), digest=received, stored=1.0
        )
        await ledger.note_incoming("RX1", TID, "1.2.3", 1, "sha256")
        await store.write_round([Record(data, received, "sha256", way)], [("RX1", TID, row)])
        [mapped] = await ledger.reconciled_instances("RX1", TID)
        assert mapped.received_digest == received
        assert await store.locate(received) is None  # the received bytes were not stored
        stored = bytes(await store.read_instance(mapped.reconciled_digest))
        ds = pydicom.dcmread(io.BytesIO(stored))
        assert (ds.PatientID, ds.IssuerOfPatientID) == ("B-3", "TB")
        assert ds.PixelData == pydicom.dcmread(io.BytesIO(data)).PixelData
        # The commit stores the rewritten instance under the study, not what was received.
        await ledger.commit_incoming("RX1", TID, "1.2.3", b"{}", 2.0)
        assert await ledger.study("1.2.3") == [("1.2.3.4.5", mapped.reconciled_digest, mapped.size)]
    finally:
        store.close()
        await ledger.close()


async def test_a_planned_transfer_waits_for_its_commit(tmp_path: Path) -> None:
    ledger = memory_ledger()
    store = await InstanceStore.open(tmp_path / "segments", ledger, segment_size=1 << 22)
    config = NodeConfig(
        org="RX2",
        data_dir=tmp_path,
        insecure_plaintext=True,
        peers=(Peer(code="RX1", host="127.0.0.1", port=1),),
        rules=(
            Rule(
                name="r",
                direction="receive",
                allow=True,
                reconcile=Reconcile(table="patient_mapping"),
            ),
        ),
    )
    send, receive = anyio.create_memory_object_stream[StudyCommitted](math.inf)
    reconciler = Reconciler(config, ledger, store, receive, release=True, poll_seconds=0.02)
    try:
        await ledger.note_incoming("RX1", TID, "1.2.3", 5, "sha256")
        await ledger.note_reconciliation(
            "RX1",
            TID,
            "1.2.3",
            priority="routine",
            rule="r",
            foreign=("P1", None),
            local=("B1", None),
        )
        async with anyio.create_task_group() as tg:
            await tg.start(reconciler.run)
            await anyio.sleep(0.3)  # many polls
            tg.cancel_scope.cancel()
        [row] = await ledger.reconciliations()
        assert row.state == "pending"  # not held, not reconciled: it has not arrived yet
        assert reconciler.released.statistics().current_buffer_used == 0  # nothing released
    finally:
        send.close()
        store.close()
        await ledger.close()
