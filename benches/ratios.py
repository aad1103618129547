"""Ratios of each benchmark to its peer, computed from this run's statistics.

Figures from another run or machine are never compared: these machines are
noisy, so only peers measured side by side in the same session mean anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# The statistic ratios are taken from. Noise on a shared runner only ever adds
# time, and CI's short mode gives the slow benchmarks three rounds: the minimum
# is the steadiest estimate of what each contender costs.
STATISTIC = "min"
DEFAULT_RATIOS_PATH = Path("build-artifacts/bench-ratios.json")
RATIOS_PATH_ENV = "DICOMRELAY_BENCH_RATIOS"

# Figures measured by benches/test_targets.py, reported alongside the ratios.
TARGETS_KEY = pytest.StashKey[dict[str, dict[str, float]]]()


@dataclass(frozen=True, kw_only=True)
class Ratio:
    """`peer`'s time over `subject`'s: how many times faster (or, on the same
    bytes, what share of the peer's throughput) the subject achieves."""

    group: str
    label: str
    subject: str
    peer: str
    speedup: bool = False

    def describe(self, value: float) -> str:
        return f"{value:.1f}x faster" if self.speedup else f"{value:.2f}x"


def _digest_ratios(group: str) -> list[Ratio]:
    return [
        Ratio(
            group=group,
            label="scan+sha256 throughput / hashlib.sha256",
            subject="test_scan_sha256",
            peer="test_hashlib_sha256",
        ),
        Ratio(
            group=group,
            label="scan+blake3 throughput / blake3 package",
            subject="test_scan_blake3",
            peer="test_blake3_package",
        ),
        Ratio(
            group=group,
            label="blake3 / sha256 (scan)",
            subject="test_scan_blake3",
            peer="test_scan_sha256",
        ),
        Ratio(
            group=group,
            label="blake3 / sha256 (blake3 package / hashlib)",
            subject="test_blake3_package",
            peer="test_hashlib_sha256",
        ),
    ]


RATIOS: tuple[Ratio, ...] = (
    Ratio(
        group="header",
        label="scan vs pydicom header (bytes)",
        subject="test_scan_bytes",
        peer="test_pydicom_bytes",
        speedup=True,
    ),
    Ratio(
        group="header",
        label="scan_file vs pydicom header (path)",
        subject="test_scan_file",
        peer="test_pydicom_file",
        speedup=True,
    ),
    *_digest_ratios("digest-512KB"),
    *_digest_ratios("digest-64MB"),
    Ratio(
        group="chunked",
        label="chunked scan+sha256 throughput / hashlib.sha256",
        subject="test_scan_sha256_chunked",
        peer="test_hashlib_sha256",
    ),
    Ratio(
        group="chunked",
        label="chunked / whole-object scan+sha256 throughput",
        subject="test_scan_sha256_chunked",
        peer="test_scan_sha256",
    ),
    Ratio(
        group="batch-1000",
        label="scan_many vs pydicom loop",
        subject="test_scan_many",
        peer="test_pydicom_loop",
        speedup=True,
    ),
    Ratio(
        group="batch-1000",
        label="scan_many+sha256 throughput / read_bytes+hashlib.sha256 loop",
        subject="test_scan_many_sha256",
        peer="test_hashlib_loop",
    ),
    Ratio(
        group="batch-1000",
        label="scan_many+sha256 vs pydicom loop",
        subject="test_scan_many_sha256",
        peer="test_pydicom_loop",
        speedup=True,
    ),
    Ratio(
        group="deidentify",
        label="de-identification plan (header read + edits) vs pydicom read-modify-write",
        subject="test_deidentify_plan",
        peer="test_pydicom_deidentify",
        speedup=True,
    ),
    Ratio(
        group="deidentify",
        label="de-identification plan, every option, vs pydicom read-modify-write",
        subject="test_deidentify_plan_every_option",
        peer="test_pydicom_deidentify",
        speedup=True,
    ),
    Ratio(
        group="morph",
        label="morph (header) vs pydicom read-modify-write",
        subject="test_morph_header",
        peer="test_pydicom_read_modify_write",
        speedup=True,
    ),
    *(
        Ratio(
            group="morph",
            label=f"morph with a {name} digest of the output vs pydicom read-modify-write",
            subject=f"test_morph_with_{name.lower()}",
            peer="test_pydicom_read_modify_write",
            speedup=True,
        )
        for name in ("BLAKE3", "SHA256")
    ),
    *(
        Ratio(
            group=f"store-{size}",
            label="segment store vs one file per instance (durable rounds of 64)",
            subject="test_append_segments",
            peer="test_append_files",
            speedup=True,
        )
        for size in ("16KB", "513KB")
    ),
)


@dataclass(frozen=True, kw_only=True)
class Measured:
    group: str
    name: str
    seconds: float
    extra: Mapping[str, Any]

    def throughput(self) -> dict[str, float]:
        """GB/s for benchmarks that declare `bytes`, files/s for `files`."""
        out: dict[str, float] = {}
        if "bytes" in self.extra:
            out["gb_per_s"] = self.extra["bytes"] / self.seconds / 1e9
        if "files" in self.extra:
            out["files_per_s"] = self.extra["files"] / self.seconds
        return out


def collect(config: pytest.Config) -> list[Measured]:
    """This run's benchmarks that produced statistics."""
    session: Any = getattr(config, "_benchmarksession", None)
    measured = []
    for bench in getattr(session, "benchmarks", ()):
        if not bench or bench.group is None:
            continue
        measured.append(
            Measured(
                group=bench.group,
                # Parametrised names carry "[param]"; the group already says which.
                name=bench.name.partition("[")[0],
                seconds=float(getattr(bench.stats, STATISTIC)),
                extra=dict(bench.extra_info),
            )
        )
    return measured


def compute(measured: Iterable[Measured]) -> list[tuple[Ratio, float]]:
    times = {(m.group, m.name): m.seconds for m in measured}
    out = []
    for ratio in RATIOS:
        subject = times.get((ratio.group, ratio.subject))
        peer = times.get((ratio.group, ratio.peer))
        if subject and peer:
            out.append((ratio, peer / subject))
    return out


def report_path(config: pytest.Config) -> Path:
    """Where the ratios go: $DICOMRELAY_BENCH_RATIOS, else beside --benchmark-json."""
    if env := os.environ.get(RATIOS_PATH_ENV):
        return Path(env)
    bench_json: Path | None = config.getoption("benchmark_json", None)
    if bench_json is not None:
        return Path(bench_json).parent / DEFAULT_RATIOS_PATH.name
    return config.rootpath / DEFAULT_RATIOS_PATH


def summarise(config: pytest.Config) -> tuple[list[str], dict[str, Any]] | None:
    """Lines for the terminal and the JSON document; `None` when nothing ran."""
    measured = collect(config)
    targets = config.stash.get(TARGETS_KEY, {})
    if not measured and not targets:
        return None
    ratios = compute(measured)
    lines = []
    for group in dict.fromkeys(m.group for m in measured):
        shown_lines = [
            f"  {ratio.label}: {ratio.describe(value)}"
            for ratio, value in ratios
            if ratio.group == group
        ]
        for m in measured:
            if m.group == group and (rates := m.throughput()):
                shown = ", ".join(
                    f"{v:.2f} GB/s" if k == "gb_per_s" else f"{v:,.0f} files/s"
                    for k, v in rates.items()
                )
                shown_lines.append(f"  {m.name}: {shown}")
        if shown_lines:  # whole transfers have their own report (benches/races.py)
            lines.extend([f"[{group}]", *shown_lines])
    for name, figures in targets.items():
        lines.append(
            f"[target] {name}: {figures['measured']:.2f}x (target >= {figures['target']:g}x)"
        )
    document = {
        "statistic": STATISTIC,
        "ratios": [
            {
                "group": r.group,
                "label": r.label,
                "subject": r.subject,
                "peer": r.peer,
                "value": value,
            }
            for r, value in ratios
        ],
        "benchmarks": [
            {"group": m.group, "name": m.name, "seconds": m.seconds, **m.throughput()}
            for m in measured
        ],
        "targets": targets,
    }
    return lines, document


def write(path: Path, document: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
