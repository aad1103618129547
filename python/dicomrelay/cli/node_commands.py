"""``dicomrelay serve``, ``send`` and ``status``: a node for real use, from a TOML file.

``serve`` runs the node (listener, scheduler, resumption of unfinished work),
and starts it again whenever its ledger's database was unavailable;
``send`` queues a study in the node's ledger and waits for its receipt (running
the node for the duration); ``status`` reads the ledger.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson

from dicomrelay.errors import LedgerUnavailable, first_failure


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run a node from its configuration file")
    serve.add_argument("--config", type=Path, required=True, metavar="FILE.toml")
    serve.set_defaults(run=run_serve)

    send = sub.add_parser("send", help="send a study to another organisation")
    send.add_argument("path", type=Path, help="a study folder or a file")
    send.add_argument("--to", required=True, metavar="ORG")
    send.add_argument("--priority", choices=("urgent", "routine", "bulk"), default="routine")
    send.add_argument("--config", type=Path, required=True, metavar="FILE.toml")
    send.set_defaults(run=run_send)

    status = sub.add_parser("status", help="transfers in flight, done and dead")
    status.add_argument("--config", type=Path, required=True, metavar="FILE.toml")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=run_status)


def _uvloop() -> dict[str, bool]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def run_serve(args: argparse.Namespace) -> int:
    from dicomrelay.config import NodeConfig
    from dicomrelay.node import Node
    from dicomrelay.supervise import serve_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = NodeConfig.from_toml(args.config)

    def started(node: Node) -> None:
        where = f"port {node.port}" if node.port is not None else "no listener"
        logging.getLogger("dicomrelay").info("node %s serving (%s)", config.org, where)

    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(lambda: serve_forever(config, started=started), backend_options=_uvloop())
    return 0


def run_send(args: argparse.Namespace) -> int:
    from dicomrelay.config import NodeConfig
    from dicomrelay.node import Node
    from dicomrelay.transfer import TransferFailed

    config = NodeConfig.from_toml(args.config)
    if config.worker is not None:
        # A worker of its own while it waits: never one that `serve` already is.
        config = dataclasses.replace(config, worker=f"{config.worker}-send-{os.getpid()}")

    async def send() -> int:
        try:
            async with Node(config) as node:
                transfer = await node.send(args.path, to=args.to, priority=args.priority)
                sys.stderr.write(f"transfer {transfer.id} queued\n")
                try:
                    receipt = await transfer.wait()
                except TransferFailed as e:
                    sys.stderr.write(f"{e}\n")
                    return 1
                sys.stdout.write(receipt.to_json().decode() + "\n")
                return 0
        except* LedgerUnavailable as group:
            unavailable = first_failure(group)
        # Whatever was queued stays in the ledger: `serve` sends it once it is back.
        sys.stderr.write(f"send: {unavailable}\n")
        return 1

    result: int = anyio.run(send, backend_options=_uvloop())
    return result


def run_status(args: argparse.Namespace) -> int:
    from dicomrelay.config import NodeConfig
    from dicomrelay.ledger import open_ledger

    config = NodeConfig.from_toml(args.config)
    if config.ledger is None and not (config.data_dir / "ledger.sqlite").is_file():
        # Reading must not create: a mistyped data_dir is not an empty node.
        from dicomrelay.errors import ConfigurationError

        raise ConfigurationError(
            f"no ledger in {config.data_dir} (data_dir of {args.config}):"
            " the node has not run there; check data_dir"
        )

    async def status() -> tuple[dict[str, int], list[dict[str, object]]]:
        ledger = await open_ledger(
            config.ledger, data_dir=config.data_dir, schema=config.ledger_schema
        )
        try:
            counts = await ledger.counts()
            transfers = await ledger.all_outgoing(limit=50)
        finally:
            await ledger.close()
        rows: list[dict[str, object]] = [
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
        return counts, rows

    try:
        counts, rows = anyio.run(status)
    except LedgerUnavailable as e:
        sys.stderr.write(f"status: {e}\n")
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps({"counts": counts, "transfers": rows}).decode() + "\n")
        return 0
    sys.stdout.write("  ".join(f"{k}: {v}" for k, v in counts.items()) + "\n")
    for r in rows:
        error = f"  {r['error']}" if r["error"] and r["state"] != "done" else ""
        worker = f"  worker {r['worker']}" if r["worker"] else ""
        sys.stdout.write(
            f"{r['id']}  {r['to']:<8} {r['state']:<7} {r['priority']:<8}"
            f" {r['acked']}/{r['total']}  attempts {r['attempts']}{worker}{error}\n"
        )
    return 0
