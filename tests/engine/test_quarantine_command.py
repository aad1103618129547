"""The operator's side, from the shell: ``dicomrelay send`` to a research
organisation (a ``serve`` process) says what it de-identified and held;
``status`` and ``quarantine list|show`` show the held instance;
``quarantine release`` queues it (and is audited); ``quarantine delete``
removes the held bytes. A rule whose de-identification cannot work is a
configuration error in one line."""

from __future__ import annotations

import os
import re
from pathlib import Path

import orjson
import pytest

from dicomrelay import synth
from dicomrelay.rewrite import Set, rewrite_file

from .helpers import Pki, closed_port, make_study, query
from .processes import dicomrelay, last_json_line, receiver_toml
from .test_send_serve import serve

RESEARCH_RULE = """
[[rules]]
name = "research"
direction = "send"
roles = ["research"]
deidentify = {{ options = [{options}], key_file = "{key}" }}
"""


def sender_toml(root: Path, orgs: Pki, port: int, *, options: str, key: Path) -> Path:
    identity = orgs.identity("RX1")
    path = root / "rx1.toml"
    path.write_text(
        f'[node]\norg = "RX1"\ndata_dir = "{root / "rx1"}"\n\n'
        f'[tls]\ncert = "{identity.cert}"\nkey = "{identity.key}"\nca = "{identity.ca}"\n\n'
        f'[[peers]]\norg = "RES1"\nhost = "127.0.0.1"\nport = {port}\nrole = "research"\n'
        + RESEARCH_RULE.format(options=options, key=key)
    )
    return path


def study_with_a_capture(root: Path) -> Path:
    """Three CT slices and a secondary capture (no Burned In Annotation) of one study."""
    study = make_study(root / "study", 3, profile="ct", seed=4)
    first = next(study.iterdir())
    uid = dicomrelay("scan", os.fspath(first), "--json")
    study_uid = orjson.loads(uid.stdout.splitlines()[0])["study_instance_uid"]
    capture = next(synth.write_study(root / "capture", synth.PROFILES["small"], 1).iterdir())
    rewrite_file(capture, study / "capture.dcm", [Set(tag=0x0020000D, value=study_uid, vr="UI")])
    return study


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "project.key"
    path.write_text(os.urandom(32).hex() + "\n")
    return path


def test_send_holds_and_the_operator_releases_or_deletes(tmp_path: Path, key: Path) -> None:
    orgs = Pki(tmp_path / "pki")
    port = closed_port()
    receiver = serve(receiver_toml(tmp_path, orgs.identity("RES1"), port))
    try:
        config = os.fspath(
            sender_toml(tmp_path, orgs, port, options='"retain-patient-characteristics"', key=key)
        )
        study = study_with_a_capture(tmp_path)
        sent = dicomrelay("send", os.fspath(study), "--to", "RES1", "--config", config)
        receipt = last_json_line(sent)
        assert len(receipt["instances"]) == 3
        assert re.search(r"de-identified: study \S+ goes as 2\.25\.\d+", sent.stderr)
        [hold_id] = re.findall(r"held in quarantine as (\w+): instance", sent.stderr)
        assert "Secondary Capture Image without Burned In Annotation" in sent.stderr

        status = last_json_line(dicomrelay("status", "--config", config, "--json"))
        assert status["counts"]["held"] == 1
        [held] = status["held"]
        assert held["id"] == hold_id
        assert held["kind"] == "burned-in-annotation"
        assert held["org"] == "RES1"
        text = dicomrelay("status", "--config", config)
        assert "held in quarantine" in text.stdout
        assert hold_id in text.stdout

        listed = dicomrelay("quarantine", "list", "--config", config)
        assert listed.returncode == 0
        [line] = listed.stdout.splitlines()
        assert line.startswith(f"{hold_id}  burned-in-annotation  to RES1  study ")
        shown = last_json_line(
            dicomrelay("quarantine", "show", hold_id, "--json", "--config", config)
        )
        assert shown["state"] == "held"
        assert Path(shown["location"]).read_bytes() == (study / "capture.dcm").read_bytes()

        released = dicomrelay("quarantine", "release", hold_id, "--config", config)
        assert released.returncode == 0, released.stderr
        [transfer_id] = re.findall(rf"{hold_id} released: transfer (\w+) to RES1", released.stdout)
        assert "no node serves this ledger here" in released.stderr
        assert not Path(shown["location"]).exists()
        again = dicomrelay("quarantine", "release", hold_id, "--config", config)
        assert again.returncode == 1
        assert f"{hold_id} was released already ({transfer_id})" in again.stderr
        db = tmp_path / "rx1" / "ledger.sqlite"
        [(state, total)] = query(db, "SELECT state, total FROM outgoing WHERE id = ?", transfer_id)
        assert (state, total) == ("queued", 1)

        # Sent again: held again (the release was for that one time); deleted.
        dicomrelay("send", os.fspath(study), "--to", "RES1", "--config", config)
        [second] = orjson.loads(
            dicomrelay("quarantine", "list", "--config", config, "--json").stdout
        )
        deleted = dicomrelay("quarantine", "delete", second["id"], "--config", config)
        assert deleted.returncode == 0, deleted.stderr
        assert not Path(second["location"]).exists()
        assert dicomrelay("quarantine", "list", "--config", config).stdout == ""
        everything = dicomrelay("quarantine", "list", "--all", "--config", config)
        assert "[released]" in everything.stdout
        assert "[deleted]" in everything.stdout
        unknown = dicomrelay("quarantine", "show", "nope", "--config", config)
        assert unknown.returncode == 1
        assert unknown.stderr.strip() == (
            "dicomrelay quarantine: no held instance 'nope' in the quarantine"
        )
    finally:
        receiver.stop()
    actions = [a for (a,) in query(db, "SELECT action FROM audit ORDER BY id")]
    for action in ("deidentified", "quarantined", "quarantine-released", "quarantine-deleted"):
        assert action in actions


@pytest.mark.parametrize(
    ("options", "key_text", "message"),
    [
        (
            '"retain-longitudinal-temporal-modified"',
            "k" * 32,
            "unknown de-identification option 'retain-longitudinal-temporal-modified'",
        ),
        ('"retain-uids"', "short", "the project key is 5 bytes; at least 16 are needed"),
        (
            '"retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"',
            "k" * 32,
            "exclude each other",
        ),
    ],
)
def test_a_rule_that_cannot_de_identify_is_a_configuration_error(
    tmp_path: Path, options: str, key_text: str, message: str
) -> None:
    key = tmp_path / "project.key"
    key.write_text(key_text)
    config = sender_toml(tmp_path, Pki(tmp_path / "pki"), 1, options=options, key=key)
    result = dicomrelay("status", "--config", os.fspath(config))
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"dicomrelay status: {config}: [rules.deidentify] ")
    assert message in line
