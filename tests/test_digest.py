"""Digests, chunk digests, argument checking, InstanceInfo and DicomParseError
as Python objects, scan_many's error handling, and the GIL during a scan."""

from __future__ import annotations

import hashlib
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

import dicomrelay
from dicom_builders import TEST_FILES_DIR, element, make_ct_slice

HASHERS: dict[str, Callable[[bytes], str]] = {
    "sha256": lambda b: hashlib.sha256(b).hexdigest(),
    "blake3": lambda b: blake3.blake3(b).hexdigest(),
}
CT_SMALL = (TEST_FILES_DIR / "CT_small.dcm").read_bytes()
MIB = 1 << 20


@pytest.fixture(scope="module")
def big_ct() -> bytes:
    """A valid file of about 2.5 MiB, so 1 MiB chunks come out as 2 full and 1 partial."""
    return make_ct_slice(seed=3, rows=1024, columns=1280)


@pytest.mark.parametrize("algorithm", list(HASHERS))
def test_whole_file_digest(algorithm: str, ct_slice: bytes, ct_slice_path: Path) -> None:
    for data in (CT_SMALL, ct_slice):
        info = dicomrelay.scan(data, digest=algorithm)  # type: ignore[arg-type]
        assert info.digest == HASHERS[algorithm](data)
        assert info.chunk_digests == ()
    from_file = dicomrelay.scan_file(ct_slice_path, digest=algorithm)  # type: ignore[arg-type]
    assert from_file.digest == HASHERS[algorithm](ct_slice)


@pytest.mark.parametrize("algorithm", list(HASHERS))
@pytest.mark.parametrize("chunk_size", [1, 7, 4096, MIB, 100 * MIB])
def test_chunk_digests(algorithm: str, chunk_size: int, ct_slice: bytes, big_ct: bytes) -> None:
    # (Tiny chunks only on the smaller files: a digest per byte is slow to check.)
    datas = {1: [CT_SMALL], 7: [CT_SMALL, ct_slice]}.get(chunk_size, [CT_SMALL, ct_slice, big_ct])
    for data in datas:
        info = dicomrelay.scan(data, digest=algorithm, chunk_size=chunk_size)  # type: ignore[arg-type]
        chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
        assert info.chunk_digests == tuple(HASHERS[algorithm](c) for c in chunks)
        assert info.digest == HASHERS[algorithm](data)


def test_chunk_larger_than_the_file_is_one_chunk() -> None:
    info = dicomrelay.scan(CT_SMALL, digest="blake3", chunk_size=len(CT_SMALL) + 1)
    assert info.chunk_digests == (info.digest,)


def test_chunk_size_alone_means_sha256() -> None:
    info = dicomrelay.scan(CT_SMALL, chunk_size=4096)
    assert info.digest == hashlib.sha256(CT_SMALL).hexdigest()
    assert info.chunk_digests[0] == hashlib.sha256(CT_SMALL[:4096]).hexdigest()


def test_default_chunk_size_is_one_mib(big_ct: bytes) -> None:
    assert dicomrelay.DEFAULT_CHUNK_SIZE == MIB
    info = dicomrelay.scan(big_ct, chunk_size=dicomrelay.DEFAULT_CHUNK_SIZE)
    assert len(info.chunk_digests) == -(-len(big_ct) // MIB) == 3


def test_no_digest_unless_asked() -> None:
    info = dicomrelay.scan(CT_SMALL)
    assert (info.digest, info.chunk_digests) == (None, ())


def test_digest_covers_bytes_the_scanner_skips() -> None:
    # One pixel byte changed: the same header, a different digest.
    flipped = bytearray(CT_SMALL)
    flipped[-1] ^= 1
    a = dicomrelay.scan(CT_SMALL, digest="sha256")
    b = dicomrelay.scan(flipped, digest="sha256")
    assert a.digest != b.digest
    assert {**a.as_dict(), "digest": None} == {**b.as_dict(), "digest": None}


# --- arguments -------------------------------------------------------------------


@pytest.mark.parametrize("digest", ["md5", "SHA256", "sha-256", "", "blake2b", " sha256"])
def test_unknown_digest_is_a_value_error(digest: str) -> None:
    with pytest.raises(ValueError, match="digest"):
        dicomrelay.scan(CT_SMALL, digest=digest)  # type: ignore[arg-type]


@pytest.mark.parametrize("chunk_size", [0, -1, -(2**40)])
def test_chunk_size_not_positive_is_a_value_error(chunk_size: int) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        dicomrelay.scan(CT_SMALL, chunk_size=chunk_size)
    with pytest.raises(ValueError, match="chunk_size"):
        dicomrelay.scan_many([CT_SMALL], chunk_size=chunk_size)


@pytest.mark.parametrize("data", [None, "text", 42, [1, 2], object()], ids=repr)
def test_wrong_data_type_is_a_type_error(data: object) -> None:
    with pytest.raises(TypeError):
        dicomrelay.scan(data)  # type: ignore[arg-type]


def test_non_contiguous_buffer_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        dicomrelay.scan(memoryview(CT_SMALL)[::2])


@pytest.mark.parametrize("fmt", ["B", "b", "c", "H"])
def test_memoryview_of_any_format_is_read_as_bytes(fmt: str) -> None:
    # A memoryview is a documented input type; its item format is no business of
    # a byte scanner (hashlib takes any contiguous buffer too).
    view = memoryview(CT_SMALL).cast(fmt)  # type: ignore[call-overload]
    assert dicomrelay.scan(view, digest="sha256") == dicomrelay.scan(CT_SMALL, digest="sha256")


@pytest.mark.parametrize("digest", [b"sha256", 256])
def test_digest_of_wrong_type_is_a_type_error(digest: object) -> None:
    with pytest.raises(TypeError):
        dicomrelay.scan(CT_SMALL, digest=digest)  # type: ignore[arg-type]


# --- errors ----------------------------------------------------------------------------


def test_empty_input_is_a_parse_error(tmp_path: Path) -> None:
    for data in (b"", bytearray(), memoryview(b"")):
        with pytest.raises(dicomrelay.DicomParseError):
            dicomrelay.scan(data)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(dicomrelay.DicomParseError):
        dicomrelay.scan_file(empty)


def test_parse_error_fields() -> None:
    truncated = CT_SMALL[:-1000]  # inside the pixel data value
    with pytest.raises(dicomrelay.DicomParseError) as caught:
        dicomrelay.scan(truncated)
    err = caught.value
    assert isinstance(err, ValueError)
    assert isinstance(err, dicomrelay.DicomrelayError)
    assert err.tag == 0x7FE00010
    assert CT_SMALL[err.offset : err.offset + 4] == b"\xe0\x7f\x10\x00"  # the element's header
    assert "(7FE0,0010)" in str(err)
    assert f"at byte {err.offset}" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), str(again), again.offset, again.tag) == (
        type(err),
        str(err),
        err.offset,
        err.tag,
    )


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        dicomrelay.scan_file(tmp_path / "missing.dcm")
    with pytest.raises(FileNotFoundError):
        dicomrelay.scan_file(str(tmp_path / "missing.dcm"))


def test_directory_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):  # noqa: PT011 - which one is the platform's choice
        dicomrelay.scan_file(tmp_path)


def test_scan_many_returns_failures_in_place(tmp_path: Path) -> None:
    good = tmp_path / "good.dcm"
    good.write_bytes(CT_SMALL)
    sources: list[object] = [
        CT_SMALL,
        b"",
        tmp_path / "missing.dcm",
        str(good),
        CT_SMALL[:-1000],
        bytearray(CT_SMALL),
    ]
    results = dicomrelay.scan_many(sources, threads=2)  # type: ignore[arg-type]
    expected = dicomrelay.scan(CT_SMALL)
    assert [type(r) for r in results] == [
        dicomrelay.InstanceInfo,
        dicomrelay.DicomParseError,
        FileNotFoundError,
        dicomrelay.InstanceInfo,
        dicomrelay.DicomParseError,
        dicomrelay.InstanceInfo,
    ]
    assert results[0] == results[3] == results[5] == expected
    assert dicomrelay.scan_many([]) == []


def test_scan_many_rejects_a_source_of_wrong_type() -> None:
    with pytest.raises(TypeError):
        dicomrelay.scan_many([CT_SMALL, 42])  # type: ignore[list-item]


# --- InstanceInfo ----------------------------------------------------------------------

FIELDS = [
    "sop_class_uid", "sop_instance_uid", "study_instance_uid", "series_instance_uid",
    "patient_id", "issuer_of_patient_id", "patient_name", "accession_number", "modality",
    "study_date", "specific_character_set", "transfer_syntax_uid", "rows", "columns",
    "number_of_frames", "bits_allocated", "pixel_data_offset", "pixel_data_length",
    "encapsulated", "fragments", "dataset_offset", "size", "has_meta", "deflated", "digest",
    "chunk_digests",
]  # fmt: skip


def test_instance_info_is_frozen() -> None:
    info = dicomrelay.scan(CT_SMALL)
    for name in FIELDS:
        with pytest.raises(AttributeError):
            setattr(info, name, None)
    with pytest.raises(AttributeError):
        info.new_attribute = 1  # type: ignore[attr-defined]


def test_instance_info_equality_and_hash() -> None:
    a, b = dicomrelay.scan(CT_SMALL), dicomrelay.scan(bytearray(CT_SMALL))
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    c = dicomrelay.scan(CT_SMALL, digest="sha256")
    assert a != c
    assert a != "not an InstanceInfo"
    assert a != a.as_dict()


def test_as_dict_has_every_attribute() -> None:
    info = dicomrelay.scan(CT_SMALL, digest="blake3", chunk_size=4096)
    d = info.as_dict()
    assert set(FIELDS) <= set(d)
    for name in d:
        assert d[name] == getattr(info, name), name
    assert isinstance(d["chunk_digests"], tuple)
    assert (d["rows"], d["modality"], d["has_meta"]) == (128, "CT", True)


def test_match_args_allow_positional_patterns() -> None:
    info = dicomrelay.scan(CT_SMALL)
    assert set(FIELDS) <= set(info.__match_args__)
    match info:
        case dicomrelay.InstanceInfo(modality="CT", rows=rows):
            assert rows == 128
        case _:
            pytest.fail("keyword pattern did not match")
    assert repr(info).startswith("InstanceInfo(")
    assert str(info.sop_instance_uid) in repr(info)


# --- the GIL ---------------------------------------------------------------------------


def test_gil_is_released_while_digesting() -> None:
    # A counter thread records when it runs. If the scan held the GIL, the
    # counter would stall for the whole scan; released, it keeps ticking.
    data = element(0x00080016, b"UI", b"1.2\0") + element(0x7FE00010, b"OB", bytes(128 * MIB))
    ticks: list[float] = []
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        time.sleep(0.05)
        start = time.perf_counter()
        dicomrelay.scan(data, digest="sha256", chunk_size=MIB)
        end = time.perf_counter()
    finally:
        stop.set()
        counter.join()
    during = [t for t in ticks if start <= t <= end]
    gaps = [b - a for a, b in zip([start, *during], [*during, end], strict=True)]
    assert end - start > 0.05, "scan too quick to tell"
    assert len(during) >= 10, f"{len(during)} ticks during a {end - start:.3f}s scan"
    assert max(gaps) < (end - start) / 2
