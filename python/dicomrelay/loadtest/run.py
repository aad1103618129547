"""The load test's orchestration: make the organisations and the studies, run
both sides, and summarise what the sender measured and what each side cost."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from dicomrelay import event_loop, pki, synth
from dicomrelay._native import InstanceInfo, scan_many
from dicomrelay.config import DigestName
from dicomrelay.loadtest import worker
from dicomrelay.loadtest.plan import check_room, footprint, plan_studies

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, kw_only=True)
class LoadtestOptions:
    profile: str = "ct"
    count: int | None = None  # None: as many as fit in DISK_BUDGET of temporary files
    study_size: int = 500
    source: Path | None = None  # real files instead of synthetic ones
    digest: DigestName = "sha256"
    plaintext: bool = False
    in_process: bool = False
    workdir: Path | None = None
    keep: bool = False
    # The receiver reconciles every study by a patient mapping: this CSV file,
    # or ("") one made for the synthetic studies' patients. None: it does not.
    reconcile: str | None = None


def mapping_path(options: LoadtestOptions, work: Path) -> Path | None:
    if options.reconcile is None:
        return None
    return Path(options.reconcile).resolve() if options.reconcile else work / "patients.csv"


def prepare(options: LoadtestOptions, work: Path) -> int:
    """The PKI and the source studies (one folder per study); returns the image count."""
    pki.make_ca(work / "pki" / "ca")
    for org in (worker.SENDER, worker.RECEIVER):
        pki.issue_org(work / "pki" / "ca", org, work / "pki")
    source = work / "source"
    if options.source is not None:
        return _link_real_studies(options.source, source)
    plan = plan_studies(options.profile, options.count, options.study_size)
    for n, study in enumerate(plan):
        synth.write_study(
            source / f"study-{n:05d}", synth.PROFILES[study.profile], study.images, seed=n
        )
    if options.reconcile == "":
        # Every synthetic patient (synth.write_study: SYN and the seed) has a local one.
        rows = [f"{worker.SENDER},DICOMRELAY,SYN{n:08d},LOCAL{n:08d}" for n in range(len(plan))]
        text = "sender,issuer,patient_id,local_patient_id\n" + "\n".join(rows) + "\n"
        (work / "patients.csv").write_text(text)
    return sum(s.images for s in plan)


def _link_real_studies(directory: Path, source: Path) -> int:
    """Group real files by study (symlinks, one folder per study)."""
    paths = sorted(os.fspath(p) for p in directory.rglob("*") if p.is_file())
    groups: dict[str, list[str]] = defaultdict(list)
    for path, info in zip(paths, scan_many(paths), strict=True):
        if isinstance(info, InstanceInfo) and info.study_instance_uid:
            groups[info.study_instance_uid].append(path)
    for n, files in enumerate(groups.values()):
        folder = source / f"study-{n:05d}"
        folder.mkdir(parents=True)
        for i, path in enumerate(files):
            (folder / f"{i:06d}.dcm").symlink_to(os.path.abspath(path))
    return sum(len(f) for f in groups.values())


def _spawn(role: str, work: Path, port: int, options: LoadtestOptions) -> subprocess.Popen[bytes]:
    mapping = mapping_path(options, work)
    args = [
        role,
        os.fspath(work),
        str(port),
        options.digest,
        "1" if options.plaintext else "0",
        "" if mapping is None else os.fspath(mapping),
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "dicomrelay.loadtest.worker", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        # Out of the terminal's process group: Ctrl-C reaches this process
        # alone, which then stops the workers itself (no traceback from them).
        start_new_session=True,
    )


def _messages(proc: subprocess.Popen[bytes]) -> Any:
    assert proc.stdout is not None
    for line in proc.stdout:
        yield orjson.loads(line)


def _run_processes(
    options: LoadtestOptions, work: Path, progress: Progress | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    receiver = _spawn("receiver", work, 0, options)
    sender: subprocess.Popen[bytes] | None = None
    try:
        messages = _messages(receiver)
        port = next(messages)["ready"]
        sender = _spawn("sender", work, port, options)
        result: dict[str, Any] = {}
        for message in _messages(sender):
            if "progress" in message and progress is not None:
                progress(message["progress"])
            elif "result" in message:
                result = message["result"]
        sender.wait()
        assert receiver.stdin is not None
        receiver.stdin.close()
        receiver_result: dict[str, Any] = {}
        for message in messages:
            if "result" in message:
                receiver_result = message["result"]
        # A reconciling receiver first finishes reconciling what it committed.
        receiver.wait(timeout=60 if options.reconcile is None else 660)
        if not result:
            raise RuntimeError(f"the sending process failed (exit {sender.returncode})")
        return result, receiver_result
    finally:
        for proc in (sender, receiver):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def _run_in_process(
    options: LoadtestOptions, work: Path, progress: Progress | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    def emit(message: dict[str, object]) -> None:
        if "progress" in message and progress is not None:
            progress(message["progress"])  # type: ignore[arg-type]

    async def go() -> dict[str, object]:
        from dicomrelay.node import Node

        rcfg = worker.node_config(
            "receiver",
            work,
            port=0,
            digest=options.digest,
            plaintext=options.plaintext,
            reconcile=mapping_path(options, work),
        )
        async with Node(rcfg) as receiver:
            assert receiver.port is not None
            scfg = worker.node_config(
                "sender",
                work,
                port=receiver.port,
                digest=options.digest,
                plaintext=options.plaintext,
            )
            studies = sorted(p for p in (work / "source").iterdir() if p.is_dir())
            sizes = {f: f.stat().st_size for s in studies for f in s.iterdir()}
            result = await worker.run_sender(scfg, studies, emit, sizes)
            if rcfg.rules:
                result["reconciled_at"] = await worker.wait_reconciled(receiver.ledger)
                counts = await receiver.ledger.counts()
                result["reconciled"] = counts.get("reconciliations_reconciled", 0)
                result["held"] = counts.get("reconciliations_held", 0)
            return result

    result = event_loop.run(go)
    keys = ("reconciled_at", "reconciled", "held")
    reconciled: dict[str, Any] = {k: result[k] for k in keys if k in result}
    return dict(result), reconciled


def run_loadtest(
    options: LoadtestOptions,
    progress: Progress | None = None,
    notice: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run a load test; returns its summary (see ``summarise``). ``notice``
    hears where the temporary files go and how much they take."""
    parent = options.workdir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    needed = 0
    if options.source is None:
        needed = footprint(plan_studies(options.profile, options.count, options.study_size))
        check_room(parent, needed)
    work = Path(tempfile.mkdtemp(prefix="dicomrelay-loadtest-", dir=parent))
    if notice is not None:
        size = f"up to {needed / 1e9:.2f} GB" if needed else "the received copies"
        keep = "kept (--keep)" if options.keep else "removed at exit"
        notice(f"temporary files: {size} in {work}, {keep}")
    try:
        t0 = time.perf_counter()
        expected = prepare(options, work)
        # The sources were just written: flush them now, so their writeback is not
        # charged to the receiver's first commit (a PACS's files are not dirty).
        os.sync()
        prepared = time.perf_counter() - t0
        run = _run_in_process if options.in_process else _run_processes
        sender, receiver = run(options, work, progress)
        summary = summarise(sender, receiver, options)
        summary["expected_images"] = expected
        summary["prepare_seconds"] = round(prepared, 2)
        return summary
    finally:
        if not options.keep:
            shutil.rmtree(work, ignore_errors=True)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def summarise(
    sender: dict[str, Any], receiver: dict[str, Any], options: LoadtestOptions
) -> dict[str, Any]:
    seconds = max(sender["seconds"], 1e-9)
    reconciled: dict[str, Any] = {}
    if options.reconcile is not None:
        # Done when the receiver has reconciled the last study, not when the
        # sender holds the last receipt: reconciling follows each commit.
        last = receiver.get("reconciled_at")
        if last is not None:
            seconds = max(seconds, last - sender["started_at"])
        reconciled = {
            "reconciled_studies": receiver.get("reconciled", 0),
            "held_studies": receiver.get("held", 0),
            "receipts_seconds": round(sender["seconds"], 3),
        }
    latencies = sorted(sender.get("latencies", []))
    return {
        **reconciled,
        "profile": "from-dir" if options.source else options.profile,
        "digest": options.digest,
        "tls": not options.plaintext,
        "processes": "one" if options.in_process else "two",
        "images": sender["images"],
        "failed": sender["failed"],
        "retries": sender["retries"],
        "seconds": round(seconds, 3),
        "images_per_second": round(sender["images"] / seconds, 1),
        "megabytes_per_second": round(sender["bytes"] / seconds / 1e6, 1),
        "p50_latency_ms": round(_percentile(latencies, 0.50) * 1000, 1),
        "p95_latency_ms": round(_percentile(latencies, 0.95) * 1000, 1),
        "p99_latency_ms": round(_percentile(latencies, 0.99) * 1000, 1),
        "sender_cpu_seconds": round(sender["cpu_seconds"], 2),
        "sender_peak_rss_mb": round(sender["peak_rss_mb"], 1),
        "receiver_cpu_seconds": round(receiver.get("cpu_seconds", 0.0), 2),
        "receiver_peak_rss_mb": round(receiver.get("peak_rss_mb", 0.0), 1),
        **_cpu_split("sender", sender, sender["images"]),
        **_cpu_split("receiver", receiver, sender["images"]),
    }


def _cpu_split(side: str, result: dict[str, Any], images: int) -> dict[str, float]:
    """A side's CPU as user and system: seconds for the whole process, and
    milliseconds per image sent during the transfer (first send to last receipt
    for the sender, listening to the end of the run for the receiver; with
    ``--in-process`` the sender's figures are both sides')."""
    out: dict[str, float] = {}
    for kind in ("user", "system"):
        out[f"{side}_{kind}_cpu_seconds"] = round(result.get(f"{kind}_cpu_seconds", 0.0), 2)
    for kind in ("user", "system"):
        spent = result.get(f"transfer_{kind}_cpu_seconds", 0.0)
        out[f"{side}_{kind}_cpu_ms_per_image"] = round(1000 * spent / images, 3) if images else 0.0
    return out
