"""The attributes DICOMweb searches and returns from the ledger's index, by
keyword and tag (PS3.6), and the QIDO-RS result sets of each level
(PS3.18 Table 6.7.1-2): what a level returns unless ``includefield`` asks
for more."""

from __future__ import annotations

from typing import Literal

Level = Literal["study", "series", "instance"]

# keyword: (tag, VR)
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "StudyDate": ("00080020", "DA"),
    "AccessionNumber": ("00080050", "SH"),
    "ModalitiesInStudy": ("00080061", "CS"),
    "Modality": ("00080060", "CS"),
    "SOPClassUID": ("00080016", "UI"),
    "SOPInstanceUID": ("00080018", "UI"),
    "PatientName": ("00100010", "PN"),
    "PatientID": ("00100020", "LO"),
    "StudyInstanceUID": ("0020000D", "UI"),
    "SeriesInstanceUID": ("0020000E", "UI"),
    "NumberOfStudyRelatedSeries": ("00201206", "IS"),
    "NumberOfStudyRelatedInstances": ("00201208", "IS"),
    "NumberOfSeriesRelatedInstances": ("00201209", "IS"),
    "NumberOfFrames": ("00280008", "IS"),
    "Rows": ("00280010", "US"),
    "Columns": ("00280011", "US"),
    "BitsAllocated": ("00280100", "US"),
    "AvailableTransferSyntaxUID": ("00083002", "UI"),
    "RetrieveURL": ("00081190", "UR"),
}
KEYWORD_OF_TAG = {tag: keyword for keyword, (tag, _vr) in ATTRIBUTES.items()}

# The keys each level may be searched by (a level's own and those above it),
# and the column of the index that holds each.
MATCH_COLUMNS: dict[str, str] = {
    "PatientID": "patient_id",
    "PatientName": "patient_name",
    "StudyDate": "study_date",
    "AccessionNumber": "accession_number",
    "StudyInstanceUID": "study_uid",
    "Modality": "modality",
    "SeriesInstanceUID": "series_uid",
    "SOPInstanceUID": "sop_uid",
    "SOPClassUID": "sop_class_uid",
}
STUDY_KEYS = frozenset(
    {"PatientID", "PatientName", "StudyDate", "AccessionNumber", "StudyInstanceUID"}
)
SERIES_KEYS = STUDY_KEYS | {"Modality", "SeriesInstanceUID"}
INSTANCE_KEYS = SERIES_KEYS | {"SOPInstanceUID", "SOPClassUID"}
SEARCH_KEYS: dict[Level, frozenset[str]] = {
    "study": STUDY_KEYS | {"ModalitiesInStudy"},
    "series": SERIES_KEYS,
    "instance": INSTANCE_KEYS,
}

STUDY_RESULT = (
    "StudyDate",
    "AccessionNumber",
    "ModalitiesInStudy",
    "PatientName",
    "PatientID",
    "StudyInstanceUID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_RESULT = ("Modality", "SeriesInstanceUID", "NumberOfSeriesRelatedInstances")
INSTANCE_RESULT = (
    "SOPClassUID",
    "SOPInstanceUID",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "AvailableTransferSyntaxUID",
)
# What a level returns by default, and what it can return at all (its own
# attributes and those of the levels above, which ``includefield`` adds).
DEFAULT_RESULT: dict[Level, tuple[str, ...]] = {
    "study": STUDY_RESULT,
    "series": (*SERIES_RESULT, "StudyInstanceUID"),
    "instance": (*INSTANCE_RESULT, "StudyInstanceUID", "SeriesInstanceUID"),
}
AVAILABLE: dict[Level, frozenset[str]] = {
    "study": frozenset(STUDY_RESULT),
    "series": frozenset(SERIES_RESULT)
    | (
        frozenset(STUDY_RESULT)
        - {"ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"}
    ),
    "instance": frozenset(INSTANCE_RESULT)
    | {"Modality", "SeriesInstanceUID"}
    | (
        frozenset(STUDY_RESULT)
        - {"ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"}
    ),
}


def keyword_of(key: str) -> str | None:
    """A query key (a keyword, or a tag as eight hex digits) as the keyword
    this server knows it by; None if it knows none such."""
    if key in ATTRIBUTES:
        return key
    return KEYWORD_OF_TAG.get(key.upper())
