"""STOW-RS from another organisation meets the node's inbound rules, as a
transfer over the exchange does: what they refuse is not stored (0x0124, not
authorised, in the standard answer), and each refusal is audited with its
study and patient. A study a rule reconciles is refused too: STOW-RS does
not reconcile, and an unreconciled study must not be filed. The node's own
callers are not subject to rules about other organisations."""

from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path

import pytest
import requests
import urllib3
from dicomweb_client.api import DICOMwebClient

from dicomrelay.synth import PROFILES, write_study

from .helpers import Pki, study_files
from .web_helpers import create_token, read_datasets, serving, write_config

RULES = """
[[rules]]
name = "ct-from-rx2"
direction = "receive"
from = ["RX2"]
modalities = ["CT"]
"""

RECONCILED = """
[[rules]]
name = "from-rx2"
direction = "receive"
from = ["RX2"]

[rules.reconcile]
csv = "{csv}"
local_issuer = "RX1"
"""


def _session(orgs: Pki, code: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = False  # the node's certificate names rx1.org.dicomrelay, not 127.0.0.1
    identity = orgs.identity(code)
    session.cert = (str(identity.cert), str(identity.key))
    return session


def _failed_reasons(error: requests.HTTPError) -> list[int]:
    assert error.response is not None
    answer = error.response.json()
    return [item["00081197"]["Value"][0] for item in answer["00081198"]["Value"]]


def _audit(root: Path) -> list[tuple[str, str, str | None, str | None]]:
    with sqlite3.connect(root / "data" / "ledger.sqlite") as db:
        return db.execute(
            "SELECT org, action, study_uid, patient_id FROM audit ORDER BY id"
        ).fetchall()


def test_inbound_rules_refuse_what_they_do_not_allow(tmp_path: Path, orgs: Pki) -> None:
    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
    mr = read_datasets(study_files(write_study(tmp_path / "mr", PROFILES["mr"], 2, seed=1)))
    ct = read_datasets(study_files(write_study(tmp_path / "ct", PROFILES["ct"], 2, seed=2)))
    config = write_config(tmp_path, orgs, https=True, rules=RULES)
    token = create_token(config, "pacs", "write")
    with serving(config) as s:
        rx2 = DICOMwebClient(s.base, session=_session(orgs, "RX2"))
        with pytest.raises(requests.HTTPError) as refused:
            rx2.store_instances(mr)
        assert refused.value.response is not None
        assert refused.value.response.status_code == 409
        assert _failed_reasons(refused.value) == [0x0124, 0x0124]
        assert rx2.search_for_studies() == []  # nothing of it was kept
        rx2.store_instances(ct)  # the rule allows CT from RX2
        assert [r["0020000D"]["Value"][0] for r in rx2.search_for_studies()] == [
            ct[0].StudyInstanceUID
        ]
        # The node's own systems store what RX2 may not send.
        session = _session(orgs, "RX2")
        session.cert = None
        own = DICOMwebClient(s.base, session=session, headers={"Authorization": f"Bearer {token}"})
        own.store_instances(mr)
        assert len(own.retrieve_study(mr[0].StudyInstanceUID)) == 2
    refusals = [row for row in _audit(tmp_path) if row[1] == "policy-refused"]
    assert refusals == [("RX2", "policy-refused", mr[0].StudyInstanceUID, mr[0].PatientID)] * 2


def test_a_study_its_rule_reconciles_is_not_stored_unreconciled(tmp_path: Path, orgs: Pki) -> None:
    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
    mr = read_datasets(study_files(write_study(tmp_path / "mr", PROFILES["mr"], 1, seed=3)))
    mapping = tmp_path / "patients.csv"
    mapping.write_text(f"sender,issuer,patient_id,local_patient_id\nRX2,,{mr[0].PatientID},L1\n")
    config = write_config(tmp_path, orgs, https=True, rules=RECONCILED.format(csv=mapping))
    with serving(config) as s:
        rx2 = DICOMwebClient(s.base, session=_session(orgs, "RX2"))
        with pytest.raises(requests.HTTPError) as refused:
            rx2.store_instances(mr)
        assert _failed_reasons(refused.value) == [0x0124]
        assert rx2.search_for_studies() == []
    assert [r[1] for r in _audit(tmp_path)].count("policy-refused") == 1
