"""The DICOMweb server's pure parts: the multipart parser fed in every way
a body can arrive, Accept negotiation, QIDO-RS parameters, token decisions,
frames of pixel data."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomrelay._native import scan, scan_file
from dicomrelay.errors import BadRequest, UsageError
from dicomrelay.ledger.archive import ApiToken, StoredAttributes, Visibility
from dicomrelay.web import auth, media, pixels
from dicomrelay.web.multipart import MultipartParser, PartData, PartEnd, PartStart
from dicomrelay.web.query import parse_qido

BODY = (
    b"preamble\r\n--xyz\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n--xy\r\n"
    b"--xyz\r\ncontent-type: text/plain\r\nX: y\r\n\r\n\r\n--xyz--\r\nepilogue"
)


def parse(chunks: list[bytes], boundary: str = "xyz") -> list[tuple[dict[str, str], bytes]]:
    parser = MultipartParser(boundary)
    parts: list[tuple[dict[str, str], bytes]] = []
    data = b""
    for chunk in chunks:
        for event in parser.feed(chunk):
            if isinstance(event, PartStart):
                headers, data = event.headers, b""
            elif isinstance(event, PartData):
                data += event.data
            elif isinstance(event, PartEnd):
                parts.append((headers, data))
    parser.close()
    return parts


EXPECTED = [
    ({"content-type": "application/dicom"}, b"first\r\n--xy"),
    ({"content-type": "text/plain", "x": "y"}, b""),
]


def test_multipart_whole_and_byte_by_byte() -> None:
    assert parse([BODY]) == EXPECTED
    assert parse([BODY[i : i + 1] for i in range(len(BODY))]) == EXPECTED


@given(st.lists(st.integers(min_value=1, max_value=len(BODY)), max_size=8))
def test_multipart_split_anywhere(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [BODY[a:b] for a, b in zip([0, *points], [*points, len(BODY)], strict=True)]
    assert parse(pieces) == EXPECTED


@pytest.mark.parametrize(
    "body",
    [
        b"--xyz\r\nContent-Type: a/b\r\n\r\ndata",  # no closing delimiter
        b"--xyz\r\nno colon here\r\n\r\ndata\r\n--xyz--",
        b"--xyzjunk\r\n\r\n\r\n--xyz--",  # a delimiter line with more on it
        b"nothing at all",
    ],
)
def test_multipart_malformed(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse([body])


def test_accept_negotiation() -> None:
    dicom = media.MediaType(
        "multipart/related", {"type": "application/dicom", "transfer-syntax": "1.2.840.10008.1.2.1"}
    )
    assert media.negotiate(None, [dicom]) == dicom
    assert media.negotiate('multipart/related; type="application/dicom"', [dicom]) == dicom
    assert media.negotiate('multipart/related; type="*/*"; transfer-syntax=*', [dicom]) == dicom
    assert media.negotiate('multipart/related; type="image/jpeg"', [dicom]) is None
    assert (
        media.negotiate(
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
            [dicom],
        )
        is None
    )
    jpeg, png = media.MediaType("image/jpeg"), media.MediaType("image/png")
    assert media.negotiate("image/png, image/jpeg;q=0.5", [jpeg, png]) == png
    assert media.negotiate("image/*;q=0.2, image/jpeg;q=0", [jpeg, png]) == png
    assert media.negotiate("text/html", [jpeg, png]) is None
    with pytest.raises(BadRequest):
        media.parse("nonsense")


def test_qido_parameters() -> None:
    me = Visibility(org="RX1", everything=True)
    q = parse_qido(
        "study",
        [
            ("PatientID", "P1"),
            ("00100010", "Doe*"),
            ("StudyDate", "20260101-"),
            ("ModalitiesInStudy", "CT,MR"),
            ("limit", "5"),
            ("offset", "10"),
            ("includefield", "all"),
            ("fuzzymatching", "true"),
        ],
        visible_to=me,
        path_uids={},
    )
    kinds = {(m.column, m.kind) for m in q.search.matches}
    assert kinds == {("patient_id", "exact"), ("patient_name", "wildcard"), ("study_date", "range")}
    assert q.search.modalities_in_study == ("CT", "MR")
    assert (q.search.limit, q.search.offset) == (5, 10)
    assert "fuzzymatching" in q.warnings[0]
    series = parse_qido(
        "series",
        [("includefield", "PatientID")],
        visible_to=me,
        path_uids={"StudyInstanceUID": "1.2"},
    )
    assert "PatientID" in series.fields
    assert series.search.matches[0].values == ("1.2",)
    for bad in (
        [("NotAKey", "1")],
        [("StudyDate", "yesterday")],
        [("limit", "-1")],
        [("StudyInstanceUID", "1.2.x")],
        [("includefield", "Nonsense")],
    ):
        with pytest.raises(BadRequest):
            parse_qido("study", bad, visible_to=me, path_uids={})
    ignored = parse_qido("study", [("StudyDescription", "x")], visible_to=me, path_uids={})
    assert ignored.search.matches == ()
    assert ignored.warnings


def test_tokens_and_durations() -> None:
    token = auth.new_token()
    assert token.startswith("drt_")
    assert len(token) > 40
    assert auth.token_hash(token) != auth.token_hash(auth.new_token())
    assert auth.parse_duration("90d") == 90 * 86400
    assert auth.parse_duration("30m") == 1800
    for bad in ("0d", "90", "1w", "-1d"):
        with pytest.raises(UsageError):
            auth.parse_duration(bad)
    assert auth.bearer_token("Bearer abc") == "abc"
    assert auth.bearer_token("Basic abc") is None
    row = ApiToken(name="t", org="RX1", scope="read", created=0.0, expires=100.0, revoked=None)
    assert isinstance(auth.judge_token(row, now=50.0), auth.Caller)
    assert auth.judge_token(row, now=100.0) == auth.Refused("token t has expired")
    assert isinstance(auth.judge_token(None, now=0.0), auth.Refused)
    assert auth.judge_certificate("RX2", node_org="RX1", peers=frozenset({"RX2"})) is not None
    assert auth.judge_certificate("RX9", node_org="RX1", peers=frozenset({"RX2"})) is None


def attributes(**changes: object) -> StoredAttributes:
    base: dict[str, object] = dict(
        digest="0" * 64,
        study_uid="1",
        series_uid="1.1",
        sop_uid="1.1.1",
        sop_class_uid="1.2",
        patient_id=None,
        patient_name=None,
        accession_number=None,
        modality="CT",
        study_date=None,
        charset=None,
        transfer_syntax="1.2.840.10008.1.2.1",
        rows=2,
        columns=3,
        frames=2,
        bits_allocated=16,
        pixel_offset=100,
        pixel_length=24,
        encapsulated=False,
        size=124,
    )
    return StoredAttributes(**(base | changes))  # type: ignore[arg-type]


def test_native_frames_are_equal_slices() -> None:
    frames = pixels.native_frames(attributes())
    assert [f.pieces for f in frames] == [((100, 112),), ((112, 124),)]
    with pytest.raises(BadRequest):
        pixels.pick(frames, [3])


def encapsulated(offsets: list[int], fragments: list[bytes]) -> bytes:
    table = b"".join(struct.pack("<I", o) for o in offsets)
    out = pixels.ITEM + struct.pack("<I", len(table)) + table
    for f in fragments:
        out += pixels.ITEM + struct.pack("<I", len(f)) + f
    return out + pixels.SEQUENCE_END + b"\0\0\0\0"


@pytest.mark.parametrize(
    ("offsets", "fragments", "frames", "expected"),
    [
        ([], [b"ab", b"cd"], 2, [b"ab", b"cd"]),  # one fragment a frame
        ([], [b"ab", b"cd"], 1, [b"abcd"]),  # one frame in fragments
        ([0, 20], [b"ab", b"cdef", b"gh"], 2, [b"abcdef", b"gh"]),  # by the offset table
    ],
)
def test_encapsulated_frames(
    offsets: list[int], fragments: list[bytes], frames: int, expected: list[bytes]
) -> None:
    data = b"\0" * 100 + encapsulated(offsets, fragments)
    a = attributes(encapsulated=True, frames=frames, pixel_length=None)
    found = pixels.encapsulated_frames(a, lambda start, stop: data[start:stop])
    assert [b"".join(data[s:e] for s, e in f.pieces) for f in found] == expected


def test_encapsulated_frames_that_cannot_be_told_apart() -> None:
    data = b"\0" * 100 + encapsulated([], [b"ab", b"cd", b"ef"])
    a = attributes(encapsulated=True, frames=2, pixel_length=None)
    with pytest.raises(BadRequest):
        pixels.encapsulated_frames(a, lambda start, stop: data[start:stop])


def test_stow_judges_instances_as_the_scp_does(tmp_path: Path) -> None:
    from dicomrelay.synth import PROFILES, write_study
    from dicomrelay.web import stow

    [path] = study_files_of(write_study(tmp_path / "s", PROFILES["small"], 1))
    info = scan_file(path)
    assert stow.judge(info, None) is None
    assert stow.judge(info, info.study_instance_uid) is None
    assert stow.judge(info, "1.2.3") == (
        stow.DOES_NOT_MATCH,
        f"belongs to study {info.study_instance_uid}, not 1.2.3",
    )
    raw = scan(path.read_bytes()[info.dataset_offset :])  # the dataset without its meta group
    assert raw.has_meta is False
    assert stow.judge(raw, None) == (
        stow.CANNOT_UNDERSTAND,
        "not a Part 10 file (no file meta information)",
    )
    for content_type, status in (
        (None, 415),
        ("application/dicom", 415),
        ('multipart/related; type="image/jpeg"; boundary=x', 415),
        ('multipart/related; type="application/dicom"', 400),
    ):
        with pytest.raises(BadRequest) as refused:
            stow.check_content_type(content_type)
        assert refused.value.status == status
    assert (
        stow.check_content_type('multipart/related; type="application/dicom"; boundary="a b"')
        == "a b"
    )


def study_files_of(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def test_a_preview_is_shrunk_to_fit_by_the_mean_of_what_each_pixel_covers() -> None:
    grey = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6) * 10
    small = pixels.shrunk(grey, 3)  # 4 x 6 -> 2 x 3: each pixel the mean of a 2 x 2 block
    assert small.shape == (2, 3)
    assert small.tolist() == [[35, 55, 75], [155, 175, 195]]
    rgb = np.zeros((300, 1000, 3), dtype=np.uint8)
    rgb[:, :, 1] = 200
    preview = pixels.shrunk(rgb, 384)
    assert preview.shape == (115, 384, 3)  # the shape kept
    assert {tuple(p) for p in preview.reshape(-1, 3).tolist()} == {(0, 200, 0)}
    assert pixels.shrunk(grey, 6) is grey  # fits already
