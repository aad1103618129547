"""``dicomrelay token create|revoke|list``: the API tokens DICOMweb callers
of the node's own organisation send as ``Authorization: Bearer``. A token is
printed once, as the last line of ``create``'s output; the ledger keeps only
its hash."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from dicomrelay import event_loop


def register(sub: Any) -> None:
    token = sub.add_parser("token", help="API tokens for the node's DICOMweb callers")
    verbs = token.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = verbs.add_parser("create", help="make a token; it is printed once, last")
    create.add_argument("name", metavar="NAME", help="who or what will use it")
    create.add_argument("--scope", choices=("read", "write"), required=True)
    create.add_argument("--expires", metavar="DURATION", help="90d, 12h or 30m (default: never)")
    create.add_argument("--config", type=Path, required=True, metavar="FILE.toml")
    create.set_defaults(run=run_create)
    revoke = verbs.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument("--config", type=Path, required=True, metavar="FILE.toml")
    revoke.set_defaults(run=run_revoke)
    listing = verbs.add_parser("list", help="the tokens: names, scopes, expiry (never secrets)")
    listing.add_argument("--config", type=Path, required=True, metavar="FILE.toml")
    listing.set_defaults(run=run_list)


def _with_ledger(config_path: Path, work: Any) -> Any:

    from dicomrelay.config import NodeConfig
    from dicomrelay.ledger import open_ledger

    config = NodeConfig.from_toml(config_path)

    async def main() -> Any:
        ledger = await open_ledger(
            config.ledger, data_dir=config.data_dir, schema=config.ledger_schema
        )
        try:
            return await work(config, ledger)
        finally:
            await ledger.close()

    return event_loop.run(main)


def run_create(args: argparse.Namespace) -> int:
    from dicomrelay.errors import UsageError
    from dicomrelay.web.auth import new_token, parse_duration, token_hash

    lifetime = parse_duration(args.expires) if args.expires else None
    secret = new_token()

    async def create(config: Any, ledger: Any) -> str:
        expires = None if lifetime is None else time.time() + lifetime
        made = await ledger.add_token(
            args.name, token_hash(secret), org=config.org, scope=args.scope, expires=expires
        )
        if not made:
            raise UsageError(f"a token named {args.name!r} exists: revoke it first")
        await ledger.audit(config.org, "token-created", None, f"{args.name} ({args.scope})")
        return str(config.org)

    org = _with_ledger(args.config, create)
    until = f", expires in {args.expires}" if args.expires else ", does not expire"
    sys.stdout.write(
        f"token {args.name}: {args.scope} for {org}{until}; shown this once, keep it safe:\n"
    )
    sys.stdout.write(secret + "\n")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from dicomrelay.errors import UsageError

    async def revoke(config: Any, ledger: Any) -> None:
        if not await ledger.revoke_token(args.name):
            raise UsageError(f"no token named {args.name!r} to revoke")
        await ledger.audit(config.org, "token-revoked", None, args.name)

    _with_ledger(args.config, revoke)
    sys.stdout.write(f"token {args.name} revoked\n")
    return 0


def run_list(args: argparse.Namespace) -> int:
    async def listing(config: Any, ledger: Any) -> list[Any]:
        return list(await ledger.tokens())

    now = time.time()
    for t in _with_ledger(args.config, listing):
        state = (
            "revoked"
            if t.revoked is not None
            else "expired"
            if t.expires is not None and t.expires <= now
            else "active"
        )
        sys.stdout.write(f"{t.name}\t{t.scope}\t{t.org}\t{state}\n")
    return 0
