"""Who may send what to whom, and in what form: a pure decision.

Organisations have a role; a node's rules say which studies (by modality,
SOP class, source AE title, priority) may go to or come from which
organisations (by code or role), and which transforms apply on the way
(de-identification when sending, patient-ID reconciliation when receiving).
``decide`` is a function of (the instance's header, the direction, the other
organisation, the rules) and nothing else: the outbox and the inbox perform
what it returns, and audit it.

Rules are read in order and the first that matches decides. With no rule for
a direction, every configured peer is allowed, as before rules existed; with
at least one, what no rule allows is refused. Whatever the rules say, an
instance never leaves identifiable for an organisation whose role is
research: such a rule must de-identify, and the configuration is refused
otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dicomrelay.confidentiality_profile import Option
from dicomrelay.deidentify import check_options
from dicomrelay.errors import ConfigurationError
from dicomrelay.errors import PolicyRefused as PolicyRefused  # defined with the other errors
from dicomrelay.reconcile import Reconcile

ROLES = ("trust", "private-provider", "teleradiology", "network", "research", "other")
Direction = Literal["send", "receive"]
DIRECTIONS: tuple[Direction, ...] = ("send", "receive")


@dataclass(frozen=True, kw_only=True)
class Deidentify:
    """PS3.15 Annex E de-identification: the profile's options by name, and
    the file holding the project key that makes replacement UIDs and date
    offsets the same on every run. ``allow_burned_in``: send instances whose
    pixels may show identity (else they are held in quarantine);
    ``safe_private``: the list of private attributes that
    ``retain-safe-private`` keeps."""

    options: tuple[str, ...] = ()
    key_file: Path
    allow_burned_in: bool = False
    safe_private: Path | None = None

    def __post_init__(self) -> None:
        names = [o.value for o in Option]
        if unknown := [o for o in self.options if o not in names]:
            raise ConfigurationError(
                f"unknown de-identification option {unknown[0]!r} (options: {', '.join(names)})"
            )
        check_options([Option(o) for o in self.options])
        safe = Option.RETAIN_SAFE_PRIVATE.value in self.options
        if safe and self.safe_private is None:
            raise ConfigurationError("retain-safe-private needs safe_private (a file)")
        if not safe and self.safe_private is not None:
            raise ConfigurationError("safe_private is used only with retain-safe-private")


@dataclass(frozen=True, kw_only=True)
class Counterpart:
    """The organisation on the other end: its code and role."""

    code: str
    role: str = "other"


@dataclass(frozen=True, kw_only=True)
class Subject:
    """What a decision is about, from one instance's header and its arrival."""

    modality: str | None
    sop_class_uid: str | None
    source_ae: str | None = None  # the calling AE title that stored it here, if any
    priority: str = "routine"


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One rule; an empty condition matches anything."""

    name: str
    direction: Direction
    allow: bool
    orgs: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    modalities: frozenset[str] = frozenset()
    sop_classes: frozenset[str] = frozenset()
    source_aes: frozenset[str] = frozenset()
    priorities: frozenset[str] = frozenset()
    deidentify: Deidentify | None = None  # send rules only
    reconcile: Reconcile | None = None  # receive rules only

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ConfigurationError(f"rule {self.name}: direction must be send or receive")
        if unknown := self.roles - set(ROLES):
            raise ConfigurationError(
                f"rule {self.name}: unknown role {sorted(unknown)[0]!r} (roles: {', '.join(ROLES)})"
            )
        if self.deidentify is not None and self.direction != "send":
            raise ConfigurationError(f"rule {self.name}: only a send rule de-identifies")
        if self.reconcile is not None and self.direction != "receive":
            raise ConfigurationError(f"rule {self.name}: only a receive rule reconciles")
        if not self.allow and (self.deidentify is not None or self.reconcile is not None):
            raise ConfigurationError(f"rule {self.name}: a refusing rule applies no transforms")

    def reaches(self, counterpart: Counterpart) -> bool:
        """Whether the rule applies to this organisation, whatever the instance."""
        return _within(self.orgs, counterpart.code) and _within(self.roles, counterpart.role)

    def matches(self, subject: Subject, counterpart: Counterpart) -> bool:
        return (
            self.reaches(counterpart)
            and _within(self.modalities, subject.modality)
            and _within(self.sop_classes, subject.sop_class_uid)
            and _within(self.source_aes, subject.source_ae)
            and _within(self.priorities, subject.priority)
        )


def _within(allowed: frozenset[str], value: str | None) -> bool:
    return not allowed or value in allowed


@dataclass(frozen=True, kw_only=True)
class Decision:
    allowed: bool
    reason: str  # for the audit trail and the error a person reads
    rule: str | None = None  # the rule that decided; None: the default
    deidentify: Deidentify | None = None
    reconcile: Reconcile | None = None


@dataclass(frozen=True, kw_only=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    roles: dict[str, str] = field(default_factory=dict)  # organisation code -> role

    def counterpart(self, code: str) -> Counterpart:
        return Counterpart(code=code, role=self.roles.get(code, "other"))

    def may_deidentify(self, code: str) -> bool:
        """Whether some send rule could de-identify what goes to ``code``,
        whatever the instance: if none could, a study goes as it is."""
        counterpart = self.counterpart(code)
        return any(
            rule.direction == "send" and rule.deidentify is not None and rule.reaches(counterpart)
            for rule in self.rules
        )

    def check(self) -> None:
        """Refuse rules that could let identifiable data reach a research
        organisation: a send rule that allows one without de-identifying."""
        research = [c for c, r in self.roles.items() if r == "research"]
        for rule in self.rules:
            if rule.direction != "send" or not rule.allow or rule.deidentify is not None:
                continue
            reached = [c for c in research if rule.reaches(Counterpart(code=c, role="research"))]
            if reached:
                raise ConfigurationError(
                    f"rule {rule.name} sends to research organisation {reached[0]} "
                    "without de-identifying (add deidentify to it, or narrow it)"
                )


def decide(
    policy: Policy, subject: Subject, *, direction: Direction, counterpart: Counterpart
) -> Decision:
    """Allow or refuse one instance, with the reason and the transforms."""
    relevant = [r for r in policy.rules if r.direction == direction]
    for rule in relevant:
        if rule.matches(subject, counterpart):
            if not rule.allow:
                return Decision(
                    allowed=False, reason=f"refused by rule {rule.name}", rule=rule.name
                )
            return _guard_research(
                Decision(
                    allowed=True,
                    reason=f"allowed by rule {rule.name}",
                    rule=rule.name,
                    deidentify=rule.deidentify,
                    reconcile=rule.reconcile,
                ),
                direction,
                counterpart,
            )
    if relevant:
        where = "to" if direction == "send" else "from"
        what = subject.modality or subject.sop_class_uid or "this instance"
        return Decision(
            allowed=False,
            reason=f"no rule allows {what} {where} {counterpart.code} ({counterpart.role})",
        )
    return _guard_research(
        Decision(allowed=True, reason="a configured peer (no rules)"), direction, counterpart
    )


def _guard_research(decision: Decision, direction: Direction, counterpart: Counterpart) -> Decision:
    if direction == "send" and counterpart.role == "research" and decision.deidentify is None:
        return Decision(
            allowed=False,
            reason=f"{counterpart.code} is a research organisation: "
            "only de-identified data goes there",
            rule=decision.rule,
        )
    return decision


def study_refusal(decisions: list[Decision]) -> Decision | None:
    """A study goes whole or not at all: None when every instance is allowed,
    else the first refusal, its reason counting the instances refused."""
    refused = [d for d in decisions if not d.allowed]
    if not refused:
        return None
    first = refused[0]
    reason = first.reason
    if len(refused) > 1:
        reason = f"{reason} (and {len(refused) - 1} more of the study's {len(decisions)} instances)"
    return Decision(allowed=False, reason=reason, rule=first.rule)
