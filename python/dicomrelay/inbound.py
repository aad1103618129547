"""A node's inbound rules, applied to each instance another organisation sends
as it arrives, before it is stored: allowed, or refused with the reason (the
sender's transfer then ends, never committed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dicomrelay._native import InstanceInfo, Payload, scan, scan_file
from dicomrelay.errors import DicomParseError
from dicomrelay.policy import Decision, Policy, Subject, decide


@dataclass(frozen=True, kw_only=True, slots=True)
class Verdict:
    """An instance judged: the decision, and what the audit names."""

    decision: Decision
    study_uid: str | None
    patient_id: str | None


class InboundRules:
    """The ``receive`` rules of a node's policy."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    @classmethod
    def of(cls, policy: Policy) -> InboundRules | None:
        """None when no rule is about receiving: every configured peer may send."""
        if not any(r.direction == "receive" for r in policy.rules):
            return None
        return cls(policy)

    def judge_info(self, info: InstanceInfo, *, sender: str, priority: str) -> Verdict:
        subject = Subject(
            modality=info.modality, sop_class_uid=info.sop_class_uid, priority=priority
        )
        decision = decide(
            self.policy,
            subject,
            direction="receive",
            counterpart=self.policy.counterpart(sender),
        )
        return Verdict(
            decision=decision, study_uid=info.study_instance_uid, patient_id=info.patient_id
        )

    def judge(self, data: Payload | Path, *, sender: str, priority: str) -> Verdict:
        """The rules' word on one whole instance (its bytes, or a file of them):
        one that is not DICOM cannot be judged, so it is refused."""
        try:
            info = scan_file(data) if isinstance(data, Path) else scan(data)
        except (DicomParseError, OSError) as e:
            decision = Decision(
                allowed=False, reason=f"not a DICOM instance the inbound rules can judge: {e}"
            )
            return Verdict(decision=decision, study_uid=None, patient_id=None)
        return self.judge_info(info, sender=sender, priority=priority)
