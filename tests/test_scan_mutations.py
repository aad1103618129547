"""Robustness: whatever the bytes, the scanner returns an InstanceInfo or raises
DicomParseError. It never crashes, never hangs, never raises anything else, and
never allocates by a declared length.

The big loop runs in a child process (tests/mutation_worker.py) so that a
segfault or abort is counted and reproduced, not the end of the test run.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dicomrelay
import mutation_worker
from child_process import TESTS_DIR

LOOP_INPUTS = 100_000
LOOP_SEED = 20240131
STALL_SECONDS = 20.0  # no progress on one input for this long is a hang
MAX_RSS_GROWTH_KIB = 64 * 1024


@dataclass
class Campaign:
    inputs: int = 0
    ok: int = 0
    parse_errors: int = 0
    wrong_types: int = 0  # raised something other than DicomParseError
    bad_results: int = 0  # offsets outside the input, error messages without them
    crashes: list[dict[str, object]] = field(default_factory=list)
    hangs: list[dict[str, object]] = field(default_factory=list)
    wrong: list[dict[str, object]] = field(default_factory=list)  # examples of the two above
    rss_growth_kib: int = 0
    slowest_seconds: float = 0.0


def _reproducer(seed: int, index: int, out: Path) -> str:
    data = mutation_worker.input_for(seed, index, mutation_worker.load_seeds())
    path = out / f"mutation-{seed}-{index}.bin"
    path.write_bytes(data)
    return f"{path} ({len(data)} bytes, starts {data[:48].hex()})"


def run_campaign(seed: int, total: int, out: Path) -> Campaign:
    """Run the loop from 0 to `total`, restarting after each crash or hang."""
    campaign = Campaign()
    progress = out / "progress.bin"
    start = 0
    while start < total and len(campaign.crashes) + len(campaign.hangs) < 20:
        cmd = [sys.executable, "mutation_worker.py", "--seed", str(seed)]
        cmd += ["--start", str(start), "--stop", str(total), "--progress", str(progress)]
        proc = subprocess.Popen(cmd, cwd=TESTS_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        last, since = (-1, 0, 0, 0, 0), time.monotonic()
        hung = False
        while proc.poll() is None:
            time.sleep(0.1)
            now = _progress(progress)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > STALL_SECONDS:
                proc.kill()
                hung = True
        stdout, stderr = proc.communicate()
        index, inputs, ok, errors, wrong_types = _progress(progress)
        if proc.returncode == 0:
            result = json.loads(stdout)
            for key in ("inputs", "ok", "parse_errors", "wrong_types", "bad_results"):
                setattr(campaign, key, getattr(campaign, key) + int(result[key]))
            campaign.wrong += result["wrong"]
            growth = int(result["rss_peak_kib"]) - int(result["rss_before_kib"])
            campaign.rss_growth_kib = max(campaign.rss_growth_kib, growth)
            campaign.slowest_seconds = max(
                campaign.slowest_seconds, float(result["slowest_seconds"])
            )
            break
        # Died or stalled on input `index`: count what ran before it, then go on past it.
        campaign.inputs += inputs + 1
        campaign.ok += ok
        campaign.parse_errors += errors
        campaign.wrong_types += wrong_types
        failure = {
            "index": index,
            "returncode": proc.returncode,
            "stderr": stderr.decode(errors="replace")[-500:],
            "input": _reproducer(seed, index, out),
        }
        (campaign.hangs if hung else campaign.crashes).append(failure)
        start = index + 1
    return campaign


def _progress(path: Path) -> tuple[int, int, int, int, int]:
    try:
        return mutation_worker.PROGRESS.unpack(path.read_bytes()[: mutation_worker.PROGRESS.size])
    except (OSError, struct.error):
        return (-1, 0, 0, 0, 0)


@pytest.mark.timeout(300)
def test_100k_mutated_inputs_in_a_child_process(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    c = run_campaign(LOOP_SEED, LOOP_INPUTS, tmp_path)
    summary = (
        f"mutation loop: {c.inputs} inputs, {c.ok} scanned, {c.parse_errors} DicomParseError, "
        f"{len(c.crashes)} crashes, {len(c.hangs)} hangs, {c.wrong_types} wrong exception "
        f"types, {c.bad_results} bad results, "
        f"peak RSS growth {c.rss_growth_kib} KiB, slowest input {c.slowest_seconds * 1e3:.1f} ms"
    )
    print(summary)
    for key, value in vars(c).items():
        record_property(key, value if isinstance(value, int | float) else len(value))
    assert c.crashes == [], summary
    assert c.hangs == [], summary
    wrong = [
        {**w, "input": _reproducer(LOOP_SEED, int(str(w["index"])), tmp_path)} for w in c.wrong[:5]
    ]
    assert wrong == [], summary
    assert (c.wrong_types, c.bad_results) == (0, 0), summary
    assert c.inputs >= LOOP_INPUTS
    assert c.ok + c.parse_errors == c.inputs
    # Mutations neither too mild nor too wild to test much:
    assert c.ok > 1000, summary
    assert c.parse_errors > 1000, summary
    assert c.rss_growth_kib < MAX_RSS_GROWTH_KIB, summary
    assert c.slowest_seconds < 1.0, summary


# --- hypothesis: shrinkable mutations of small seed files ----------------------

SMALL_SEEDS = [s for s in mutation_worker.load_seeds() if len(s.data) <= 16 * 1024]
EDITS = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 1 << 16)),
    st.tuples(st.just("overwrite"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 16), st.integers(1, 64)),
    st.tuples(
        st.just("length"),
        st.integers(0, 1 << 16),
        st.sampled_from([*mutation_worker.HUGE_32, 0, 1, 0xFFFF]),
    ),
)


def apply_edit(data: bytes, edit: tuple[object, ...]) -> bytes:
    kind, at = edit[0], int(str(edit[1])) % (len(data) + 1)
    if kind == "truncate":
        return data[:at]
    if kind == "overwrite":
        piece = edit[2]
        assert isinstance(piece, bytes)
        return data[:at] + piece + data[at + len(piece) :]
    if kind == "insert":
        piece = edit[2]
        assert isinstance(piece, bytes)
        return data[:at] + piece + data[at:]
    if kind == "delete":
        return data[:at] + data[at + int(str(edit[2])) :]
    # A 32-bit length field: headers in this corpus start at even offsets.
    at -= at % 2
    return data[:at] + struct.pack("<I", int(str(edit[2]))) + data[at + 4 :]


def assert_well_behaved(data: bytes) -> None:
    kind, problem = mutation_worker.outcome(data)
    assert kind in {"ok", "parse_error"}, problem
    assert problem is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SMALL_SEEDS), edits=st.lists(EDITS, min_size=1, max_size=4))
def test_mutated_seed_is_scanned_or_rejected(
    seed: mutation_worker.Seed, edits: list[tuple[object, ...]]
) -> None:
    data = seed.data
    for edit in edits:
        data = apply_edit(data, edit)
    assert_well_behaved(data)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_are_scanned_or_rejected(data: bytes) -> None:
    if not data:
        with pytest.raises(dicomrelay.DicomParseError):
            dicomrelay.scan(data)
    else:
        assert_well_behaved(data)
