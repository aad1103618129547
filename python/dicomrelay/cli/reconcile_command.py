"""``dicomrelay reconcile``: the studies held for patient-ID reconciliation,
and an operator's answer to one (the local patient it belongs to)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from dicomrelay import event_loop

if TYPE_CHECKING:
    from dicomrelay.ledger.reconciliations import Reconciliation

Rows = list[dict[str, object]]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "reconcile",
        help="studies held for patient-ID reconciliation; name the local patient of one",
        description="With STUDY_UID: file the held study under the local patient named,"
        " then deliver it into the PACS (by the node serving this ledger). With --list:"
        " the studies held.",
    )
    p.add_argument("study", nargs="?", metavar="STUDY_UID", help="a held study")
    p.add_argument("--patient-id", metavar="ID", help="the local Patient ID")
    p.add_argument("--issuer", metavar="ISSUER", help="its Issuer of Patient ID")
    p.add_argument("--list", action="store_true", help="list the studies held")
    p.add_argument("--json", action="store_true", help="--list: one JSON object")
    p.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the serving node to apply it (default 60)",
    )
    p.add_argument("--config", type=Path, required=True, metavar="FILE.toml")
    p.set_defaults(run=run_reconcile)


def write_held(rows: Rows) -> None:
    if not rows:
        return
    sys.stdout.write("needs reconciliation (`dicomrelay reconcile STUDY_UID --patient-id ID`):\n")
    for r in rows:
        state = "" if r["state"] == "held" else f"  ({r['state']})"
        sys.stdout.write(
            f"{r['study']}  from {r['from']}  patient {r['patient_id']!r}"
            f" (issuer {r['issuer']!r})  {r['reason']}{state}\n"
        )


def _check_text(value: str | None, name: str) -> None:
    from dicomrelay.errors import UsageError

    if value is not None and (not value.strip() or len(value) > 64 or "\\" in value):
        raise UsageError(f"{name} must be 1 to 64 characters, without a backslash")


def run_reconcile(args: argparse.Namespace) -> int:
    from dicomrelay.cli.node_commands import require_ledger
    from dicomrelay.config import NodeConfig
    from dicomrelay.errors import UsageError

    if args.list == (args.study is not None):
        raise UsageError("give a STUDY_UID with --patient-id, or --list")
    if args.study is not None and args.patient_id is None:
        raise UsageError("--patient-id names the local patient the study belongs to")
    _check_text(args.patient_id, "--patient-id")
    _check_text(args.issuer, "--issuer")
    config = NodeConfig.from_toml(args.config)
    require_ledger(config, args.config)
    if args.list:
        return _list(config, args.json)
    return _resolve(config, args)


def _list(config: Any, as_json: bool) -> int:
    from dicomrelay.ledger import open_ledger
    from dicomrelay.status_report import needs_row

    async def held() -> Rows:
        ledger = await open_ledger(
            config.ledger, data_dir=config.data_dir, schema=config.ledger_schema
        )
        try:
            waiting = await ledger.reconciliations(states=("held", "resolving"))
            return [needs_row(r) for r in waiting]
        finally:
            await ledger.close()

    rows = event_loop.run(held)
    if as_json:
        sys.stdout.write(orjson.dumps({"needs_reconciliation": rows}).decode() + "\n")
    elif rows:
        write_held(rows)
    else:
        sys.stdout.write("no study needs reconciliation\n")
    return 0


def _resolve(config: Any, args: argparse.Namespace) -> int:
    from dicomrelay.errors import UsageError
    from dicomrelay.ledger import open_ledger
    from dicomrelay.wakeup import poke

    study, patient, issuer = args.study, args.patient_id.strip(), args.issuer

    async def resolve() -> tuple[int, list[Reconciliation]]:
        ledger = await open_ledger(
            config.ledger, data_dir=config.data_dir, schema=config.ledger_schema
        )
        try:
            rows = await ledger.reconciliations(study_uid=study)
            if not rows:
                raise UsageError(f"no study {study} was held for reconciliation here")
            held = [r for r in rows if r.state == "held"]
            if not held:
                states = ", ".join(sorted({r.state for r in rows}))
                raise UsageError(f"study {study} is not held (it is {states})")
            reason = f"named by an operator: {patient} (issuer {issuer!r})"
            n = await ledger.resolve_reconciliation(
                study, local_patient_id=patient, local_issuer=issuer, reason=reason
            )
            await ledger.audit(
                config.org,
                "reconcile-resolved",
                held[0].transfer_id,
                f"study {study} from {held[0].sender} (patient {held[0].foreign_patient_id!r})"
                f" {reason}",
                study_uid=study,
                patient_id=patient,
            )
            if not poke(config.data_dir):
                return n, []
            deadline = time.monotonic() + args.wait
            while time.monotonic() < deadline:
                await anyio.sleep(0.2)
                rows = await ledger.reconciliations(study_uid=study)
                if not any(r.state == "resolving" for r in rows):
                    return n, rows
            return n, [r for r in rows if r.state == "resolving"]
        finally:
            await ledger.close()

    n, after = event_loop.run(resolve)
    if not after:
        sys.stderr.write(
            f"study {study}: {n} held transfer(s) filed under {patient}; no node serves"
            f" this ledger here: `dicomrelay serve --config {args.config}` applies it\n"
        )
        return 0
    mine = [r for r in after if r.local_patient_id == patient or r.state != "reconciled"]
    if any(r.state == "resolving" for r in mine):
        sys.stderr.write(
            f"study {study}: recorded; the node has not applied it within {args.wait:g} s\n"
        )
        return 1
    failed = [r for r in mine if r.state == "held"]
    if failed:
        sys.stderr.write(f"dicomrelay reconcile: study {study} still held: {failed[0].reason}\n")
        return 1
    sys.stdout.write(f"study {study}: reconciled to patient {patient}; released for delivery\n")
    return 0
