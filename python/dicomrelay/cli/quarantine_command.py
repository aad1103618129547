"""``dicomrelay quarantine list|show|release|delete``: the instances a node
holds back (``dicomrelay.quarantine``), for an operator to look at, send
after all, or delete."""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from dicomrelay import event_loop, wakeup

if TYPE_CHECKING:
    from dicomrelay.config import NodeConfig
    from dicomrelay.ledger import Ledger

T = TypeVar("T")


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "quarantine",
        help="instances held back (burned-in identity for a research destination, ...)",
        description="What this node holds back instead of sending or storing, and why.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="held instances, oldest first")
    listing.add_argument("--all", action="store_true", help="released and deleted ones too")
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", help="everything recorded of one held instance")
    show.add_argument("id", metavar="ID")
    show.add_argument("--json", action="store_true")
    release = actions.add_parser(
        "release",
        help="send a held instance after all: the policy decided again, and the instance"
        " de-identified (its pixels accepted) if its destination's rule says so",
    )
    release.add_argument("id", metavar="ID")
    delete = actions.add_parser("delete", help="remove a held instance's bytes for good")
    delete.add_argument("id", metavar="ID")
    for action in (listing, show, release, delete):
        action.add_argument("--config", type=Path, required=True, metavar="FILE.toml")
        action.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dicomrelay.cli.node_commands import require_ledger
    from dicomrelay.config import NodeConfig

    config = NodeConfig.from_toml(args.config)
    require_ledger(config, args.config)
    action: Callable[[NodeConfig, Ledger, argparse.Namespace], Awaitable[int]] = {
        "list": _list,
        "show": _show,
        "release": _release,
        "delete": _delete,
    }[args.action]
    return event_loop.run(lambda: _with_ledger(config, action, args))


async def _with_ledger(
    config: NodeConfig,
    action: Callable[[NodeConfig, Ledger, argparse.Namespace], Awaitable[T]],
    args: argparse.Namespace,
) -> T:
    from dicomrelay.ledger import open_ledger

    ledger = await open_ledger(config.ledger, data_dir=config.data_dir, schema=config.ledger_schema)
    try:
        return await action(config, ledger, args)
    finally:
        await ledger.close()


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def line(h: Mapping[str, Any]) -> str:
    """One held instance (as ``HeldInstance.as_dict`` gives it), as ``list``
    and ``status`` show it."""
    way = "to" if h["direction"] == "send" else "from"
    state = "" if h["state"] == "held" else f"  [{h['state']}]"
    return (
        f"{h['id']}  {h['kind']}  {way} {h['org']}  study {h['study']}"
        f"  {_when(h['held'])}  {h['reason']}{state}"
    )


async def _list(config: NodeConfig, ledger: Ledger, args: argparse.Namespace) -> int:
    from dicomrelay.ledger import HoldState

    held = await ledger.held_instances(None if args.all else HoldState.HELD, limit=100_000)
    if args.json:
        sys.stdout.write(orjson.dumps([h.as_dict() for h in held]).decode() + "\n")
        return 0
    for h in held:
        sys.stdout.write(line(h.as_dict()) + "\n")
    if not held:
        sys.stderr.write("nothing held\n")
    return 0


async def _show(config: NodeConfig, ledger: Ledger, args: argparse.Namespace) -> int:
    from dicomrelay.quarantine import held

    h = await held(ledger, args.id)
    record = h.as_dict()
    if args.json:
        sys.stdout.write(orjson.dumps(record).decode() + "\n")
        return 0
    for key, value in record.items():
        if key in ("held", "resolved") and isinstance(value, float):
            value = _when(value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or None
        sys.stdout.write(f"{key}: {value if value is not None else '-'}\n")
    return 0


async def _release(config: NodeConfig, ledger: Ledger, args: argparse.Namespace) -> int:
    from dicomrelay.quarantine import release

    queued = await release(config, ledger, args.id)
    transfer = queued.transfer
    sys.stdout.write(f"{args.id} released: transfer {transfer.id} to {transfer.destination}\n")
    if not wakeup.poke(config.data_dir):
        sys.stderr.write(
            f"no node serves this ledger here: `dicomrelay serve --config {args.config}` sends it\n"
        )
    return 0


async def _delete(config: NodeConfig, ledger: Ledger, args: argparse.Namespace) -> int:
    from dicomrelay.quarantine import delete

    h = await delete(config, ledger, args.id)
    sys.stdout.write(f"{h.id} deleted: instance {h.sop_uid} of study {h.study_uid}\n")
    return 0
