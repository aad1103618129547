"""``dicomrelay loadtest``: measure a transfer between two organisations on loopback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from dicomrelay.cli.operator_errors import positive_int
from dicomrelay.loadtest import DISK_BUDGET, PROFILE_NAMES

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
    ("sender user CPU ms/image", "sender_user_cpu_ms_per_image"),
    ("sender system CPU ms/image", "sender_system_cpu_ms_per_image"),
    ("sender peak RSS MB", "sender_peak_rss_mb"),
    ("receiver CPU s", "receiver_cpu_seconds"),
    ("receiver user CPU ms/image", "receiver_user_cpu_ms_per_image"),
    ("receiver system CPU ms/image", "receiver_system_cpu_ms_per_image"),
    ("receiver peak RSS MB", "receiver_peak_rss_mb"),
)

RECONCILE_ROWS = (
    ("seconds to last receipt", "receipts_seconds"),
    ("studies reconciled", "reconciled_studies"),
    ("studies held", "held_studies"),
)

# What a run without --count sends (plan.plan_studies with the default study
# size; a test keeps these in step).
DEFAULT_COUNTS = "1,892 ct, 7,398 mr, 119 cr, 75 dx, 1,080 us, 48,828 small or 1,756 mixed images"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "loadtest",
        help="send synthetic (or real) studies between two local organisations and measure",
    )
    p.add_argument(
        "--profile",
        choices=PROFILE_NAMES,
        default="ct",
        help="synthetic images: ct 512x512 16-bit (525 KB), mr 256x256 (132 KB), cr 2048x2048"
        " (8.4 MB), dx 2880x2304 (13.3 MB), us 640x480 RGB (922 KB), small 128x64 secondary"
        " capture (17 KB), mixed (an exchange's mix of studies: radiographs of 2 images,"
        " ultrasounds of 40, CTs of 300, MRs of 200, small objects in studies of 20);"
        " default ct",
    )
    p.add_argument(
        "--count",
        type=positive_int,
        default=None,
        help=f"images to send (default: as many as fit in {DISK_BUDGET / 1e9:g} GB of"
        f" temporary files, counting the source and the received copy: {DEFAULT_COUNTS})",
    )
    p.add_argument(
        "--study-size",
        type=positive_int,
        default=500,
        help="images per study (a transfer); mixed: the most a study has",
    )
    p.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        metavar="DIR",
        help="send the DICOM files under DIR (grouped by study) instead of synthetic ones",
    )
    p.add_argument("--digest", choices=("sha256", "blake3"), default="sha256")
    p.add_argument("--insecure-plaintext", action="store_true", help="no TLS (measurement only)")
    p.add_argument("--in-process", action="store_true", help="both nodes in this process")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to put the temporary data (default: the system's temporary folder)",
    )
    p.add_argument(
        "--reconcile",
        nargs="?",
        const="",
        default=None,
        metavar="CSV",
        help="the receiver reconciles every study's patient ID by this mapping (alone:"
        " one made for the synthetic patients); the run ends when the last study is"
        " reconciled",
    )
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


def _notice(text: str) -> None:
    sys.stderr.write(f"  {text}\n")


def run(args: argparse.Namespace) -> int:
    from dicomrelay.errors import UsageError
    from dicomrelay.loadtest.run import LoadtestOptions, run_loadtest

    if args.source is not None and not args.source.is_dir():
        raise UsageError(f"--from {args.source}: no such folder")
    if args.reconcile == "" and args.source is not None:
        raise UsageError("--reconcile with --from needs the mapping of those files' patients")
    if args.reconcile and not Path(args.reconcile).is_file():
        raise UsageError(f"--reconcile {args.reconcile}: no such file")

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
        reconcile=args.reconcile,
    )
    sys.stderr.write(
        f"dicomrelay loadtest: profile {options.profile}, digest {options.digest}, "
        f"{'plaintext' if options.plaintext else 'mutual TLS'}, "
        f"{'one process' if options.in_process else 'two processes'}"
        f"{'' if options.reconcile is None else ', reconciling at the receiver'}\n"
    )
    try:
        summary = run_loadtest(options, progress=_progress_line, notice=_notice)
    except BaseException:
        sys.stderr.write("\n")  # end the progress line before the error's
        raise
    sys.stderr.write("\n")
    width = max(len(label) for label, _ in ROWS)
    rows = ROWS if options.reconcile is None else ROWS + RECONCILE_ROWS
    for label, key in rows:
        sys.stdout.write(f"{label:<{width}}  {summary[key]}\n")
    if args.json:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0 if summary["failed"] == 0 and summary["images"] == summary["expected_images"] else 1
