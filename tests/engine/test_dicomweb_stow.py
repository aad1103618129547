"""STOW-RS refusals: a body that is not multipart/related of DICOM (415), a
malformed multipart (400, nothing stored), and parts that are not DICOM or
not sound (the Failed SOP Sequence with its reasons: 409 when nothing was
stored, 202 when some was), each refused instance quarantined and audited."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import requests
from pydicom import Dataset

from dicomrelay.synth import PROFILES, write_study

from .helpers import Pki, study_files
from .web_helpers import create_token, serving, write_config

CT = 'multipart/related; type="application/dicom"; boundary=b0undary'


def body(*parts: tuple[str, bytes]) -> bytes:
    out = b""
    for kind, data in parts:
        out += b"--b0undary\r\nContent-Type: " + kind.encode() + b"\r\n\r\n" + data + b"\r\n"
    return out + b"--b0undary--\r\n"


def failed(answer: requests.Response) -> list[tuple[str, int]]:
    ds = Dataset.from_json(answer.json())
    return [
        (str(item.get("ReferencedSOPInstanceUID", "")), int(item.FailureReason))
        for item in ds.get("FailedSOPSequence", [])
    ]


def stored_count(root: Path) -> int:
    with sqlite3.connect(root / "data" / "ledger.sqlite") as db:
        return int(db.execute("SELECT count(*) FROM store").fetchone()[0])


def test_stow_refusals(tmp_path: Path, orgs: Pki) -> None:
    [good, other] = [
        p.read_bytes() for p in study_files(write_study(tmp_path / "s", PROFILES["small"], 2))
    ]
    config = write_config(tmp_path, orgs)
    token = create_token(config, "ingest", "write")
    auth = {"Authorization": f"Bearer {token}"}
    with serving(config) as s:
        url = f"{s.base}/studies"

        def post(data: bytes, content_type: str = CT, to: str = url) -> requests.Response:
            return requests.post(to, data=data, headers={**auth, "Content-Type": content_type})

        # Not multipart of DICOM: 415.
        assert post(good, "application/dicom").status_code == 415
        assert (
            post(
                body(("application/dicom", good)),
                'multipart/related; type="image/jpeg"; boundary=b0undary',
            ).status_code
            == 415
        )
        # Malformed multipart: 400, and nothing kept.
        assert post(body(("application/dicom", good))[:-20]).status_code == 400
        assert post(b"no boundary anywhere", CT).status_code == 400
        assert (
            post(
                body(("application/dicom", good)), 'multipart/related; type="application/dicom"'
            ).status_code
            == 400
        )
        assert stored_count(tmp_path) == 0
        # Parts that are not DICOM: refused with C000, nothing stored: 409.
        answer = post(
            body(("application/dicom", b"\0" * 200 + b"not DICOM"), ("text/plain", b"hello"))
        )
        assert answer.status_code == 409
        assert [reason for _, reason in failed(answer)] == [0xC000, 0xC000]
        # A sound part beside a truncated one: 202, one stored, one refused.
        answer = post(body(("application/dicom", good), ("application/dicom", other[:-100])))
        assert answer.status_code == 202
        ds = Dataset.from_json(answer.json())
        assert len(ds.ReferencedSOPSequence) == 1
        assert [reason for _, reason in failed(answer)] == [0xC000]
        assert stored_count(tmp_path) == 1
        # Into a study the instance does not belong to: A900.
        answer = post(body(("application/dicom", other)), to=f"{url}/1.2.3.4")
        assert answer.status_code == 409
        assert [reason for _, reason in failed(answer)] == [0xA900]
        # Stored twice: the same answer, kept once.
        assert post(body(("application/dicom", good))).status_code == 200
        assert stored_count(tmp_path) == 1

    quarantine = tmp_path / "data" / "quarantine"
    with sqlite3.connect(tmp_path / "data" / "ledger.sqlite") as db:
        held = db.execute(
            "SELECT id, kind, direction, location, reason FROM quarantine ORDER BY held"
        ).fetchall()
        refused = db.execute(
            "SELECT detail FROM audit WHERE action = 'dicomweb-dataset-refused'"
        ).fetchall()
        failures = db.execute(
            "SELECT detail FROM audit WHERE action = 'dicomweb-failed'"
        ).fetchall()
    assert len(held) == 3  # the malformed one, the one missing a UID, the misplaced one
    assert {kind for _, kind, *_ in held} == {"unreadable", "not-storable"}
    assert all(direction == "receive" for _, _, direction, _, _ in held)
    assert any("belongs to study" in reason for *_, reason in held)
    for hold_id, _, _, location, _ in held:
        assert Path(location) == quarantine / f"{hold_id}.dcm"
        assert Path(location).is_file()
    assert len(refused) == 4
    assert sum("held in quarantine as" in d for (d,) in refused) == 3
    assert len(failures) == 5  # the 415s and 400s


def test_stow_appends_to_the_segment_store_and_wado_reads_it_back(
    tmp_path: Path, orgs: Pki
) -> None:
    """A STOW-RS request is one round of the segment store: its instances are
    records there (byte-identical, verified against their digests), the part
    files are gone, and WADO-RS serves them from the records after a restart."""
    files = study_files(write_study(tmp_path / "s", PROFILES["small"], 3))
    parts = [p.read_bytes() for p in files]
    config = write_config(tmp_path, orgs)
    token = create_token(config, "ingest", "write")
    auth = {"Authorization": f"Bearer {token}"}
    with serving(config) as s:
        answer = requests.post(
            f"{s.base}/studies",
            data=body(*(("application/dicom", p) for p in parts)),
            headers={**auth, "Content-Type": CT},
        )
        assert answer.status_code == 200
        with sqlite3.connect(tmp_path / "data" / "ledger.sqlite") as db:
            digests = [d for (d,) in db.execute("SELECT digest FROM store ORDER BY sop_uid")]
            located = db.execute("SELECT count(*) FROM segment_records").fetchone()[0]
        assert len(digests) == 3
        assert located == 3
        stored = {bytes(s.portal.call(s.node.store.read_instance, d)) for d in digests}
        assert stored == set(parts)
    assert list((tmp_path / "data" / "web" / "incoming").iterdir()) == []
    with serving(config) as s:
        [uid] = {
            Dataset.from_json(item).StudyInstanceUID
            for item in requests.get(f"{s.base}/studies", headers=auth).json()
        }
        got = requests.get(
            f"{s.base}/studies/{uid}",
            headers={**auth, "Accept": 'multipart/related; type="application/dicom"'},
        )
        assert got.status_code == 200
        assert sorted(p for p in parts if p in got.content) == sorted(parts)
