"""What Node.send accepts as a study, turned into the paths it sends."""

from __future__ import annotations

import os
from pathlib import Path

from dicomrelay.sources import materialise


def test_a_folder_gives_every_file_under_it_sorted_and_absolute(tmp_path: Path) -> None:
    study = tmp_path / "study"
    (study / "series1" / "deeper").mkdir(parents=True)
    (study / "series2").mkdir()
    files = [
        study / "b.dcm",
        study / ".hidden",
        study / "series1" / "a.dcm",
        study / "series1" / "deeper" / "c",
        study / "series2" / "d.dcm",
    ]
    for f in files:
        f.write_bytes(b"x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "linked.dcm").write_bytes(b"y")
    (elsewhere / "inside").write_bytes(b"z")
    # A link to a file is that file; a link to a folder is not followed.
    os.symlink(elsewhere / "linked.dcm", study / "link.dcm")
    os.symlink(elsewhere, study / "folder-link")
    os.symlink(tmp_path / "missing", study / "dangling")

    got = materialise(study, tmp_path / "outbox")

    expected = sorted(os.path.abspath(p) for p in [*files, study / "link.dcm"])
    assert got == expected
    assert got == sorted(str(p) for p in study.rglob("*") if p.is_file())


def test_a_file_is_itself_and_bytes_are_written_durably(tmp_path: Path) -> None:
    one = tmp_path / "one.dcm"
    one.write_bytes(b"x")
    assert materialise(one, tmp_path / "outbox") == [str(one)]
    paths = materialise([b"first", str(one)], tmp_path / "outbox")
    assert Path(paths[0]).read_bytes() == b"first"
    assert paths[1] == str(one)
