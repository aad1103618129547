"""A study a patient might be sent a link to, made from pydicom's own test
files (real images: a CT, an MR, a JPEG-compressed colour capture, and a
structured report without pixels) under one study, with a patient name
outside ASCII; and a node that serves it, its links made with a base URL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from peers import dicomrelay_command, run

from .helpers import Pki, closed_port
from .web_helpers import Serving, create_token, read_datasets, serving, write_config

STUDY_DESCRIPTION = "CT and MR of the head"
# (pydicom test file, copies, series number, series description)
SERIES = (
    ("CT_small.dcm", 3, "1", "Axial head"),
    ("MR_small.dcm", 2, "2", "T1 sagittal"),
    ("SC_rgb_jpeg_dcmtk.dcm", 1, "3", "Key image (colour)"),
    ("reportsi.dcm", 1, "4", "Report"),
)
IMAGES = sum(copies for _, copies, _, _ in SERIES)


def write_link_study(directory: Path) -> tuple[str, list[Path]]:
    """The study's UID and its files."""
    directory.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    paths = []
    for name, copies, number, description in SERIES:
        series = generate_uid()
        for k in range(copies):
            path = get_testdata_file(name)
            assert path is not None, name
            ds = pydicom.dcmread(path)
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.PatientName = "Müller^Jürgen"
            ds.PatientID = "LINK-0001"
            ds.StudyInstanceUID = study
            ds.StudyDate = "20261127"
            ds.StudyTime = "101500"
            ds.StudyDescription = STUDY_DESCRIPTION
            ds.SeriesInstanceUID = series
            ds.SeriesNumber = number
            ds.SeriesDescription = description
            ds.InstanceNumber = k + 1
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            out = directory / f"{number}-{k}.dcm"
            ds.save_as(out, enforce_file_format=True)
            paths.append(out)
    return study, paths


def link_config(root: Path, orgs: Pki, *, https: bool = False) -> Path:
    """RX1's TOML, its web server on a port chosen here, so that links
    (made by the command line before or while it serves) name it."""
    path = write_config(root, orgs, https=https)
    port = closed_port()
    scheme = "https" if https else "http"
    text = path.read_text().replace(
        "[web]\nport = 0\n", f'[web]\nport = {port}\nbase_url = "{scheme}://127.0.0.1:{port}"\n'
    )
    path.write_text(text)
    return path


@dataclass(frozen=True)
class SharedStudy:
    serving: Serving
    config: Path
    root: Path
    study: str
    paths: list[Path]


@contextmanager
def shared_study(root: Path, orgs: Pki, *, https: bool = False) -> Iterator[SharedStudy]:
    """A node serving the study (stored over STOW-RS, as a system would)."""
    config = link_config(root, orgs, https=https)
    study, paths = write_link_study(root / "study")
    token = create_token(config, "ingest", "write")
    with serving(config) as s:
        answer = s.client(token).store_instances(read_datasets(paths))
        assert "FailedSOPSequence" not in answer
        yield SharedStudy(s, config, root, study, paths)


def share(config: Path, *args: str) -> list[str]:
    """``dicomrelay share ...`` as an operator runs it: its lines of output."""
    done = run(dicomrelay_command("share", *args, "--config", str(config)))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def link_audit(root: Path) -> list[tuple[str, str, str | None, str | None, int, str]]:
    """(who, action, study, remote, outcome, detail) of every link's audit row."""
    with sqlite3.connect(root / "data" / "ledger.sqlite") as db:
        return db.execute(
            "SELECT org, action, study_uid, remote, outcome, detail FROM audit"
            " WHERE action LIKE 'share-%' ORDER BY id"
        ).fetchall()
