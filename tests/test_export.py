"""Export's pure parts: file names a sender cannot steer, and a bare dataset
given its file meta group so that every file written is Part 10."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from dicomrelay import scan
from dicomrelay.export import as_part10, file_name


def test_file_names_are_uids_or_the_digest() -> None:
    digest = "ab" * 32
    assert file_name("1.2.840.10008.1.2.3", digest) == "1.2.840.10008.1.2.3.dcm"
    for hostile in ("../../etc/passwd", "1.2/3", "", "1." * 40, "1.2.3\x00", "1..2"):
        assert file_name(hostile, digest) == f"{digest}.dcm", hostile


def test_a_part10_file_is_kept_as_it_is_and_a_bare_dataset_gets_its_meta(
    tmp_path: Path,
) -> None:
    whole = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    info = scan(whole)
    assert as_part10(whole) is whole
    bare = whole[info.dataset_offset :]
    made = as_part10(bare)
    assert isinstance(made, bytes)
    again = scan(made)
    assert again.has_meta
    assert made[again.dataset_offset :] == bare
    assert (again.sop_instance_uid, again.transfer_syntax_uid) == (
        info.sop_instance_uid,
        info.transfer_syntax_uid,
    )
    path = tmp_path / "made.dcm"
    path.write_bytes(made)
    ds = pydicom.dcmread(path)
    assert ds.SOPInstanceUID == info.sop_instance_uid
    assert ds.file_meta.MediaStorageSOPClassUID == info.sop_class_uid
