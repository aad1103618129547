"""DICOMweb on a node, with dicomweb-client (the reference client) as a real
caller over loopback: STOW-RS, QIDO-RS with each key, WADO-RS instances
byte-identical to what was stored, metadata, frames and rendered frames."""

from __future__ import annotations

import sqlite3
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from dicomrelay.synth import PROFILES, write_study

from .helpers import Pki, study_files
from .web_helpers import (
    Serving,
    create_token,
    encoded,
    read_datasets,
    read_picture,
    serving,
    size_of,
    write_config,
)

STUDY_SIZE = 1000


def store(s: Serving, token: str, paths: list[Path], batch: int = 100) -> None:
    client = s.client(token)
    for start in range(0, len(paths), batch):
        datasets = read_datasets(paths[start : start + batch])
        answer = client.store_instances(datasets)
        stored = [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence]
        assert stored == [d.SOPInstanceUID for d in datasets]
        assert "FailedSOPSequence" not in answer


def raw_parts(s: Serving, token: str, url: str, media_types: Any) -> list[bytes]:
    """The parts of a multipart answer, as the client's own decoder splits them
    (retrieve_study would parse each with pydicom: the bytes are what is checked)."""
    client = s.client(token)
    return list(client._http_get_multipart(url, media_types=media_types, stream=True))


def uids(results: list[dict[str, Any]], tag: str = "0020000D") -> list[str]:
    return [r[tag]["Value"][0] for r in results]


def test_a_thousand_slice_ct_study_stored_found_and_retrieved(tmp_path: Path, orgs: Pki) -> None:
    ct = study_files(write_study(tmp_path / "ct", PROFILES["ct"], STUDY_SIZE, seed=7))
    mr = study_files(write_study(tmp_path / "mr", PROFILES["mr"], 3, seed=8))
    config = write_config(tmp_path, orgs)
    token = create_token(config, "viewer", "write")
    with serving(config) as s:
        store(s, token, ct)
        store(s, token, mr)
        client = s.client(token)
        first = read_datasets(ct[:1])[0]
        study = first.StudyInstanceUID
        other = read_datasets(mr[:1])[0].StudyInstanceUID

        # QIDO-RS: each key finds the CT study and not the MR one.
        for filters in (
            {"PatientID": first.PatientID},
            {"PatientName": "synthetic^PAT*"},
            {"PatientName": str(first.PatientName)},
            {"StudyDate": "20261101-20261130"},
            {"StudyDate": "-20261127"},
            {"AccessionNumber": first.AccessionNumber},
            {"StudyInstanceUID": study},
            {"ModalitiesInStudy": "CT"},
        ):
            found = client.search_for_studies(search_filters=filters)
            assert study in uids(found), filters
            if (
                "PatientID" in filters
                or "AccessionNumber" in filters
                or "Modalities" in str(filters)
            ):
                assert other not in uids(found), filters
        assert client.search_for_studies(search_filters={"StudyDate": "20270101-"}) == []
        [result] = client.search_for_studies(search_filters={"StudyInstanceUID": study})
        assert result["00201208"]["Value"] == [STUDY_SIZE]
        assert result["00080061"]["Value"] == ["CT"]
        [series] = client.search_for_series(study, search_filters={"Modality": "CT"})
        assert series["0020000E"]["Value"] == [first.SeriesInstanceUID]
        assert series["00201209"]["Value"] == [STUDY_SIZE]
        by_series = client.search_for_series(
            search_filters={"SeriesInstanceUID": first.SeriesInstanceUID}
        )
        assert uids(by_series, "0020000E") == [first.SeriesInstanceUID]
        [instance] = client.search_for_instances(
            study, search_filters={"SOPInstanceUID": first.SOPInstanceUID}
        )
        assert instance["00280010"]["Value"] == [512]
        assert "00100020" not in instance
        [instance] = client.search_for_instances(
            study,
            search_filters={"SOPInstanceUID": first.SOPInstanceUID},
            fields=["PatientID", "00080060"],
        )
        assert instance["00100020"]["Value"] == [first.PatientID]
        assert instance["00080060"]["Value"] == ["CT"]
        page = client.search_for_instances(study, limit=10, offset=995)
        assert len(page) == 5
        everything = client.search_for_instances(study)
        assert len(set(uids(everything, "00080018"))) == STUDY_SIZE

        # WADO-RS: every instance byte-identical to what was stored.
        sent = {sha256(p.read_bytes()).digest() for p in ct}
        parts = raw_parts(s, token, f"{s.base}/studies/{study}", None)
        assert len(parts) == STUDY_SIZE
        assert {sha256(p).digest() for p in parts} == sent
        del parts
        datasets = client.retrieve_study(study)
        assert {sha256(encoded(d)).digest() for d in datasets} == sent
        del datasets

        # Metadata, with the pixel data as a link to the frames.
        metadata = client.retrieve_study_metadata(study)
        assert len(metadata) == STUDY_SIZE
        one = next(m for m in metadata if m["00080018"]["Value"] == [first.SOPInstanceUID])
        assert one["00100020"]["Value"] == [first.PatientID]
        assert one["7FE00010"]["BulkDataURI"].endswith(f"{first.SOPInstanceUID}/frames/1")
        assert Dataset.from_json(one, bulk_data_uri_handler=lambda *_: b"").Rows == 512

        # Frames and rendered frames.
        [frame] = client.retrieve_instance_frames(
            study, first.SeriesInstanceUID, first.SOPInstanceUID, frame_numbers=[1]
        )
        assert frame == first.PixelData
        for media_type, kind in (("image/jpeg", "JPEG"), ("image/png", "PNG")):
            picture = client.retrieve_instance_rendered(
                study, first.SeriesInstanceUID, first.SOPInstanceUID, media_types=(media_type,)
            )
            rendered_as, pixels = read_picture(picture)
            assert (rendered_as, size_of(pixels)) == (kind, (512, 512))
            assert len(np.unique(pixels)) > 16  # an image, not a blank

    audit = (
        sqlite3.connect(tmp_path / "data" / "ledger.sqlite")
        .execute("SELECT action, detail FROM audit WHERE action LIKE 'dicomweb-%'")
        .fetchall()
    )
    actions = {a for a, _ in audit}
    assert {"dicomweb-stored", "dicomweb-searched", "dicomweb-retrieved"} <= actions
    stored = [d for a, d in audit if a == "dicomweb-stored" and study in d]
    assert sum(int(d.split(": ")[-1].split()[0]) for d in stored) == STUDY_SIZE
    assert any(
        study in d and "token viewer" in d and "127.0.0.1" in d
        for a, d in audit
        if a == "dicomweb-retrieved"
    )


def test_wrong_accept_is_406_and_unknown_query_key_400(tmp_path: Path, orgs: Pki) -> None:
    paths = study_files(write_study(tmp_path / "ct", PROFILES["mr"], 2))
    config = write_config(tmp_path, orgs)
    token = create_token(config, "viewer", "write")
    with serving(config) as s:
        store(s, token, paths)
        study = read_datasets(paths[:1])[0].StudyInstanceUID
        auth = {"Authorization": f"Bearer {token}"}
        wrong_syntax = (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
        )
        answer = requests.get(f"{s.base}/studies/{study}", headers={**auth, "Accept": wrong_syntax})
        assert answer.status_code == 406
        answer = requests.get(f"{s.base}/studies", headers={**auth, "Accept": "text/html"})
        assert answer.status_code == 406
        answer = requests.get(f"{s.base}/studies", params={"NoSuchKey": "1"}, headers=auth)
        assert answer.status_code == 400
        answer = requests.get(f"{s.base}/studies", params={"StudyDate": "2026"}, headers=auth)
        assert answer.status_code == 400
        answer = requests.get(f"{s.base}/studies", params={"StudyDescription": "x"}, headers=auth)
        assert answer.status_code == 200
        assert "StudyDescription" in answer.headers["Warning"]
        answer = requests.get(f"{s.base}/studies/1.2.3", headers=auth)
        assert answer.status_code == 404


@pytest.mark.parametrize("profile", ["us"])
def test_colour_frames_render(tmp_path: Path, orgs: Pki, profile: str) -> None:
    paths = study_files(write_study(tmp_path / "us", PROFILES[profile], 1))
    config = write_config(tmp_path, orgs)
    token = create_token(config, "viewer", "write")
    with serving(config) as s:
        store(s, token, paths)
        ds = read_datasets(paths)[0]
        picture = s.client(token).retrieve_instance_frames_rendered(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[1]
        )
        _, pixels = read_picture(picture)
        assert (pixels.shape[2:], size_of(pixels)) == ((3,), (640, 480))  # RGB


def test_encapsulated_frames_and_their_rendering(tmp_path: Path, orgs: Pki) -> None:
    """pydicom's own compressed files: frames come back as the fragments
    hold them (pydicom splits them the same), JPEG and JPEG 2000 render."""
    names = ["SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"]
    paths = [Path(str(get_testdata_file(name))) for name in names]
    config = write_config(tmp_path, orgs)
    token = create_token(config, "viewer", "write")
    with serving(config) as s:
        client = s.client(token)
        datasets = read_datasets(paths)
        answer = client.store_instances(datasets)
        assert len(answer.ReferencedSOPSequence) == 3
        for ds, kind in zip(datasets, ("image/jpeg", "image/jp2", "image/dicom-rle"), strict=True):
            where = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            [frame] = client.retrieve_instance_frames(
                *where, frame_numbers=[1], media_types=(kind,)
            )
            [expected] = generate_frames(ds.PixelData, number_of_frames=1)
            assert frame == expected
            url = f"{s.base}/studies/{where[0]}/series/{where[1]}/instances/{where[2]}/rendered"
            rendered = requests.get(url, headers={"Authorization": f"Bearer {token}"})
            if kind == "image/dicom-rle":
                assert rendered.status_code == 406  # RLE is not decoded for rendering
                continue
            assert rendered.headers["content-type"] == "image/jpeg"
            _, pixels = read_picture(rendered.content)
            assert size_of(pixels) == (ds.Columns, ds.Rows)
