"""``dicomrelay scan PATH...``: what the scanner finds in files, as a table or JSON lines."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import Any

import orjson

from dicomrelay import InstanceInfo, scan_many

COLUMNS = (
    ("modality", 8),
    ("patient_id", 14),
    ("rows", 5),
    ("columns", 5),
    ("transfer_syntax_uid", 24),
    ("pixel_data_length", 10),
)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "scan", help="scan DICOM files and print what they hold"
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursed)")
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    parser.add_argument("--digest", choices=("sha256", "blake3"), default=None)
    parser.add_argument("--chunk-size", type=int, default=None, metavar="BYTES")
    parser.set_defaults(run=run)


def files_under(paths: list[str]) -> Iterator[str]:
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                yield from (os.path.join(root, n) for n in sorted(names))
        else:
            yield path


def run(args: argparse.Namespace) -> int:
    paths = list(files_under(args.paths))
    results = scan_many(paths, digest=args.digest, chunk_size=args.chunk_size)
    out = sys.stdout
    width = max((len(p) for p in paths), default=4)
    if not args.json:
        out.write(_row("file", width, [name for name, _ in COLUMNS]))
    failed = 0
    for path, result in zip(paths, results, strict=True):
        if isinstance(result, InstanceInfo):
            if args.json:
                out.write(orjson.dumps({"path": path, **result.as_dict()}).decode() + "\n")
            else:
                values = [_cell(result.as_dict()[name]) for name, _ in COLUMNS]
                out.write(_row(path, width, values))
        else:
            failed += 1
            error = {"path": path, "error": type(result).__name__, "message": str(result)}
            if args.json:
                out.write(orjson.dumps(error).decode() + "\n")
            else:
                sys.stderr.write(f"{path}: {type(result).__name__}: {result}\n")
    return 1 if failed else 0


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _row(first: str, width: int, cells: list[str]) -> str:
    parts = [f"{cell:<{w}}" for cell, (_, w) in zip(cells, COLUMNS, strict=True)]
    return f"{first:<{width}}  " + "  ".join(parts).rstrip() + "\n"
