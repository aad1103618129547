"""Policy: the pure decision of who may send what to whom, and its TOML."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomrelay.config import NodeConfig, Peer
from dicomrelay.errors import ConfigurationError
from dicomrelay.policy import (
    ROLES,
    Counterpart,
    Deidentify,
    Policy,
    Rule,
    Subject,
    decide,
    study_refusal,
)
from dicomrelay.reconcile import Reconcile

CT = Subject(modality="CT", sop_class_uid="1.2.840.10008.5.1.4.1.1.2", priority="routine")
MR = Subject(modality="MR", sop_class_uid="1.2.840.10008.5.1.4.1.1.4", priority="routine")
KEY = Deidentify(options=(), key_file=Path("/keys/project"))
TRUST = Counterpart(code="RX2", role="trust")
RESEARCH = Counterpart(code="RES1", role="research")
RESEARCH_RULE = Rule(
    name="research", direction="send", allow=True, roles=frozenset({"research"}), deidentify=KEY
)


def test_without_rules_every_peer_is_allowed_as_before() -> None:
    decision = decide(Policy(), CT, direction="send", counterpart=TRUST)
    assert decision.allowed
    assert decision.rule is None
    assert decide(Policy(), CT, direction="receive", counterpart=TRUST).allowed


def test_the_first_matching_rule_decides() -> None:
    policy = Policy(
        rules=(
            Rule(name="no-mr", direction="send", allow=False, modalities=frozenset({"MR"})),
            Rule(name="all", direction="send", allow=True),
        )
    )
    assert decide(policy, CT, direction="send", counterpart=TRUST).rule == "all"
    refused = decide(policy, MR, direction="send", counterpart=TRUST)
    assert not refused.allowed
    assert refused.reason == "refused by rule no-mr"


def test_with_rules_for_a_direction_what_none_allows_is_refused() -> None:
    policy = Policy(
        rules=(Rule(name="ct-only", direction="send", allow=True, modalities=frozenset({"CT"})),)
    )
    refused = decide(policy, MR, direction="send", counterpart=TRUST)
    assert not refused.allowed
    assert refused.rule is None
    assert refused.reason == "no rule allows MR to RX2 (trust)"
    # Rules for sending say nothing about receiving.
    assert decide(policy, MR, direction="receive", counterpart=TRUST).allowed


def test_each_condition_narrows_a_rule() -> None:
    rule = Rule(
        name="stroke",
        direction="send",
        allow=True,
        orgs=frozenset({"RX2"}),
        roles=frozenset({"trust"}),
        modalities=frozenset({"CT"}),
        sop_classes=frozenset({CT.sop_class_uid or ""}),
        source_aes=frozenset({"CT_SCANNER"}),
        priorities=frozenset({"urgent"}),
    )
    urgent = Subject(
        modality="CT", sop_class_uid=CT.sop_class_uid, source_ae="CT_SCANNER", priority="urgent"
    )
    assert rule.matches(urgent, TRUST)
    for other in (
        Subject(
            modality="MR", sop_class_uid=CT.sop_class_uid, source_ae="CT_SCANNER", priority="urgent"
        ),
        Subject(modality="CT", sop_class_uid="1.2.3", source_ae="CT_SCANNER", priority="urgent"),
        Subject(
            modality="CT", sop_class_uid=CT.sop_class_uid, source_ae="OTHER", priority="urgent"
        ),
        Subject(modality="CT", sop_class_uid=CT.sop_class_uid, source_ae=None, priority="urgent"),
        Subject(modality="CT", sop_class_uid=CT.sop_class_uid, source_ae="CT_SCANNER"),
    ):
        assert not rule.matches(other, TRUST), other
    assert not rule.matches(urgent, Counterpart(code="RX3", role="trust"))
    assert not rule.matches(urgent, Counterpart(code="RX2", role="network"))


def test_a_research_destination_gets_only_de_identified_data() -> None:
    roles = {"RES1": "research", "RX2": "trust"}
    # With no rules, a research peer is refused: nothing says how to de-identify.
    refused = decide(Policy(roles=roles), CT, direction="send", counterpart=RESEARCH)
    assert not refused.allowed
    assert "research organisation" in refused.reason
    # A rule that de-identifies allows it, and says how.
    policy = Policy(
        rules=(RESEARCH_RULE,),
        roles=roles,
    )
    allowed = decide(policy, CT, direction="send", counterpart=RESEARCH)
    assert allowed.allowed
    assert allowed.deidentify == KEY
    # Receiving from a research organisation is not sending it anything.
    assert decide(Policy(roles=roles), CT, direction="receive", counterpart=RESEARCH).allowed


def test_rules_that_would_leak_to_research_are_refused_at_configuration() -> None:
    leaky = Policy(
        rules=(Rule(name="everyone", direction="send", allow=True),), roles={"RES1": "research"}
    )
    with pytest.raises(
        ConfigurationError, match="rule everyone sends to research organisation RES1"
    ):
        leaky.check()
    # Narrowed to trusts, or refusing, it is fine.
    Policy(
        rules=(Rule(name="trusts", direction="send", allow=True, roles=frozenset({"trust"})),),
        roles={"RES1": "research"},
    ).check()
    Policy(
        rules=(Rule(name="no", direction="send", allow=False),), roles={"RES1": "research"}
    ).check()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"direction": "sideways"}, "direction must be send or receive"),
        ({"roles": frozenset({"hospital"})}, "unknown role 'hospital'"),
        ({"direction": "receive", "deidentify": KEY}, "only a send rule de-identifies"),
        ({"reconcile": Reconcile(table="patient_mapping")}, "only a receive rule reconciles"),
        ({"allow": False, "deidentify": KEY}, "a refusing rule applies no transforms"),
    ],
)
def test_impossible_rules_are_refused(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"name": "r", "direction": "send", "allow": True} | kwargs
    with pytest.raises(ConfigurationError, match=message):
        Rule(**fields)  # type: ignore[arg-type]


def test_a_study_goes_whole_or_not_at_all() -> None:
    policy = Policy(
        rules=(Rule(name="ct", direction="send", allow=True, modalities=frozenset({"CT"})),)
    )
    decisions = [decide(policy, s, direction="send", counterpart=TRUST) for s in (CT, MR, CT, MR)]
    refusal = study_refusal(decisions)
    assert refusal is not None
    assert not refusal.allowed
    assert (
        refusal.reason == "no rule allows MR to RX2 (trust) (and 1 more of the study's 4 instances)"
    )
    assert study_refusal([decide(policy, CT, direction="send", counterpart=TRUST)]) is None


subjects = st.builds(
    Subject,
    modality=st.sampled_from(["CT", "MR", "US", None]),
    sop_class_uid=st.sampled_from(["1.2.3", "1.2.4", None]),
    source_ae=st.sampled_from(["A", "B", None]),
    priority=st.sampled_from(["urgent", "routine", "bulk"]),
)
counterparts = st.builds(
    Counterpart, code=st.sampled_from(["RX2", "RX3", "RES1"]), role=st.sampled_from(ROLES)
)
rules = st.builds(
    Rule,
    name=st.text("abc", min_size=1, max_size=3),
    direction=st.sampled_from(["send", "receive"]),
    allow=st.booleans(),
    orgs=st.frozensets(st.sampled_from(["RX2", "RX3", "RES1"]), max_size=2),
    modalities=st.frozensets(st.sampled_from(["CT", "MR", "US"]), max_size=2),
    priorities=st.frozensets(st.sampled_from(["urgent", "routine"]), max_size=1),
)


@given(st.lists(rules, max_size=5), subjects, counterparts, st.sampled_from(["send", "receive"]))
def test_decisions_are_first_match_and_never_leak_to_research(
    rule_list: list[Rule], subject: Subject, counterpart: Counterpart, direction: str
) -> None:
    policy = Policy(rules=tuple(rule_list))
    decision = decide(policy, subject, direction=direction, counterpart=counterpart)  # type: ignore[arg-type]
    matching = [
        r for r in rule_list if r.direction == direction and r.matches(subject, counterpart)
    ]
    if matching:
        assert decision.rule == matching[0].name
        assert decision.allowed <= matching[0].allow
    elif any(r.direction == direction for r in rule_list):
        assert not decision.allowed
    if direction == "send" and counterpart.role == "research":
        # None of these rules de-identifies: nothing may go.
        assert not decision.allowed


TOML = """
[node]
org = "RX1"
insecure_plaintext = true

[[peers]]
org = "RX2"
host = "127.0.0.1"
port = 7702
role = "trust"

[[peers]]
org = "RES1"
host = "127.0.0.1"
port = 7703
role = "research"

[[rules]]
name = "stroke"
direction = "send"
to = ["rx2"]
modalities = ["CT"]
priorities = ["urgent"]

[[rules]]
name = "research"
direction = "send"
roles = ["research"]
deidentify = { options = ["retain-longitudinal-modified-dates"], key_file = "project.key" }

[[rules]]
direction = "receive"
from = ["RX2"]
reconcile = { table = "patient_mapping" }

[[rules]]
direction = "send"
effect = "refuse"
"""


def test_rules_and_roles_are_read_from_the_node_toml(tmp_path: Path) -> None:
    (tmp_path / "project.key").write_bytes(b"k" * 32)
    path = tmp_path / "rx1.toml"
    path.write_text(TOML)
    config = NodeConfig.from_toml(path)
    assert [p.role for p in config.peers] == ["trust", "research"]
    stroke, research, inbound, last = config.rules
    assert stroke == Rule(
        name="stroke",
        direction="send",
        allow=True,
        orgs=frozenset({"RX2"}),
        modalities=frozenset({"CT"}),
        priorities=frozenset({"urgent"}),
    )
    assert research.deidentify == Deidentify(
        options=("retain-longitudinal-modified-dates",), key_file=tmp_path / "project.key"
    )
    assert inbound.reconcile == Reconcile(table="patient_mapping")
    assert inbound.orgs == frozenset({"RX2"})
    assert inbound.name == "#3"
    assert not last.allow
    policy = config.policy
    urgent_ct = Subject(modality="CT", sop_class_uid=None, priority="urgent")
    assert decide(
        policy, urgent_ct, direction="send", counterpart=policy.counterpart("RX2")
    ).allowed
    routine = decide(policy, CT, direction="send", counterpart=policy.counterpart("RX2"))
    assert (routine.allowed, routine.rule) == (False, "#4")
    to_research = decide(policy, CT, direction="send", counterpart=policy.counterpart("RES1"))
    assert to_research.allowed
    assert to_research.deidentify is not None


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('direction = "out"', "direction must be 'send' or 'receive', not 'out'"),
        ('direction = "send"\neffect = "maybe"', "effect must be 'allow' or 'refuse'"),
        (
            'direction = "send"\nfrom = ["RX2"]',
            "a send rule names organisations with 'to', not 'from'",
        ),
        (
            'direction = "receive"\nto = ["RX2"]',
            "a receive rule names organisations with 'from', not 'to'",
        ),
        ('direction = "send"\nmodality = "CT"', "has no setting 'modality'"),
        ('direction = "send"\nroles = ["hospital"]', "unknown role 'hospital'"),
        (
            'direction = "send"\ndeidentify = { key_file = "missing.key" }',
            "missing.key does not exist",
        ),
        ('direction = "send"\nmodalities = "CT"', "modalities must be a list of strings"),
    ],
)
def test_rule_mistakes_name_the_file_and_setting(tmp_path: Path, rule: str, message: str) -> None:
    path = tmp_path / "rx1.toml"
    path.write_text(f'[node]\norg = "RX1"\ninsecure_plaintext = true\n\n[[rules]]\n{rule}\n')
    with pytest.raises(ConfigurationError, match=message) as caught:
        NodeConfig.from_toml(path)
    assert str(caught.value).startswith(f"{path}:")


def test_a_peer_role_must_be_known() -> None:
    with pytest.raises(ConfigurationError, match="peer RX2: unknown role 'hospital'"):
        Peer(code="RX2", host="h", port=1, role="hospital")


def test_a_configuration_that_would_leak_to_research_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rx1.toml"
    path.write_text(
        '[node]\norg = "RX1"\ninsecure_plaintext = true\n\n'
        '[[peers]]\norg = "RES1"\nhost = "h"\nport = 1\nrole = "research"\n\n'
        '[[rules]]\ndirection = "send"\n'
    )
    with pytest.raises(ConfigurationError, match="rule #1 sends to research organisation RES1"):
        NodeConfig.from_toml(path)


def test_only_a_rule_that_can_reach_a_peer_may_de_identify_for_it() -> None:
    policy = Policy(
        rules=(
            RESEARCH_RULE,
            Rule(name="rx9", direction="send", allow=True, orgs=frozenset({"RX9"}), deidentify=KEY),
            Rule(name="all", direction="send", allow=True),
        ),
        roles={"RES1": "research", "RX2": "trust", "RX9": "trust"},
    )
    assert policy.may_deidentify("RES1")
    assert policy.may_deidentify("RX9")
    assert not policy.may_deidentify("RX2")  # the study goes as it is: digested in one pass
    assert not Policy().may_deidentify("RX2")
