"""Who may call a node's DICOMweb: tokens of its own organisation (read or
write; wrong, revoked: 401; read-only storing: 403), organisations proven by
their certificates over mutual TLS, who see only the studies sent to or by
them (another organisation's: 404, as if absent). Nothing is returned to a
caller turned away, and every call is audited."""

from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path

import requests
import urllib3
from dicomweb_client.api import DICOMwebClient

from dicomrelay.synth import PROFILES, write_study

from .helpers import Pki, study_files
from .web_helpers import (
    create_token,
    read_datasets,
    revoke_token,
    serving,
    write_config,
)


def audit_rows(root: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(root / "data" / "ledger.sqlite") as db:
        return db.execute(
            "SELECT org, action, detail FROM audit WHERE action LIKE 'dicomweb-%' ORDER BY id"
        ).fetchall()


def test_tokens_no_wrong_revoked_and_read_only(tmp_path: Path, orgs: Pki) -> None:
    paths = study_files(write_study(tmp_path / "mr", PROFILES["mr"], 2))
    config = write_config(tmp_path, orgs)
    writer = create_token(config, "ingest", "write", "--expires", "90d")
    reader = create_token(config, "viewer", "read")
    doomed = create_token(config, "laptop", "read")
    revoke_token(config, "laptop")
    with serving(config) as s:
        datasets = read_datasets(paths)
        s.client(writer).store_instances(datasets)
        study = datasets[0].StudyInstanceUID
        url = f"{s.base}/studies/{study}"
        assert len(s.client(reader).retrieve_study(study)) == 2
        for token, why in (
            (None, "no credentials"),
            ("drt_nonsense", "unknown token"),
            (doomed, "token laptop was revoked"),
        ):
            headers = {} if token is None else {"Authorization": f"Bearer {token}"}
            for answer in (
                requests.get(url, headers=headers),
                requests.get(f"{s.base}/studies", headers=headers),
                requests.get(f"{url}/metadata", headers=headers),
            ):
                assert answer.status_code == 401
                assert answer.headers["WWW-Authenticate"].startswith("Bearer")
                assert study not in answer.text
                assert "Synthetic" not in answer.text
            refusals = [d for _, a, d in audit_rows(tmp_path) if a == "dicomweb-refused"]
            assert sum(why in d and "127.0.0.1" in d for d in refusals) == 3, why
        answer = requests.post(
            f"{s.base}/studies",
            data=b"--x\r\n\r\n--x--",
            headers={
                "Authorization": f"Bearer {reader}",
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=x',
            },
        )
        assert answer.status_code == 403
    rows = audit_rows(tmp_path)
    assert any(a == "dicomweb-denied" and "viewer" in d and "403" in d for _, a, d in rows)
    assert any(a == "dicomweb-retrieved" and "viewer" in d and study in d for _, a, d in rows)


def test_other_organisations_see_only_their_own_studies(tmp_path: Path, orgs: Pki) -> None:
    ours = study_files(write_study(tmp_path / "ours", PROFILES["mr"], 2, seed=1))
    theirs = study_files(write_study(tmp_path / "theirs", PROFILES["mr"], 2, seed=2))
    config = write_config(tmp_path, orgs, https=True)
    token = create_token(config, "viewer", "write")
    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)

    def session(code: str | None) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # no CA bundle from the environment over verify below
        session.verify = False  # the node's certificate names rx1.org.dicomrelay, not 127.0.0.1
        if code is not None:
            identity = orgs.identity(code)
            session.cert = (str(identity.cert), str(identity.key))
        return session

    with serving(config) as s:
        own = DICOMwebClient(
            s.base, session=session(None), headers={"Authorization": f"Bearer {token}"}
        )
        own.store_instances(read_datasets(ours))
        rx2_session = session("RX2")
        rx2 = DICOMwebClient(s.base, session=rx2_session)
        rx2.store_instances(read_datasets(theirs))
        our_study = read_datasets(ours[:1])[0].StudyInstanceUID
        their_study = read_datasets(theirs[:1])[0].StudyInstanceUID

        # RX2 sees its own study, not RX1's: not found, as if it were not there.
        assert [r["0020000D"]["Value"][0] for r in rx2.search_for_studies()] == [their_study]
        assert len(rx2.retrieve_study(their_study)) == 2
        for path in ("", "/metadata", "/series"):
            answer = rx2_session.get(f"{s.base}/studies/{our_study}{path}")
            assert answer.status_code == 404 if path != "/series" else answer.json() == []
            assert "Synthetic" not in answer.text
        # The node's own organisation sees both.
        found = {r["0020000D"]["Value"][0] for r in own.search_for_studies()}
        assert found == {our_study, their_study}
        # An organisation that is not a peer is not let in, certificate or not.
        assert session("RX9").get(f"{s.base}/studies").status_code == 401
        # A token over HTTPS works as over HTTP.
        assert len(own.retrieve_study(our_study)) == 2

    rows = audit_rows(tmp_path)
    assert any(o == "RX2" and a == "dicomweb-denied" and our_study in d for o, a, d in rows)
    assert any(o == "RX2" and a == "dicomweb-stored" and their_study in d for o, a, d in rows)
    assert any(a == "dicomweb-refused" and "RX9" in d for _, a, d in rows)
