"""``dicomrelay share``: patient links to one study, opened in the node's
web server. ``share STUDY_UID`` prints the link as its last line (and, with
``--pin``, the PIN on the line before it, to be sent another way);
``share revoke TOKEN_OR_ID`` withdraws one at once; ``share list`` lists
them (ids, studies, states; never secrets)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from dicomrelay.cli.token_command import _with_ledger

USAGE = (
    "dicomrelay share STUDY_UID [--expires 7d] [--pin] --config FILE\n"
    "       dicomrelay share revoke TOKEN_OR_ID --config FILE\n"
    "       dicomrelay share list --config FILE"
)


def register(sub: Any) -> None:
    share = sub.add_parser(
        "share", help="links for patients to one study (make, revoke, list)", usage=USAGE
    )
    share.add_argument("target", metavar="STUDY_UID|revoke|list")
    share.add_argument("link", nargs="?", metavar="TOKEN_OR_ID", help="(revoke) the link")
    share.add_argument(
        "--expires", metavar="DURATION", default="7d", help="7d, 12h or 30m (default 7d)"
    )
    share.add_argument("--pin", action="store_true", help="also ask for a 6-digit PIN")
    share.add_argument("--config", type=Path, required=True, metavar="FILE.toml")
    share.set_defaults(run=run_share)


def run_share(args: argparse.Namespace) -> int:
    from dicomrelay.errors import UsageError

    if args.target == "revoke":
        if args.link is None:
            raise UsageError("share revoke needs the link's id, token or URL")
        return _revoke(args)
    if args.link is not None:
        raise UsageError(f"unexpected {args.link!r}: {USAGE.splitlines()[0]}")
    if args.target == "list":
        return _list(args)
    return _create(args)


def _create(args: argparse.Namespace) -> int:
    from dicomrelay.sharing import share_study
    from dicomrelay.web.auth import parse_duration

    lifetime = parse_duration(args.expires)

    async def create(config: Any, ledger: Any) -> Any:
        return await share_study(ledger, config, args.target, lifetime=lifetime, pin=args.pin)

    link = _with_ledger(args.config, create)
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(link.expires))
    out = sys.stdout
    out.write(f"link {link.id} to study {link.study_uid}, until {until}\n")
    if link.pin is not None:
        out.write("PIN (send it another way than the link; 5 wrong PINs lock the link):\n")
        out.write(f"{link.pin}\n")
    out.write(f"{link.url}\n")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from dicomrelay.errors import UsageError
    from dicomrelay.sharing import revoke_share

    async def revoke(config: Any, ledger: Any) -> bool:
        return await revoke_share(ledger, args.link, by=f"{config.org} (share revoke)")

    if not _with_ledger(args.config, revoke):
        raise UsageError("no active link known by that id, token or URL")
    sys.stdout.write("link revoked\n")
    return 0


def _list(args: argparse.Namespace) -> int:
    async def listing(config: Any, ledger: Any) -> list[Any]:
        return list(await ledger.share_links())

    now = time.time()
    for link in _with_ledger(args.config, listing):
        until = time.strftime("%Y-%m-%d %H:%M", time.gmtime(link.expires))
        pin = "pin" if link.pin_hash else "-"
        sys.stdout.write(f"{link.id}\t{link.study_uid}\t{link.state(now)}\t{until}\t{pin}\n")
    return 0
