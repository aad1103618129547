"""Policy at send: a study the node's rules refuse is refused before anything
is queued, with one clear line, and the decision is audited either way."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicomrelay.config import NodeConfig
from dicomrelay.intake import queue_study
from dicomrelay.ledger import TransferState, open_ledger
from dicomrelay.policy import PolicyRefused

from .helpers import Pki, make_study, query
from .processes import dicomrelay

pytestmark = pytest.mark.anyio

RULES = """
[[peers]]
org = "RX2"
host = "127.0.0.1"
port = 1
role = "trust"

[[peers]]
org = "RES1"
host = "127.0.0.1"
port = 2
role = "research"

[[rules]]
name = "ct-to-trusts"
direction = "send"
roles = ["trust"]
modalities = ["CT"]
"""


def write_config(root: Path, orgs: Pki) -> Path:
    identity = orgs.identity("RX1")
    path = root / "rx1.toml"
    path.write_text(
        f'[node]\norg = "RX1"\ndata_dir = "{root / "data"}"\n\n'
        f'[tls]\ncert = "{identity.cert}"\nkey = "{identity.key}"\nca = "{identity.ca}"\n' + RULES
    )
    return path


def test_send_refuses_what_no_rule_allows_in_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, Pki(tmp_path / "pki"))
    study = make_study(tmp_path / "mr", 3, profile="mr", seed=1)
    refused = dicomrelay("send", os.fspath(study), "--to", "RX2", "--config", os.fspath(config))
    assert refused.returncode == 1, refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert "may not go to RX2: no rule allows MR to RX2 (trust)" in line
    assert "(and 2 more of the study's 3 instances)" in line
    assert "Traceback" not in refused.stderr
    db = tmp_path / "data" / "ledger.sqlite"
    assert query(db, "SELECT count(*) FROM outgoing") == [(0,)]
    [(action, detail)] = query(db, "SELECT action, detail FROM audit")
    assert action == "policy-refused"
    assert "to RX2: no rule allows MR" in detail


async def test_an_allowed_study_is_queued_and_the_decision_audited(tmp_path: Path) -> None:
    config = NodeConfig.from_toml(write_config(tmp_path, Pki(tmp_path / "pki")))
    ledger = await open_ledger(None, data_dir=config.data_dir)
    try:
        ct = make_study(tmp_path / "ct", 2, profile="ct", seed=2)
        transfer = await queue_study(config, ledger, ct, to="RX2", priority="routine")
        assert transfer.state is TransferState.QUEUED
        assert transfer.total == 2
        # CT is allowed to trusts only.
        with pytest.raises(PolicyRefused, match=r"no rule allows CT to RES1 \(research\)"):
            await queue_study(config, ledger, ct, to="RES1", priority="routine")
    finally:
        await ledger.close()
    db = config.data_dir / "ledger.sqlite"
    assert query(db, "SELECT count(*) FROM outgoing") == [(1,)]
    rows = query(db, "SELECT action, transfer_id, detail FROM audit ORDER BY rowid")
    assert [r[0] for r in rows] == ["policy-allowed", "policy-refused"]
    assert rows[0][2].endswith("to RX2: 2 instances, by ct-to-trusts")
