"""``dicomrelay loadtest``: measure a transfer between two organisations on loopback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from dicomrelay.loadtest import DEFAULT_COUNTS

ROWS = (
    ("images", "images"),
    ("failed", "failed"),
    ("retries", "retries"),
    ("seconds", "seconds"),
    ("images/s", "images_per_second"),
    ("MB/s", "megabytes_per_second"),
    ("latency p50 ms", "p50_latency_ms"),
    ("latency p95 ms", "p95_latency_ms"),
    ("latency p99 ms", "p99_latency_ms"),
    ("sender CPU s", "sender_cpu_seconds"),
    ("sender peak RSS MB", "sender_peak_rss_mb"),
    ("receiver CPU s", "receiver_cpu_seconds"),
    ("receiver peak RSS MB", "receiver_peak_rss_mb"),
)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "loadtest",
        help="send synthetic (or real) studies between two local organisations and measure",
    )
    p.add_argument("--profile", choices=sorted(DEFAULT_COUNTS), default="ct")
    p.add_argument("--count", type=int, default=None, help="images (default: ~20 s worth)")
    p.add_argument("--study-size", type=int, default=500, help="images per study (transfer)")
    p.add_argument("--from", dest="source", type=Path, default=None, metavar="DIR")
    p.add_argument("--digest", choices=("sha256", "blake3"), default="sha256")
    p.add_argument("--insecure-plaintext", action="store_true", help="no TLS (measurement only)")
    p.add_argument("--in-process", action="store_true", help="both nodes in this process")
    p.add_argument("--workdir", type=Path, default=None, help="where to put the temporary data")
    p.add_argument("--keep", action="store_true", help="keep the temporary data")
    p.add_argument("--json", action="store_true", help="end with one JSON object")
    p.set_defaults(run=run)


def _progress_line(p: dict[str, Any]) -> None:
    rate = p["acked"] / max(p["seconds"], 1e-9)
    sys.stderr.write(
        f"\r  {p['acked']:>7} images  {rate:>7.0f} images/s  in flight {p['in_flight']:>2}"
        f"  retries {p['retries']:<4}"
    )
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    from dicomrelay.loadtest.run import LoadtestOptions, run_loadtest

    options = LoadtestOptions(
        profile=args.profile,
        count=args.count,
        study_size=args.study_size,
        source=args.source,
        digest=args.digest,
        plaintext=args.insecure_plaintext,
        in_process=args.in_process,
        workdir=args.workdir,
        keep=args.keep,
    )
    sys.stderr.write(
        f"dicomrelay loadtest: profile {options.profile}, digest {options.digest}, "
        f"{'plaintext' if options.plaintext else 'mutual TLS'}, "
        f"{'one process' if options.in_process else 'two processes'}\n"
    )
    summary = run_loadtest(options, progress=_progress_line)
    sys.stderr.write("\n")
    width = max(len(label) for label, _ in ROWS)
    for label, key in ROWS:
        sys.stdout.write(f"{label:<{width}}  {summary[key]}\n")
    if args.json:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0 if summary["failed"] == 0 and summary["images"] == summary["expected_images"] else 1
