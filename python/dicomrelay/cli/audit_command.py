"""``dicomrelay audit``: the node's audit trail, by patient, study,
organisation and time; as a table, JSON lines, or DICOM audit messages
(PS3.15 A.5) written to a file or sent to a syslog collector (RFC 5424)."""

from __future__ import annotations

import argparse
import datetime
import re
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from dicomrelay import event_loop

if TYPE_CHECKING:
    from dicomrelay.audit import AuditRecord

_AGO = re.compile(r"^(\d+)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def moment(text: str) -> float:
    """An argument type: ``7d``, ``12h``, ``30m`` ago, or an ISO 8601 date or
    time (UTC unless it says otherwise)."""
    if m := _AGO.match(text):
        return time.time() - int(m.group(1)) * _UNIT[m.group(2)]
    try:
        stamp = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (2026-12-01, 2026-12-01T08:30, or 7d, 12h, 30m ago)"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.timestamp()


def register(sub: Any) -> None:
    from dicomrelay.cli.operator_errors import positive_int

    audit = sub.add_parser(
        "audit",
        help="who did what to which study, when, from where (query and export)",
        description="Conditions combine: every row shown matches all given.",
    )
    audit.add_argument("--config", type=Path, required=True, metavar="FILE.toml")
    audit.add_argument("--patient", metavar="ID", help="rows of the patient's studies")
    audit.add_argument("--study", metavar="UID", help="rows of a study and its transfers")
    audit.add_argument("--org", metavar="CODE", help="rows about an organisation (or caller)")
    audit.add_argument("--since", type=moment, metavar="TIME", help="from (7d, or an ISO time)")
    audit.add_argument("--until", type=moment, metavar="TIME", help="before (7d, or an ISO time)")
    audit.add_argument("--limit", type=positive_int, default=1000, help="rows at most (1000)")
    out = audit.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object a line")
    out.add_argument(
        "--atna", type=Path, metavar="FILE", help="write DICOM audit messages, one a line"
    )
    out.add_argument(
        "--syslog",
        metavar="URL",
        help="send DICOM audit messages to udp://, tcp:// or tls://HOST:PORT",
    )
    audit.add_argument("--syslog-ca", type=Path, metavar="PEM", help="CA of a tls:// collector")
    audit.set_defaults(run=run_audit)


def run_audit(args: argparse.Namespace) -> int:
    from dicomrelay.audit import AuditQuery, atna_message, send_syslog, syslog_line
    from dicomrelay.cli.node_commands import require_ledger
    from dicomrelay.config import NodeConfig
    from dicomrelay.ledger import open_ledger

    config = NodeConfig.from_toml(args.config)
    require_ledger(config, args.config)
    query = AuditQuery(
        patient_id=args.patient,
        study_uid=args.study,
        org=args.org.upper() if args.org else None,
        since=args.since,
        until=args.until,
        limit=args.limit,
    )

    async def read() -> list[AuditRecord]:
        ledger = await open_ledger(
            config.ledger, data_dir=config.data_dir, schema=config.ledger_schema
        )
        try:
            return await ledger.audit_trail(query)
        finally:
            await ledger.close()

    records = event_loop.run(read)
    if args.atna is not None:
        text = "".join(atna_message(r, source=config.org) + "\n" for r in records)
        args.atna.write_text(text, encoding="utf-8")
        sys.stderr.write(f"{len(records)} audit messages written to {args.atna}\n")
    elif args.syslog is not None:
        host = socket.gethostname()
        lines = [
            syslog_line(atna_message(r, source=config.org), at=r.at, hostname=host) for r in records
        ]
        ca = str(args.syslog_ca) if args.syslog_ca else None
        sent = send_syslog(lines, args.syslog, ca=ca)
        sys.stderr.write(f"{sent} audit messages sent to {args.syslog}\n")
    elif args.json:
        for r in records:
            sys.stdout.write(orjson.dumps(r.as_json()).decode() + "\n")
    else:
        for r in records:
            row = r.as_json()
            study = f"  study {r.study_uid}" if r.study_uid else ""
            remote = f"  from {r.remote}" if r.remote else ""
            sys.stdout.write(
                f"{row['at']}  {r.org:<8} {r.action:<24} {row['outcome']:<15}"
                f"{study}{remote}  {r.detail}\n"
            )
    return 0
