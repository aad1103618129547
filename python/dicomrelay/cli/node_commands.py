"""``dicomrelay serve``, ``send``, ``retry`` and ``status``: a node for real
use, from a TOML file.

``serve`` runs the node (listener, scheduler, resumption of unfinished work),
and starts it again whenever its ledger's database was unavailable. ``send``
never listens: it queues a study in the node's ledger, wakes the node serving
it, and tells the transfer's progress until its receipt comes; with no node
serving (or none taking it up), it sends the transfer itself, on a lease that a
serving node takes over should ``send`` die. ``retry`` queues a dead letter
again; ``status`` reads the ledger; ``export`` writes a committed study out
of the node's store as Part 10 files (beside a serving node).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import orjson

from dicomrelay import event_loop, wakeup
from dicomrelay.errors import DicomrelayError, first_failure

if TYPE_CHECKING:  # imported where used: a command loads only what it runs
    from dicomrelay.config import NodeConfig
    from dicomrelay.ledger import Ledger, OutgoingTransfer
    from dicomrelay.receipt import Receipt
    from dicomrelay.transfer import Event

T = TypeVar("T")
FOLLOW_INTERVAL = 0.2  # seconds between readings of a transfer another process sends
FOLLOW_GRACE = 3.0  # due and held by no worker this long: no node is there to send it
PROGRESS_EVERY = 0.5  # seconds between progress lines


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

    retry = sub.add_parser("retry", help="queue a dead letter again")
    retry.add_argument("transfer_id", metavar="TRANSFER_ID", help="as status lists it")
    retry.add_argument("--config", type=Path, required=True, metavar="FILE.toml")
    retry.set_defaults(run=run_retry)

    export = sub.add_parser("export", help="write a committed study's instances as Part 10 files")
    export.add_argument("study", metavar="STUDY_UID", help="its Study Instance UID")
    export.add_argument("out_dir", type=Path, metavar="DIR", help="created if missing")
    export.add_argument("--config", type=Path, required=True, metavar="FILE.toml")
    export.set_defaults(run=run_export)

    status = sub.add_parser("status", help="transfers in flight, done and dead")
    status.add_argument("--config", type=Path, required=True, metavar="FILE.toml")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=run_status)


def run_serve(args: argparse.Namespace) -> int:
    from dicomrelay.config import NodeConfig
    from dicomrelay.node import Node
    from dicomrelay.supervise import serve_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = NodeConfig.from_toml(args.config)

    def started(node: Node) -> None:
        where = f"port {node.port}" if node.port is not None else "no listener"
        if node.web_port is not None:
            where += f", DICOMweb on port {node.web_port}"
        logging.getLogger("dicomrelay").info("node %s serving (%s)", config.org, where)

    with contextlib.suppress(KeyboardInterrupt):  # SIGTERM or SIGINT
        event_loop.run(lambda: serve_forever(config, started=started))
    logging.getLogger("dicomrelay").info("node %s stopped", config.org)
    return 0


def run_send(args: argparse.Namespace) -> int:
    from dicomrelay.config import NodeConfig
    from dicomrelay.intake import queue
    from dicomrelay.ledger import open_ledger

    config = NodeConfig.from_toml(args.config)
    _check_send_arguments(config, args)

    async def send() -> Receipt:
        ledger = await open_ledger(
            config.ledger, data_dir=config.data_dir, schema=config.ledger_schema
        )
        try:
            queued = await queue(config, ledger, args.path, to=args.to, priority=args.priority)
            transfer = queued.transfer
            # The serving node is told before "queued" is said: a send killed
            # once it has said so leaves a transfer that node already knows of.
            served = wakeup.poke(config.data_dir)
            progress = Progress(transfer.id, transfer.total)
            if queued.deidentified_from is not None:
                progress.say(
                    f"de-identified: study {queued.deidentified_from}"
                    f" goes as {transfer.study_instance_uid}"
                )
            for h in queued.held:
                progress.say(
                    f"held in quarantine as {h.id}: instance {h.sop_uid}: {h.reason}"
                    " (`dicomrelay quarantine release|delete ID`)"
                )
            progress.say(
                f"queued: {transfer.total} instances of {transfer.study_instance_uid}"
                f" for {transfer.destination}"
            )
            if served:
                receipt = await _follow(config, ledger, transfer, progress)
                if receipt is not None:
                    return receipt
                progress.say("no node is sending it: sending it from here")
            else:
                progress.say("no node serves this ledger here: sending it from here")
        finally:
            await ledger.close()
        return await _send_alone(config, transfer.id, progress)

    receipt = _run(send)
    sys.stdout.write(receipt.to_json().decode() + "\n")
    return 0


def _check_send_arguments(config: NodeConfig, args: argparse.Namespace) -> None:
    """What the command line asks that cannot be, before anything is recorded."""
    from dicomrelay.errors import UsageError

    peers = [p.code for p in config.peers]
    if args.to.upper() not in peers:
        known = ", ".join(peers) or "none"
        raise UsageError(
            f"unknown organisation {args.to!r}: not among the peers in {args.config} ({known})"
        )
    if not args.path.exists():
        raise UsageError(f"{args.path}: no such file or folder")


def _run(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main``; a node's failure (raised in a task group) as itself, for
    the one-line report every DicomrelayError gets."""
    try:
        return event_loop.run(main)
    except BaseExceptionGroup as group:
        failure = first_failure(group)
        if isinstance(failure, DicomrelayError):
            raise failure from None
        raise


async def _follow(
    config: NodeConfig, ledger: Ledger, transfer: OutgoingTransfer, progress: Progress
) -> Receipt | None:
    """Wait while the serving node sends the transfer, telling its progress;
    None if no node takes it up (then this process sends it)."""
    from dicomrelay.follow import Follower
    from dicomrelay.receipt import Receipt
    from dicomrelay.transfer import transfer_failed

    follower = Follower(ledger, transfer)
    grace = max(FOLLOW_GRACE, 3 * config.limits.claim_poll_seconds)
    while True:
        for event in await follower.poll():
            progress(event)
        row = follower.row
        if row.state == "done":
            assert row.receipt is not None
            return Receipt.from_json(row.receipt)
        if row.state == "dead":
            raise transfer_failed(row.id, row.last_error)
        if follower.unattended_for() > grace:
            return None
        await anyio.sleep(FOLLOW_INTERVAL)


async def _send_alone(config: NodeConfig, transfer_id: str, progress: Progress) -> Receipt:
    """Send the queued transfer with a node of this process's own: it listens
    nowhere, sends this transfer only, and holds it on a lease, so that a
    node serving the ledger takes it over if this process dies."""
    from dicomrelay.node import Node

    worker = f"send-{os.getpid()}@{socket.gethostname()}"
    alone = dataclasses.replace(config, listen_port=None, dicom=None, web=None, worker=worker)
    async with Node(alone, share_work=False) as node:
        transfer = node.take(transfer_id)
        async with anyio.create_task_group() as tg:

            async def tell() -> None:
                async for event in transfer.events():
                    progress(event)

            tg.start_soon(tell)
            receipt = await transfer.wait()
        return receipt


class Progress:
    """What ``send`` tells on stderr while it waits: each stage, each retry with
    its reason, and how many instances the receiver holds (a few times a second)."""

    def __init__(self, transfer_id: str, total: int) -> None:
        self.transfer_id = transfer_id
        self.total = total
        self.verified = 0
        self._told = 0.0

    def say(self, line: str) -> None:
        sys.stderr.write(f"transfer {self.transfer_id} {line}\n")
        sys.stderr.flush()

    def __call__(self, event: Event) -> None:
        kind = event.kind.value
        if kind == "verified":
            self.verified += 1
            now = time.monotonic()
            if self.verified == self.total or now - self._told >= PROGRESS_EVERY:
                self._told = now
                self.say(f"verified: {self.verified}/{self.total} instances held by the receiver")
        elif kind == "retrying":
            self.say(f"{kind}: {event.detail}")
        # "failed" is not told: the command's last line says why, once.
        elif kind in ("started", "committed"):
            self.say(kind)


def run_retry(args: argparse.Namespace) -> int:
    from dicomrelay.config import NodeConfig
    from dicomrelay.ledger import open_ledger
    from dicomrelay.transfer import NotADeadLetter, UnknownTransfer

    config = NodeConfig.from_toml(args.config)

    async def retry() -> None:
        ledger = await open_ledger(
            config.ledger, data_dir=config.data_dir, schema=config.ledger_schema
        )
        try:
            t = await ledger.outgoing(args.transfer_id)
            if t is None:
                raise UnknownTransfer(
                    f"no transfer {args.transfer_id!r} in the ledger of {args.config}"
                )
            if not await ledger.requeue_dead(t.id, now=time.time()):
                raise NotADeadLetter(
                    f"transfer {t.id} is {t.state.value}, not a dead letter:"
                    " only dead letters are queued again"
                )
            await ledger.audit(config.org, "requeued", t.id, f"dead letter ({t.last_error})")
        finally:
            await ledger.close()

    event_loop.run(retry)
    if wakeup.poke(config.data_dir):
        sys.stderr.write(f"transfer {args.transfer_id} queued again\n")
    else:
        sys.stderr.write(
            f"transfer {args.transfer_id} queued again; no node serves this ledger here:"
            f" `dicomrelay serve --config {args.config}` sends it\n"
        )
    return 0


def require_ledger(config: NodeConfig, path: Path) -> None:
    """Reading must not create: a mistyped data_dir is not an empty node."""
    if config.ledger is None and not (config.data_dir / "ledger.sqlite").is_file():
        from dicomrelay.errors import ConfigurationError

        raise ConfigurationError(
            f"no ledger in {config.data_dir} (data_dir of {path}):"
            " the node has not run there; check data_dir"
        )


def run_export(args: argparse.Namespace) -> int:
    from dicomrelay.config import NodeConfig
    from dicomrelay.export import export_study
    from dicomrelay.ledger import open_ledger

    config = NodeConfig.from_toml(args.config)
    require_ledger(config, args.config)

    async def export() -> tuple[int, list[str]]:
        ledger = await open_ledger(
            config.ledger, data_dir=config.data_dir, schema=config.ledger_schema
        )
        try:
            root = config.data_dir / "store" / "segments"
            done = await export_study(ledger, root, args.study, args.out_dir)
        finally:
            await ledger.close()
        return len(done.written), done.missing

    written, missing = event_loop.run(export)
    sys.stderr.write(f"{written} instances of {args.study} written to {args.out_dir}\n")
    if missing:
        sys.stderr.write(
            f"dicomrelay export: {len(missing)} instances no longer in the store"
            f" (dropped): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}\n"
        )
        return 1
    return 0


def run_status(args: argparse.Namespace) -> int:
    from dicomrelay.cli import quarantine_command
    from dicomrelay.cli.reconcile_command import write_held
    from dicomrelay.config import NodeConfig
    from dicomrelay.ledger import open_ledger
    from dicomrelay.status_report import status_report

    config = NodeConfig.from_toml(args.config)
    require_ledger(config, args.config)

    async def status() -> dict[str, Any]:
        ledger = await open_ledger(
            config.ledger, data_dir=config.data_dir, schema=config.ledger_schema
        )
        try:
            return await status_report(ledger)
        finally:
            await ledger.close()

    report = event_loop.run(status)
    counts, rows, dead_letters = report["counts"], report["transfers"], report["dead_letters"]
    held, needs = report["held"], report["needs_reconciliation"]
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
        return 0
    sys.stdout.write("  ".join(f"{k}: {v}" for k, v in counts.items()) + "\n")
    for r in rows:
        error = f"  {r['error']}" if r["error"] and r["state"] != "done" else ""
        worker = f"  worker {r['worker']}" if r["worker"] else ""
        sys.stdout.write(
            f"{r['id']}  {r['to']:<8} {r['state']:<7} {r['priority']:<8}"
            f" {r['acked']}/{r['total']}  attempts {r['attempts']}{worker}{error}\n"
        )
    if dead_letters:
        sys.stdout.write("dead letters (`dicomrelay retry TRANSFER_ID` queues one again):\n")
    for d in dead_letters:
        sys.stdout.write(f"{d['id']}  {d['to']:<8} {d['study']}  {d['reason']}\n")
    if held:
        sys.stdout.write("held in quarantine (`dicomrelay quarantine show|release|delete ID`):\n")
    for h in held:
        sys.stdout.write(quarantine_command.line(h) + "\n")
    write_held(needs)
    return 0
