"""One side of a load test, as its own process (or task, with --in-process).

A worker speaks JSON lines on stdout: ``{"ready": port}`` once listening,
``{"progress": ...}`` while sending, and ``{"result": ...}`` at the end.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import orjson

from dicomrelay import event_loop
from dicomrelay.allocator import keep_freed_memory
from dicomrelay.config import DigestName, NodeConfig, Peer
from dicomrelay.ledger import Ledger
from dicomrelay.node import Node
from dicomrelay.pki import Identity
from dicomrelay.policy import Rule
from dicomrelay.reconcile import Reconcile
from dicomrelay.transfer import Event, EventKind, TransferFailed

RECEIVER, SENDER = "RX2", "RX1"


def usage() -> dict[str, float]:
    """CPU seconds (user and system, and their sum) and peak RSS (MB) of this
    process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_seconds": r.ru_utime + r.ru_stime,
        "user_cpu_seconds": r.ru_utime,
        "system_cpu_seconds": r.ru_stime,
        "peak_rss_mb": peak_rss_kb() / 1024,
    }


def transfer_cpu(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """User and system CPU seconds spent between two ``usage()`` readings: the
    transfer's own cost, without the interpreter's start-up or the node's."""
    return {
        f"transfer_{kind}_cpu_seconds": after[f"{kind}_cpu_seconds"] - before[f"{kind}_cpu_seconds"]
        for kind in ("user", "system")
    }


def peak_rss_kb() -> float:
    """This process's own peak RSS. (ru_maxrss would carry a larger parent's
    figure across exec; VmHWM belongs to this address space alone.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def node_config(
    role: str,
    work: Path,
    *,
    port: int,
    digest: DigestName,
    plaintext: bool,
    reconcile: Path | None = None,
) -> NodeConfig:
    """One side's node; with ``reconcile`` (a patient mapping), the receiver
    reconciles every study from the sender by it."""
    org = RECEIVER if role == "receiver" else SENDER
    other = SENDER if role == "receiver" else RECEIVER
    certs = work / "pki"
    identity = Identity(
        code=org,
        cert=certs / f"{org.lower()}.pem",
        key=certs / f"{org.lower()}-key.pem",
        ca=certs / "ca" / "ca.pem",
    )
    return NodeConfig(
        org=org,
        data_dir=work / role,
        identity=identity,
        listen_port=0 if role == "receiver" else None,
        peers=(Peer(code=other, host="127.0.0.1", port=port),),
        digest=digest,
        insecure_plaintext=plaintext,
        rules=()
        if reconcile is None or role != "receiver"
        else (
            Rule(
                name="loadtest-reconcile",
                direction="receive",
                allow=True,
                orgs=frozenset({SENDER}),
                reconcile=Reconcile(csv=reconcile, local_issuer=RECEIVER),
            ),
        ),
    )


async def wait_reconciled(ledger: Ledger, timeout: float = 600.0) -> float | None:
    """Once every committed transfer is reconciled (or held), the time the
    last one was (seconds since the epoch); None if none was."""
    with anyio.move_on_after(timeout):
        while True:
            counts = await ledger.counts()
            finished = counts.get("reconciliations_reconciled", 0) + counts.get(
                "reconciliations_held", 0
            )
            if finished >= counts["received_committed"]:
                break
            await anyio.sleep(0.05)
    rows = await ledger.reconciliations(states=("reconciled", "held"))
    return max((r.updated for r in rows), default=None)


@dataclass
class Tally:
    """What the sender saw, for the progress line and the final table."""

    acked: int = 0
    bytes_acked: int = 0
    retries: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)

    def observe(self, event: Event) -> None:
        if event.kind is EventKind.VERIFIED:
            self.acked += 1
            if event.latency is not None:
                self.latencies.append(event.latency)
        elif event.kind is EventKind.RETRYING:
            self.retries += 1


async def run_receiver(config: NodeConfig, emit: Callable[[dict[str, object]], None]) -> None:
    """Serve until stdin closes (the parent's signal to stop), and, when it
    reconciles, until every committed study is reconciled."""
    reconciled: dict[str, object] = {}
    async with Node(config) as node:
        emit({"ready": node.port})
        before = usage()
        await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        if config.rules:
            reconciled["reconciled_at"] = await wait_reconciled(node.ledger)
            counts = await node.ledger.counts()
            reconciled["reconciled"] = counts.get("reconciliations_reconciled", 0)
            reconciled["held"] = counts.get("reconciliations_held", 0)
        during = transfer_cpu(before, usage())
    emit({"result": {**usage(), **during, **reconciled}})


async def run_sender(
    config: NodeConfig,
    studies: list[Path],
    emit: Callable[[dict[str, object]], None],
    sizes: dict[Path, int],
) -> dict[str, object]:
    tally = Tally()
    async with Node(config, observer=tally.observe) as node:
        started = time.perf_counter()
        started_at = time.time()
        before = usage()
        failed_instances = 0

        async def progress() -> None:
            while True:
                await anyio.sleep(0.5)
                emit(
                    {
                        "progress": {
                            "acked": tally.acked,
                            "seconds": time.perf_counter() - started,
                            "retries": tally.retries,
                            "in_flight": node.outbox.in_flight,
                        }
                    }
                )

        async def one(study: Path) -> None:
            nonlocal failed_instances
            transfer = await node.send(study, to=RECEIVER, priority="routine")
            try:
                await transfer.wait()
            except TransferFailed:
                failed_instances += sum(1 for _ in study.iterdir())

        async with anyio.create_task_group() as tg:
            tg.start_soon(progress)
            async with anyio.create_task_group() as sends:
                for study in studies:
                    sends.start_soon(one, study)
            tg.cancel_scope.cancel()
        seconds = time.perf_counter() - started
        during = transfer_cpu(before, usage())
    total_bytes = sum(sizes.values())
    return {
        "seconds": seconds,
        "started_at": started_at,
        "images": tally.acked,
        "failed": failed_instances,
        "retries": tally.retries,
        "bytes": total_bytes,
        "latencies": tally.latencies,
        **usage(),
        **during,
    }


def main(argv: list[str]) -> None:
    """Entry point of a worker process: ``role work port digest plaintext
    reconcile`` (reconcile: a patient mapping's path, or "" for none)."""
    role, work, port, digest, plaintext, reconcile = argv
    keep_freed_memory()
    config = node_config(
        role,
        Path(work),
        port=int(port),
        digest="blake3" if digest == "blake3" else "sha256",
        plaintext=plaintext == "1",
        reconcile=Path(reconcile) if reconcile else None,
    )

    def emit(message: dict[str, object]) -> None:
        sys.stdout.write(orjson.dumps(message).decode() + "\n")
        sys.stdout.flush()

    async def go() -> None:
        if role == "receiver":
            await run_receiver(config, emit)
        else:
            studies = sorted(p for p in (Path(work) / "source").iterdir() if p.is_dir())
            sizes = {f: f.stat().st_size for s in studies for f in s.iterdir()}
            emit({"result": await run_sender(config, studies, emit, sizes)})

    anyio.run(go, backend_options=event_loop.backend_options())


if __name__ == "__main__":
    main(sys.argv[1:])
