"""Whole transfers raced round by round: each contender's rounds, and the
medians the report gives.

A round is one whole transfer of the same files by one contender; contenders
take turns (see peers.rounds). The figure for a contender is the median of its
rounds, images/s and CPU alike: on a shared machine one round can be sunk by a
burst of load from elsewhere, or flattered by a quiet moment, and the median is
moved by neither. The ratios are of medians from the same run, never against a
remembered number.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SIDES = ("sender", "receiver")
KINDS = ("user", "system")


@dataclass(frozen=True, kw_only=True)
class Round:
    images: int
    seconds: float
    # side -> {"user": ms, "system": ms} per image
    cpu_ms_per_image: Mapping[str, Mapping[str, float]]

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


@dataclass(kw_only=True)
class Race:
    """One benchmark's contenders against a baseline (DCMTK), over the same files."""

    report: str  # the JSON file it goes to: build-artifacts/<report>-ratios.json
    name: str
    baseline: str
    describe: str
    # what each CPU figure covers (by side or by contender)
    cpu_notes: Mapping[str, str] = field(default_factory=dict)
    rounds: dict[str, list[Round]] = field(default_factory=dict)
    load_average: list[tuple[float, float, float]] = field(default_factory=list)

    def record(self, contender: str, measured: Round) -> None:
        self.rounds.setdefault(contender, []).append(measured)
        self.load_average.append(os.getloadavg())

    def medians(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for contender, rounds in self.rounds.items():
            rates = [r.images_per_second for r in rounds]
            cpu = {
                side: {
                    kind: round(
                        statistics.median(r.cpu_ms_per_image[side][kind] for r in rounds), 3
                    )
                    for kind in KINDS
                }
                for side in SIDES
                if all(side in r.cpu_ms_per_image for r in rounds)
            }
            out[contender] = {
                "images": rounds[0].images,
                "images_per_second": round(statistics.median(rates), 1),
                "rounds_images_per_second": [round(rate, 1) for rate in rates],
                "cpu_ms_per_image": cpu,
                "rounds_cpu_ms_per_image": [dict(r.cpu_ms_per_image) for r in rounds],
            }
        return out

    def document(self) -> dict[str, Any]:
        medians = self.medians()
        base = medians.get(self.baseline, {}).get("images_per_second")
        ratios = {
            contender: round(m["images_per_second"] / base, 3)
            for contender, m in medians.items()
            if base and contender != self.baseline
        }
        loads = [load[0] for load in self.load_average]
        return {
            "what": self.describe,
            "statistic": f"median of {min(map(len, self.rounds.values()), default=0)}"
            " interleaved rounds",
            "baseline": self.baseline,
            "contenders": medians,
            "vs_baseline": ratios,
            "cpu_covers": dict(self.cpu_notes),
            # Read at the end of each round: the benchmark's own processes (about
            # 2 while a transfer runs) are counted as well as everyone else's.
            "load_average_1min": {"min": min(loads), "max": max(loads)} if loads else {},
            "cpus": os.cpu_count(),
        }

    def lines(self) -> list[str]:
        document = self.document()
        loads = document["load_average_1min"]
        lines = [
            f"[{self.name}] {document['what']}: {document['statistic']};"
            f" load average (1 min, this run's included) {loads.get('min', 0):.1f}"
            f"-{loads.get('max', 0):.1f} on {document['cpus']} CPUs"
        ]
        width = max(map(len, document["contenders"]), default=0)
        for contender, m in document["contenders"].items():
            rounds = ", ".join(f"{rate:,.0f}" for rate in m["rounds_images_per_second"])
            ratio = document["vs_baseline"].get(contender)
            versus = f" = {ratio:.2f}x {self.baseline}" if ratio is not None else ""
            lines.append(
                f"  {contender:<{width}}  {m['images_per_second']:>7,.0f} images/s{versus}"
                f" (rounds {rounds})"
            )
            cpu = m["cpu_ms_per_image"]
            if cpu:
                shown = "; ".join(
                    f"{side} user {cpu[side]['user']:.3f} system {cpu[side]['system']:.3f}"
                    for side in SIDES
                    if side in cpu
                )
                lines.append(f"  {'':<{width}}  CPU ms/image: {shown}")
        return lines


# Every race of this session, by name, in the order they first ran.
RACES: dict[str, Race] = {}


def cpu_us(fn: Callable[[], object], loops: int) -> float:
    """Microseconds of this process's CPU per call of ``fn`` (``loops`` calls)."""
    start = time.process_time()
    for _ in range(loops):
        fn()
    return (time.process_time() - start) / loops * 1e6


def race(**kwargs: Any) -> Race:
    """The session's race of this name (made on first use)."""
    name: str = kwargs["name"]
    if name not in RACES:
        RACES[name] = Race(**kwargs)
    return RACES[name]


def write_reports(directory: Path) -> list[tuple[Path, list[str]]]:
    """One JSON file per report (races by name inside it); the terminal's lines."""
    out = []
    for report in dict.fromkeys(r.report for r in RACES.values()):
        races = [r for r in RACES.values() if r.report == report and r.rounds]
        if not races:
            continue
        path = directory / f"{report}-ratios.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({r.name: r.document() for r in races}, indent=2) + "\n")
        out.append((path, [line for r in races for line in r.lines()]))
    return out
