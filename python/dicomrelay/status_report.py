"""What ``dicomrelay status`` reports, read from a ledger once for the
command line (text or ``--json``) and the web server's status page alike:
counts by state, transfers by destination, priority and state, the latest
transfers, every dead letter with why it died, what is held in quarantine, and the
studies that wait for an operator to name their patient."""

from __future__ import annotations

from typing import Any

from dicomrelay.ledger import Ledger, TransferState
from dicomrelay.ledger.reconciliations import Reconciliation

Rows = list[dict[str, Any]]
LATEST = 50  # transfers listed, the newest first


async def status_report(ledger: Ledger) -> dict[str, Any]:
    """``counts``, ``by_destination``, ``transfers``, ``dead_letters`` and
    ``held`` and ``needs_reconciliation``, as ``status --json`` prints them."""
    counts = await ledger.counts()
    grouped = (await ledger.metrics())["transfers"]
    transfers = await ledger.all_outgoing(limit=LATEST)
    dead = await ledger.all_outgoing(limit=10_000, state=TransferState.DEAD)
    held = await ledger.held_instances(limit=10_000)
    needs = await ledger.reconciliations(states=("held", "resolving"))
    by_destination: Rows = [
        {"to": to, "priority": priority, "state": state, "transfers": n, "instances": instances}
        for to, priority, state, n, instances in sorted(grouped)
    ]
    rows: Rows = [
        {
            "id": t.id,
            "to": t.destination,
            "state": t.state.value,
            "priority": t.priority,
            "acked": t.acked,
            "total": t.total,
            "attempts": t.attempts,
            "error": t.last_error,
            "worker": t.claimed_by,  # the worker holding it, when workers share the ledger
        }
        for t in transfers
    ]
    # Every dead letter, however old, with why it died: each waits for `retry`.
    dead_letters: Rows = [
        {
            "id": t.id,
            "to": t.destination,
            "study": t.study_instance_uid,
            "attempts": t.attempts,
            "reason": t.last_error,
        }
        for t in dead
    ]
    return {
        "counts": counts,
        "by_destination": by_destination,
        "transfers": rows,
        "dead_letters": dead_letters,
        "held": [h.as_dict() for h in held],
        # Studies no inbound mapping placed: each waits for `reconcile`.
        "needs_reconciliation": [needs_row(r) for r in needs],
    }


def needs_row(r: Reconciliation) -> dict[str, object]:
    """A study held for reconciliation, as ``status`` and ``reconcile --list`` show it."""
    return {
        "study": r.study_uid,
        "from": r.sender,
        "transfer": r.transfer_id,
        "state": r.state,
        "patient_id": r.foreign_patient_id,
        "issuer": r.foreign_issuer,
        "reason": r.reason,
        "since": r.updated,
    }
