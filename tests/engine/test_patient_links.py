"""Patient links served by a node, as a person's browser (here: requests)
meets them: the study's page, each series' preview, the whole study as a
CD-like ZIP (its DICOMDIR read by pydicom, every instance byte-identical to
the store), a PIN asked for and counted, and links that do not open
(revoked, expired, unknown, locked) answered with a page and nothing else.
Every view, download and refusal is audited under the link's id."""

from __future__ import annotations

import io
import sqlite3
import subprocess
import time
import zipfile
from pathlib import Path

import pydicom
import requests
from pydicom.fileset import FileSet

from dicomrelay.audit import Outcome
from dicomrelay.sharing import PIN_ATTEMPTS
from peers import dicomrelay_command, run

from .helpers import Pki
from .link_helpers import (
    IMAGES,
    SERIES,
    STUDY_DESCRIPTION,
    link_audit,
    link_config,
    share,
    shared_study,
)
from .web_helpers import read_picture, size_of


def test_the_page_previews_and_the_zip_of_a_study(tmp_path: Path, orgs: Pki) -> None:
    with shared_study(tmp_path, orgs) as shared:
        lines = share(shared.config, shared.study, "--expires", "7d")
        url = lines[-1]
        assert url.startswith("http://127.0.0.1:")
        assert "/s/" in url
        link_id = lines[0].split()[1]
        page = requests.get(url)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["referrer-policy"] == "no-referrer"
        html = page.text
        assert STUDY_DESCRIPTION in html
        assert "27 November 2026" in html
        assert f"{IMAGES} images in {len(SERIES)} series" in html
        for _, _, _, description in SERIES:
            assert description in html
        assert "CT, MR, OT, SR" in html
        assert "<script" not in html

        # Each series' preview, through the link's own scope.
        token = url.rsplit("/", 1)[-1]
        previews = [p.split('"')[0] for p in html.split('<img src="')[1:]]
        assert len(previews) == len(SERIES) - 1  # the report has no pixels to preview
        assert "No picture: a report or document" in html
        kinds = []
        for src in previews:
            assert src.startswith(f"{token}/preview/")
            answer = requests.get(f"{url}/{src.split('/', 1)[1]}")
            kinds.append(answer.status_code)
            if answer.status_code == 200:
                found, pixels = read_picture(answer.content)
                assert found == "JPEG"
                assert max(size_of(pixels)) <= 384
        assert kinds == [200, 200, 200]
        report = pydicom.dcmread(shared.paths[-1]).SeriesInstanceUID
        for series in (report, "1.2.3.4"):  # nothing to picture; not in the study
            assert requests.get(f"{url}/preview/{series}").status_code == 404

        # Its size asked (HEAD): nothing sent, and not audited as a download.
        head = requests.head(f"{url}/study.zip")
        assert head.status_code == 200
        assert head.content == b""
        # The whole study, as on a CD, streamed with its length known.
        answer = requests.get(f"{url}/study.zip", stream=True)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/zip"
        assert "attachment" in answer.headers["content-disposition"]
        body = b"".join(answer.iter_content(1 << 16))
        assert len(body) == int(answer.headers["content-length"])
        s = shared.serving
        stored = {
            uid: bytes(s.portal.call(s.node.store.read_instance, digest))
            for uid, digest in s.portal.call(s.node.study, shared.study)
        }
        assert len(stored) == IMAGES
        check_cd_zip(body, stored, tmp_path / "unzipped")

    rows = link_audit(tmp_path)
    views = [r for r in rows if r[1] == "share-viewed"]
    assert all(r[0] == link_id and r[2] == shared.study for r in views)
    assert all(r[3] == "127.0.0.1" and r[4] == Outcome.SUCCESS for r in views)
    assert sum("page of study" in r[5] for r in views) == 1
    assert sum("(its size only: HEAD)" in r[5] for r in views) == 1
    assert sum("preview of series" in r[5] for r in views) == 3
    assert len(views) == 5
    [download] = [r for r in rows if r[1] == "share-downloaded"]
    assert download[0] == link_id
    assert f"{IMAGES} instances" in download[5]
    refused = [r for r in rows if r[1] == "share-refused"]
    assert refused == []


def check_cd_zip(body: bytes, stored: dict[str, bytes], out: Path) -> None:
    """The ZIP opens, holds a DICOMDIR that pydicom reads as a File-set whose
    records lead to every instance, each byte-identical to the store."""
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert infos[0].filename == "DICOMDIR"
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
        names = [i.filename for i in infos[1:]]
        for name in names:
            parts = name.split("/")
            assert parts[0] == "DICOM"
            assert len(parts) == 4
            assert all(len(p) <= 8 and p.isalnum() and p.isupper() for p in parts)
        archive.extractall(out)
    # DCMTK reads it too, without a warning.
    dumped = subprocess.run(["dcmdump", str(out / "DICOMDIR")], capture_output=True, text=True)
    assert dumped.returncode == 0, dumped.stderr
    assert not dumped.stderr
    assert "DirectoryRecordType" in dumped.stdout
    dicomdir = pydicom.dcmread(out / "DICOMDIR")
    assert dicomdir.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    fs = FileSet(dicomdir)
    assert len(fs) == len(stored)
    [patient] = [r for r in dicomdir.DirectoryRecordSequence if r.DirectoryRecordType == "PATIENT"]
    assert str(patient.PatientName) == "Müller^Jürgen"
    kinds = sorted(r.DirectoryRecordType for r in dicomdir.DirectoryRecordSequence)
    assert kinds.count("SERIES") == len(SERIES)
    assert kinds.count("STUDY") == 1
    assert kinds.count("SR DOCUMENT") == 1
    assert kinds.count("IMAGE") == len(stored) - 1
    seen = set()
    for instance in fs:
        data = Path(instance.path).read_bytes()
        assert data == stored[instance.SOPInstanceUID]
        seen.add(instance.SOPInstanceUID)
        assert (
            instance.ReferencedTransferSyntaxUIDInFile
            == instance.load().file_meta.TransferSyntaxUID
        )
    assert seen == set(stored)
    # DCMTK's DICOMDIR reader finds every record by its offsets and the files
    # consistent with them (updating it in place; JPEG is not of the plain CD
    # profile, hence -Nxc and its warning).
    checked = subprocess.run(
        ["dcmmkdir", "+U", "-Nxc", "+I", "+r", "DICOM"],
        capture_output=True,
        text=True,
        cwd=out,
    )
    assert checked.returncode == 0, checked.stderr
    complaints = [
        line
        for line in (checked.stdout + checked.stderr).splitlines()
        if line.startswith(("E:", "W:", "F:")) and "JPEGBaseline found" not in line
    ]
    assert complaints == []
    # Series in number order, instances in number order within each.
    ct = [i for i in fs if i.path.split("/")[-2] == "SE000001"]
    assert [int(i.load().InstanceNumber) for i in sorted(ct, key=lambda i: i.path)] == [1, 2, 3]


def test_a_pin_is_asked_for_counted_and_locks_the_link(tmp_path: Path, orgs: Pki) -> None:
    with shared_study(tmp_path, orgs) as shared:
        lines = share(shared.config, shared.study, "--pin")
        url, pin = lines[-1], lines[-2]
        assert len(pin) == 6
        assert pin.isdigit()
        link_id = lines[0].split()[1]
        # Without the PIN: the form, and nothing of the study.
        form = requests.get(url)
        assert form.status_code == 200
        assert 'name="pin"' in form.text
        assert STUDY_DESCRIPTION not in form.text
        for path in ("/study.zip", "/preview/x"):
            refused = requests.get(url + path)
            assert refused.status_code == 403
            assert "PIN" in refused.text
        wrong = f"{(int(pin) + 1) % 10**6:06d}"
        answer = requests.post(url, data={"pin": wrong}, allow_redirects=False)
        assert answer.status_code == 403
        assert f"{PIN_ATTEMPTS - 1} attempts left" in answer.text
        # The right PIN: a cookie for this link's path, then the study.
        session = requests.Session()
        answer = session.post(url, data={"pin": pin}, allow_redirects=False)
        assert answer.status_code == 303
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert f"Path=/s/{url.rsplit('/', 1)[-1]}" in cookie
        page = session.get(url)
        assert page.status_code == 200
        assert STUDY_DESCRIPTION in page.text
        assert session.get(url + "/study.zip").status_code == 200
        # A made-up cookie opens nothing.
        for made_up in ("0" * 64, "é"):
            forged = requests.get(url + "/study.zip", cookies={"pin": made_up})
            assert forged.status_code == 403
        # Wrong PINs in a row lock it, for everyone, the right PIN and cookie included.
        for _n in range(PIN_ATTEMPTS):
            answer = requests.post(url, data={"pin": wrong})
            assert answer.status_code == 403
        assert "locked" in answer.text
        for attempt in (session.get(url), session.get(url + "/study.zip")):
            assert attempt.status_code == 403
            assert "locked" in attempt.text
            assert STUDY_DESCRIPTION not in attempt.text
        assert requests.post(url, data={"pin": pin}).status_code == 403

    rows = link_audit(tmp_path)
    failed = [r for r in rows if r[1] == "share-pin-refused"]
    assert len(failed) == PIN_ATTEMPTS + 1
    assert all(r[0] == link_id for r in failed)
    assert failed[-1][5].endswith("locked")
    assert failed[-1][4] == Outcome.MINOR_FAILURE
    assert [r[0] for r in rows if r[1] == "share-pin-accepted"] == [link_id]
    assert any(r[1] == "share-refused" and "link locked" in r[5] for r in rows)


def test_revoked_expired_and_unknown_links_serve_nothing(tmp_path: Path, orgs: Pki) -> None:
    with shared_study(tmp_path, orgs) as shared:
        revoked, expired = (share(shared.config, shared.study) for _ in range(2))
        assert requests.get(revoked[-1]).status_code == 200
        token = revoked[-1].rsplit("/", 1)[-1]
        assert share(shared.config, "revoke", token) == ["link revoked"]
        expired_id = expired[0].split()[1]
        with sqlite3.connect(tmp_path / "data" / "ledger.sqlite") as db:
            db.execute(
                "UPDATE share_links SET expires = ? WHERE id = ?", (time.time() - 1, expired_id)
            )
        unknown = revoked[-1][: -len(token)] + "A" * len(token)
        for url, status, words in (
            (revoked[-1], 410, "withdrawn"),
            (expired[-1], 410, "expired"),
            (unknown, 404, "not found"),
        ):
            for path in ("", "/study.zip", "/preview/1.2.3"):
                answer = requests.get(url + path)
                assert answer.status_code == status, (url, path)
                assert words in answer.text.lower()
                assert answer.headers["content-type"].startswith("text/html")
                assert STUDY_DESCRIPTION not in answer.text
        listing = share(shared.config, "list")
        states = {line.split("\t")[0]: line.split("\t")[2] for line in listing}
        assert states[revoked[0].split()[1]] == "revoked"
        assert states[expired_id] == "expired"

    rows = [r for r in link_audit(tmp_path) if r[1] == "share-refused"]
    assert sum("link revoked" in r[5] for r in rows) == 3
    assert sum("link expired" in r[5] and r[0] == expired_id for r in rows) == 3
    assert sum(r[0] == "unknown-link" for r in rows) == 3
    assert all(r[3] == "127.0.0.1" for r in rows)


def test_share_says_what_is_wrong_in_one_line(tmp_path: Path, orgs: Pki) -> None:
    config = link_config(tmp_path, orgs)
    unknown = run(dicomrelay_command("share", "1.2.3.4", "--config", str(config)))
    assert unknown.returncode == 1
    assert unknown.stderr == "dicomrelay share: no study 1.2.3.4 in this node's store\n"
    for args, words in (
        (("revoke", "sl-00000000"), "no active link known by that id, token or URL"),
        (("revoke",), "share revoke needs the link's id, token or URL"),
        (("1.2.3.4", "--expires", "soon"), "a duration is a number and d, h or m"),
    ):
        done = run(dicomrelay_command("share", *args, "--config", str(config)))
        assert done.returncode == 2, args
        assert done.stderr.startswith("dicomrelay share: "), done.stderr
        assert words in done.stderr
        assert len(done.stderr.splitlines()) == 1
    no_web = tmp_path / "no-web.toml"
    no_web.write_text(config.read_text().split("[web]")[0])
    done = run(dicomrelay_command("share", "1.2.3.4", "--config", str(no_web)))
    assert done.returncode == 1
    assert "patient links need a [web] table" in done.stderr
