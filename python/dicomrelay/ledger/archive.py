"""What the ledger keeps for DICOMweb: the attributes of each stored blob
(what QIDO-RS searches, what WADO-RS finds pixel data by), instances stored
by STOW-RS, and API tokens (hashed). The records here; the statements in
``statements.py``; a search's SQL in ``search.py``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dicomrelay._native import InstanceInfo


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredAttributes:
    """A stored instance as its header describes it (the scanner's reading)."""

    digest: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    modality: str | None
    study_date: str | None
    charset: str | None
    transfer_syntax: str
    rows: int | None
    columns: int | None
    frames: int | None
    bits_allocated: int | None
    pixel_offset: int | None
    pixel_length: int | None
    encapsulated: bool
    size: int

    @classmethod
    def of(cls, info: InstanceInfo, digest: str) -> StoredAttributes:
        return cls(
            digest=digest,
            study_uid=info.study_instance_uid or "",
            series_uid=info.series_instance_uid or "",
            sop_uid=info.sop_instance_uid or "",
            sop_class_uid=info.sop_class_uid or "",
            patient_id=info.patient_id,
            patient_name=info.patient_name,
            accession_number=info.accession_number,
            modality=info.modality,
            study_date=info.study_date,
            charset=info.specific_character_set,
            # A raw dataset (no meta group) is implicit VR little endian.
            transfer_syntax=info.transfer_syntax_uid or "1.2.840.10008.1.2",
            rows=info.rows,
            columns=info.columns,
            frames=info.number_of_frames,
            bits_allocated=info.bits_allocated,
            pixel_offset=info.pixel_data_offset,
            pixel_length=info.pixel_data_length,
            encapsulated=info.encapsulated,
            size=info.size,
        )


ATTRIBUTE_COLUMNS = (
    "digest, study_uid, series_uid, sop_uid, sop_class_uid, patient_id, patient_name,"
    " accession_number, modality, study_date, charset, transfer_syntax, rows_, columns_,"
    " frames, bits_allocated, pixel_offset, pixel_length, encapsulated, size"
)


def attributes_row(a: StoredAttributes) -> tuple[Any, ...]:
    return (
        a.digest,
        a.study_uid,
        a.series_uid,
        a.sop_uid,
        a.sop_class_uid,
        a.patient_id,
        a.patient_name,
        a.accession_number,
        a.modality,
        a.study_date,
        a.charset,
        a.transfer_syntax,
        a.rows,
        a.columns,
        a.frames,
        a.bits_allocated,
        a.pixel_offset,
        a.pixel_length,
        int(a.encapsulated),
        a.size,
    )


def attributes_from_row(row: Sequence[Any]) -> StoredAttributes:
    (digest, study, series, sop, sop_class, pid, pname, acc, modality, date, charset, ts) = row[:12]
    (rows, columns, frames, bits, offset, length, encapsulated, size) = row[12:20]
    return StoredAttributes(
        digest=digest,
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        sop_class_uid=sop_class,
        patient_id=pid,
        patient_name=pname,
        accession_number=acc,
        modality=modality,
        study_date=date,
        charset=charset,
        transfer_syntax=ts,
        rows=rows,
        columns=columns,
        frames=frames,
        bits_allocated=bits,
        pixel_offset=offset,
        pixel_length=length,
        encapsulated=bool(encapsulated),
        size=int(size),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiToken:
    """A DICOMweb caller's token (its secret is kept only as a hash)."""

    name: str
    org: str
    scope: str  # "read" or "write" (which reads too)
    created: float
    expires: float | None
    revoked: float | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Visibility:
    """Which stored studies a caller of ``org`` may see: those sent to or by
    its organisation. The node's own organisation received (or stored) every
    study in its store (``everything``); another organisation sees the
    studies it sent to this node and those this node sent to it."""

    org: str
    everything: bool
