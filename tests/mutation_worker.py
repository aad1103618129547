"""A plain mutation-fuzzing loop over the scanner, run as a child process.

Input `i` of a run with seed `s` is a pure function of (s, i) and the seed
corpus, so a parent that sees this process die (or stall) can rebuild the exact
input from the index left in the progress file. Usage:

    python mutation_worker.py --seed S --start I --stop J --progress FILE

The progress file holds five little-endian int64s, updated as the loop runs:
the index being scanned, then the counts of inputs, successes, parse errors and
wrong exception types so far. At the end one JSON line of results goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import random
import resource
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dicomrelay
from dicom_builders import (
    BIG,
    DEFLATED_LE,
    EXPLICIT,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT,
    IMPLICIT_LE,
    KNOWN_VRS,
    RLE_LOSSLESS,
    Encoding,
    Layout,
    element,
    item,
    layout,
    make_ct_slice,
    meta_group,
    nested_sequences,
    pydicom_test_files,
    sequence_delimiter,
)

PROGRESS = struct.Struct("<5q")
DIGEST: dict[str, Any] = {"digest": "blake3", "chunk_size": 4096}
HUGE_32 = (0xFFFFFFFE, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0x7FFFFFFE, 0x10000)
SYNTAXES = (IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED_LE, RLE_LOSSLESS, "1.2.3", "")
DELIMITERS = (b"\xfe\xff\xdd\xe0", b"\xfe\xff\x0d\xe0", b"\xff\xfe\xe0\xdd", b"\xff\xfe\xe0\x0d")


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    layout: Layout


def _small_dataset(enc: Encoding, pixel: bytes | None = None) -> bytes:
    """A raw dataset with nested undefined-length sequences, a defined-length
    sequence, a private UN sequence and pixel data."""
    nested = nested_sequences(3, enc)
    defined = item(element(0x00100020, b"LO", b"DECOY ", enc), enc)
    return (
        element(0x00080005, b"CS", b"ISO_IR 192", enc)
        + element(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0", enc)
        + element(0x00080018, b"UI", b"1.2.3.4.5.6\0", enc)
        + nested
        + element(0x00081140, b"SQ", defined, enc)
        # UN of undefined length: its items are implicit VR little endian (PS3.5 6.2.2)
        + element(0x00091010, b"UN", b"", enc, length=0xFFFFFFFF)
        + item(element(0x00100020, b"LO", b"X ", IMPLICIT), IMPLICIT)
        + sequence_delimiter(IMPLICIT)
        + element(0x00100010, b"PN", "Åström^Jöns".encode() + b"  ", enc)  # even length
        + element(0x00100020, b"LO", b"PID-1 ", enc)
        + element(0x00280008, b"IS", b"2 ", enc)
        + element(0x00280010, b"US", enc.u16(4), enc)
        + element(0x00280011, b"US", enc.u16(4), enc)
        + element(0x00280100, b"US", enc.u16(8), enc)
        + (element(0x7FE00010, b"OB", bytes(range(32)), enc) if pixel is None else pixel)
    )


def _encapsulated() -> bytes:
    frames = item(b"\0" * 8) + item(b"\xff\xd8" + b"\1" * 30) + item(b"\xff\xd9\0\0")
    pixel = element(0x7FE00010, b"OB", b"", length=0xFFFFFFFF) + frames + sequence_delimiter()
    return meta_group(RLE_LOSSLESS) + _small_dataset(EXPLICIT, pixel)


def generated_seeds() -> dict[str, bytes]:
    import zlib

    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = deflate.compress(_small_dataset(EXPLICIT)) + deflate.flush()
    return {
        "gen-implicit.dcm": meta_group(IMPLICIT_LE) + _small_dataset(IMPLICIT),
        "gen-explicit.dcm": meta_group(EXPLICIT_LE) + _small_dataset(EXPLICIT),
        "gen-big.dcm": meta_group(EXPLICIT_BE) + _small_dataset(BIG),
        "gen-raw-implicit.dcm": _small_dataset(IMPLICIT),
        "gen-raw-big.dcm": _small_dataset(BIG),
        "gen-deflated.dcm": meta_group(DEFLATED_LE) + deflated,
        "gen-encapsulated.dcm": _encapsulated(),
        "gen-ct-64.dcm": make_ct_slice(seed=1, rows=64, columns=64),
        "gen-ct-512.dcm": make_ct_slice(seed=2),
    }


def load_seeds() -> list[Seed]:
    named = {p.name: p.read_bytes() for p in pydicom_test_files()}
    named.update(generated_seeds())
    return [Seed(name, data, layout(data)) for name, data in sorted(named.items())]


# --- mutations: each takes the rng, the bytes so far, the seed and the corpus --

Mutation = Callable[[random.Random, bytearray, Seed, list[Seed]], bytearray]


def _pos(rng: random.Random, buf: bytearray) -> int:
    return rng.randrange(len(buf) + 1)


def _boundary(rng: random.Random, seed: Seed) -> int:
    ends = seed.layout.top_level_ends or [seed.layout.dataset_offset]
    return rng.choice(ends)


def truncate_anywhere(
    rng: random.Random, buf: bytearray, seed: Seed, corpus: list[Seed]
) -> bytearray:
    return buf[: _pos(rng, buf)]


def truncate_in_header(
    rng: random.Random, buf: bytearray, seed: Seed, corpus: list[Seed]
) -> bytearray:
    if not seed.layout.headers:
        return buf
    header = rng.choice(seed.layout.headers)[0]
    return buf[: header + rng.randrange(0, 14)]


def huge_length(rng: random.Random, buf: bytearray, seed: Seed, corpus: list[Seed]) -> bytearray:
    if not seed.layout.headers:
        return buf
    _, at, size = rng.choice(seed.layout.headers)
    if at + size > len(buf):
        return buf
    order = "<" if seed.layout.encoding.little or at < seed.layout.dataset_offset else ">"
    if size == 4:
        value = rng.choice([*HUGE_32, len(buf) - at, rng.getrandbits(32)])
        struct.pack_into(order + "I", buf, at, value)
    else:
        struct.pack_into(order + "H", buf, at, rng.choice([0xFFFF, 0xFFFE, rng.getrandbits(16)]))
    return buf


def flip_bytes(rng: random.Random, buf: bytearray, seed: Seed, corpus: list[Seed]) -> bytearray:
    for _i in range(rng.randint(1, 8)):
        if buf:
            at = rng.randrange(len(buf))
            buf[at] = rng.choice([buf[at] ^ (1 << rng.randrange(8)), 0, 0xFF, 0x7F, 0x80])
    return buf


def splice(rng: random.Random, buf: bytearray, seed: Seed, corpus: list[Seed]) -> bytearray:
    other = rng.choice(corpus)
    start = rng.choice(
        [rng.randrange(len(other.data) + 1), *(h[0] for h in other.layout.headers[:50])]
    )
    piece = other.data[start : start + rng.choice([8, 64, 1024, 1 << 20])]
    at = rng.choice([_pos(rng, buf), _boundary(rng, seed)])
    if rng.random() < 0.5:
        return buf[:at] + piece  # the other file's tail
    return buf[:at] + piece + buf[at:]


def undefined_length(
    rng: random.Random, buf: bytearray, seed: Seed, corpus: list[Seed]
) -> bytearray:
    if rng.random() < 0.5 and seed.layout.headers:
        # An undefined length where there was none: runs to a delimiter that isn't there.
        _, at, size = rng.choice(seed.layout.headers)
        if size == 4 and at + 4 <= len(buf):
            buf[at : at + 4] = b"\xff\xff\xff\xff"
        return buf
    # Or a delimiter removed, so an undefined length never ends.
    for delim in DELIMITERS:
        at = buf.find(delim, rng.randrange(len(buf) + 1) // 2)
        if at >= 0:
            return buf[:at] + buf[at + 8 :]
    return buf


def garbage_vr(rng: random.Random, buf: bytearray, seed: Seed, corpus: list[Seed]) -> bytearray:
    if not seed.layout.vr_offsets:
        return buf
    at = rng.choice(seed.layout.vr_offsets)
    if at + 2 <= len(buf):
        buf[at : at + 2] = rng.choice(
            [
                rng.randbytes(2),
                bytes(rng.choices(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=2)),
                rng.choice(sorted(KNOWN_VRS)),
            ]
        )
    return buf


def deep_nesting(rng: random.Random, buf: bytearray, seed: Seed, corpus: list[Seed]) -> bytearray:
    depth = rng.choice(
        [1, 10, 63, 64, 65, 100, 1000, 10_000] if rng.random() < 0.05 else [2, 30, 70]
    )
    nest = nested_sequences(depth, seed.layout.encoding, closed=rng.random() < 0.5)
    at = _boundary(rng, seed)
    return buf[:at] + nest + buf[at:]


def swap_transfer_syntax(
    rng: random.Random, buf: bytearray, seed: Seed, _: list[Seed]
) -> bytearray:
    # Only the meta group's own UID: the dataset stays as it was encoded.
    at = buf.find(b"\x02\x00\x10\x00UI", 132)
    if at < 0 or at + 8 > len(buf):
        return buf
    (n,) = struct.unpack_from("<H", buf, at + 6)
    uid = rng.choice(SYNTAXES).encode()
    uid += b"\0" * (len(uid) % 2)
    return buf[: at + 6] + struct.pack("<H", len(uid)) + uid + buf[at + 8 + n :]


def dotdot_uid(rng: random.Random, buf: bytearray, seed: Seed, corpus: list[Seed]) -> bytearray:
    value = rng.choice([b"../../etc/passwd", b"..\\..\\x", b"1.2/../../3\0", b"/" * 64])
    at = _boundary(rng, seed)
    return buf[:at] + element(0x00080018, b"UI", value, seed.layout.encoding) + buf[at:]


def duplicate_or_delete(
    rng: random.Random, buf: bytearray, seed: Seed, corpus: list[Seed]
) -> bytearray:
    a = _pos(rng, buf)
    b = min(len(buf), a + rng.choice([1, 2, 4, 8, 12, 100, 4096]))
    if rng.random() < 0.5:
        return buf[:a] + buf[b:]
    return buf[:b] + buf[a:b] + buf[b:]


MUTATIONS: list[Mutation] = [
    truncate_anywhere,
    truncate_in_header,
    huge_length,
    huge_length,
    flip_bytes,
    flip_bytes,
    splice,
    undefined_length,
    garbage_vr,
    deep_nesting,
    swap_transfer_syntax,
    dotdot_uid,
    duplicate_or_delete,
]


def input_for(seed: int, index: int, corpus: list[Seed]) -> bytes:
    """Input `index` of the run with `seed`: one to three mutations of one seed file."""
    rng = random.Random(seed * 1_000_003 + index)
    base = rng.choice(corpus)
    buf = bytearray(base.data)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        buf = rng.choice(MUTATIONS)(rng, buf, base, corpus)
    return bytes(buf)


def check_success(info: dicomrelay.InstanceInfo, data: bytes) -> str | None:
    """What is wrong with a successful scan of `data`, if anything."""
    if info.size != len(data):
        return "size is not the input's length"
    if info.dataset_offset > len(data):
        return "dataset_offset past the end"
    if info.pixel_data_offset is not None:
        end = info.pixel_data_offset + (info.pixel_data_length or 0)
        if end > len(data) or info.pixel_data_offset < info.dataset_offset:
            return "pixel data range outside the dataset"
    if info.encapsulated != (info.fragments is not None):
        return "fragments without encapsulated pixel data"
    return None


def check_error(err: dicomrelay.DicomParseError) -> str | None:
    msg = str(err)
    if not isinstance(err.offset, int) or err.offset < 0 or f"at byte {err.offset}" not in msg:
        return "offset missing or not in the message"
    if err.tag is not None and f"({err.tag >> 16:04X},{err.tag & 0xFFFF:04X})" not in msg:
        return "tag not in the message"
    return None


def outcome(data: bytes, **options: Any) -> tuple[str, str | None]:
    """Scan `data`: ("ok" or "parse_error", what is wrong with the result or None),
    or ("wrong", the exception) when the scan raised anything but DicomParseError."""
    try:
        info = dicomrelay.scan(data, **options)
    except dicomrelay.DicomParseError as e:
        return "parse_error", check_error(e)
    except BaseException as e:  # a pyo3 PanicException is a BaseException
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        return "wrong", f"{type(e).__name__}: {e}"
    return "ok", check_success(info, data)


def _proc_status_kib(field: str) -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split(field + ":")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def rss_baseline_kib() -> int:
    """Start measuring peak RSS from here. On Linux the high-water mark is reset
    to the current RSS (clear_refs), and that is returned."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _proc_status_kib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_kib() -> int:
    """Peak RSS of this process image. VmHWM, not ru_maxrss, where there is one:
    after a vfork+exec, ru_maxrss starts at the parent's RSS (pytest's)."""
    return _proc_status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run(seed: int, start: int, stop: int, progress: Path) -> dict[str, object]:
    corpus = load_seeds()
    progress.write_bytes(bytes(PROGRESS.size))
    with progress.open("r+b") as f:
        prog = mmap.mmap(f.fileno(), PROGRESS.size)
    rss_before = rss_baseline_kib()
    counts = {"inputs": 0, "ok": 0, "parse_errors": 0, "wrong_types": 0, "bad_results": 0}
    wrong: list[dict[str, object]] = []
    slowest = (0.0, -1)
    largest = 0
    for i in range(start, stop):
        data = input_for(seed, i, corpus)
        largest = max(largest, len(data))
        PROGRESS.pack_into(
            prog,
            0,
            i,
            counts["inputs"],
            counts["ok"],
            counts["parse_errors"],
            counts["wrong_types"],
        )
        t0 = time.perf_counter()
        # Every 8th input also digests, so the digest path sees the same inputs.
        kind, problem = outcome(data, **(DIGEST if i % 8 == 0 else {}))
        counts[{"ok": "ok", "parse_error": "parse_errors", "wrong": "wrong_types"}[kind]] += 1
        counts["bad_results"] += kind != "wrong" and problem is not None
        slowest = max(slowest, (time.perf_counter() - t0, i))
        counts["inputs"] += 1
        if problem is not None and len(wrong) < 50:
            wrong.append({"index": i, "kind": kind, "problem": problem[:300]})
    PROGRESS.pack_into(
        prog, 0, stop, counts["inputs"], counts["ok"], counts["parse_errors"], counts["wrong_types"]
    )
    return {
        **counts,
        "wrong": wrong,
        "rss_before_kib": rss_before,
        "rss_peak_kib": peak_rss_kib(),
        "largest_input": largest,
        "slowest_seconds": slowest[0],
        "slowest_index": slowest[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--stop", type=int, required=True)
    parser.add_argument("--progress", type=Path, required=True)
    args = parser.parse_args()
    print(json.dumps(run(args.seed, args.start, args.stop, args.progress)))


if __name__ == "__main__":
    main()
