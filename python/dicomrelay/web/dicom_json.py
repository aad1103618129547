"""The DICOM JSON model (PS3.18 F.2): QIDO-RS results from the ledger's
rows, STOW-RS answers, and WADO-RS metadata from a stored header."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from pydicom import Dataset, dcmread

from dicomrelay.ledger.archive import StoredAttributes, attributes_from_row
from dicomrelay.web.attributes import ATTRIBUTES, Level

JsonObject = dict[str, Any]


def element(keyword: str, value: Any) -> JsonObject:
    """One attribute: its VR and its value(s); an absent value stays empty."""
    _tag, vr = ATTRIBUTES[keyword]
    values = value if isinstance(value, list | tuple) else [value]
    values = [v for v in values if v is not None and v != ""]
    if not values:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(v)} for v in values]}
    if vr in ("US", "IS"):
        return {"vr": vr, "Value": [int(v) for v in values]}
    return {"vr": vr, "Value": [str(v) for v in values]}


def dataset(attributes: dict[str, Any], fields: Sequence[str]) -> JsonObject:
    """The JSON object of ``fields`` (keywords) of ``attributes``, by tag."""
    out = {ATTRIBUTES[k][0]: element(k, attributes.get(k)) for k in fields}
    return dict(sorted(out.items()))


def _study_part(row: Sequence[Any]) -> dict[str, Any]:
    study, patient_id, patient_name, accession, date, _charset = row[:6]
    return {
        "StudyInstanceUID": study,
        "PatientID": patient_id,
        "PatientName": patient_name,
        "AccessionNumber": accession,
        "StudyDate": date,
    }


def row_attributes(level: Level, row: Sequence[Any]) -> dict[str, Any]:
    """A search row (``ledger.search``'s columns for ``level``) by keyword."""
    if level == "study":
        out = _study_part(row)
        modalities, series, instances = row[6:9]
        out["ModalitiesInStudy"] = sorted(filter(None, (modalities or "").split(",")))
        out["NumberOfStudyRelatedSeries"] = series
        out["NumberOfStudyRelatedInstances"] = instances
        return out
    if level == "series":
        out = _study_part(row)
        series, modality, instances = row[6:9]
        out |= {
            "SeriesInstanceUID": series,
            "Modality": modality,
            "NumberOfSeriesRelatedInstances": instances,
        }
        return out
    return instance_attributes(attributes_from_row(row))


def instance_attributes(a: StoredAttributes) -> dict[str, Any]:
    return {
        "StudyInstanceUID": a.study_uid,
        "SeriesInstanceUID": a.series_uid,
        "SOPInstanceUID": a.sop_uid,
        "SOPClassUID": a.sop_class_uid,
        "PatientID": a.patient_id,
        "PatientName": a.patient_name,
        "AccessionNumber": a.accession_number,
        "StudyDate": a.study_date,
        "Modality": a.modality,
        "Rows": a.rows,
        "Columns": a.columns,
        "BitsAllocated": a.bits_allocated,
        "NumberOfFrames": a.frames,
        "AvailableTransferSyntaxUID": a.transfer_syntax,
    }


def stow_answer(
    retrieve_url: str | None,
    stored: Sequence[tuple[str, str, str]],
    failed: Sequence[tuple[str, str, int]],
) -> JsonObject:
    """PS3.18 Table 10.5.3-1: the study's URL, ``stored`` (SOP class, SOP
    instance, URL) as the Referenced SOP Sequence and ``failed`` (SOP class,
    SOP instance, reason code) as the Failed SOP Sequence."""
    out: JsonObject = {}
    if retrieve_url is not None:
        out["00081190"] = {"vr": "UR", "Value": [retrieve_url]}
    if stored:
        out["00081199"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": [cls]},
                    "00081155": {"vr": "UI", "Value": [uid]},
                    "00081190": {"vr": "UR", "Value": [url]},
                }
                for cls, uid, url in stored
            ],
        }
    if failed:
        out["00081198"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", **({"Value": [cls]} if cls else {})},
                    "00081155": {"vr": "UI", **({"Value": [uid]} if uid else {})},
                    "00081197": {"vr": "US", "Value": [reason]},
                }
                for cls, uid, reason in failed
            ],
        }
    return out


def metadata(header: bytes, pixel_data_uri: str | None) -> JsonObject:
    """An instance's header (its bytes up to the pixel data value) as DICOM
    JSON; the pixel data, if any, as a BulkDataURI. Private and other long
    values are kept inline: the header of an image is small."""
    ds = header_dataset(header)
    out: JsonObject = ds.to_json_dict(bulk_data_threshold=1 << 30)
    if pixel_data_uri is not None:
        vr = "OB" if ds.get("BitsAllocated", 16) <= 8 else "OW"
        if "TransferSyntaxUID" in ds.file_meta and not ds.file_meta.TransferSyntaxUID.is_compressed:
            out["7FE00010"] = {"vr": vr, "BulkDataURI": pixel_data_uri}
        else:
            out["7FE00010"] = {"vr": "OB", "BulkDataURI": pixel_data_uri}
    return out


def header_dataset(header: bytes) -> Dataset:
    """An instance's header (its bytes before the pixel data value) as a dataset."""
    return dcmread(io.BytesIO(header), stop_before_pixels=True, force=True)
