"""``dicomrelay morph SRC... --out DIR --set TAG=VALUE ... --remove TAG ...``:
header edits on files, the pixel data copied by the kernel untouched.

A TAG is ``gggg,eeee`` (or ``(gggg,eeee)``, ``ggggeeee``) or a keyword of the
small table below; a VALUE may start with its VR (``LO:LOCAL123``), which a
tag outside the table needs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from dicomrelay.cli.scan_command import files_under

# Keywords an operator reaches for when reconciling or preparing a set: tag, VR.
KEYWORDS: dict[str, tuple[int, str]] = {
    "SOPInstanceUID": (0x00080018, "UI"),
    "StudyDate": (0x00080020, "DA"),
    "SeriesDate": (0x00080021, "DA"),
    "StudyTime": (0x00080030, "TM"),
    "AccessionNumber": (0x00080050, "SH"),
    "Modality": (0x00080060, "CS"),
    "InstitutionName": (0x00080080, "LO"),
    "InstitutionAddress": (0x00080081, "ST"),
    "ReferringPhysicianName": (0x00080090, "PN"),
    "StationName": (0x00081010, "SH"),
    "StudyDescription": (0x00081030, "LO"),
    "SeriesDescription": (0x0008103E, "LO"),
    "InstitutionalDepartmentName": (0x00081040, "LO"),
    "PerformingPhysicianName": (0x00081050, "PN"),
    "OperatorsName": (0x00081070, "PN"),
    "PatientName": (0x00100010, "PN"),
    "PatientID": (0x00100020, "LO"),
    "IssuerOfPatientID": (0x00100021, "LO"),
    "PatientBirthDate": (0x00100030, "DA"),
    "PatientSex": (0x00100040, "CS"),
    "OtherPatientIDs": (0x00101000, "LO"),
    "PatientAge": (0x00101010, "AS"),
    "PatientComments": (0x00104000, "LT"),
    "PatientIdentityRemoved": (0x00120062, "CS"),
    "DeidentificationMethod": (0x00120063, "LO"),
    "BodyPartExamined": (0x00180015, "CS"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "StudyID": (0x00200010, "SH"),
    "SeriesNumber": (0x00200011, "IS"),
    "InstanceNumber": (0x00200013, "IS"),
    "RequestingPhysician": (0x00321032, "PN"),
}
VR_OF_TAG = {tag: vr for tag, vr in KEYWORDS.values()}
VRS = frozenset(
    [
        "AE",
        "AS",
        "AT",
        "CS",
        "DA",
        "DS",
        "DT",
        "FD",
        "FL",
        "IS",
        "LO",
        "LT",
        "OB",
        "OD",
        "OF",
        "OL",
        "OV",
        "OW",
        "PN",
        "SH",
        "SL",
        "SS",
        "ST",
        "SV",
        "TM",
        "UC",
        "UI",
        "UL",
        "UN",
        "UR",
        "US",
        "UT",
        "UV",
    ]
)
_TAG = re.compile(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?")


def parse_tag(text: str) -> int:
    """``0010,0020``, ``(0010,0020)``, ``00100020`` or a keyword of the table."""
    if text in KEYWORDS:
        return KEYWORDS[text][0]
    match = _TAG.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"not a tag: {text!r} (gggg,eeee such as 0010,0020, or a keyword such as PatientID)"
        )
    return int(match[1] + match[2], 16)


def parse_set(text: str) -> tuple[int, str, str]:
    """``TAG=VALUE`` or ``TAG=VR:VALUE`` as (tag, VR, value)."""
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected TAG=VALUE, not {text!r}")
    tag = parse_tag(name)
    prefix, colon, rest = value.partition(":")
    if colon and prefix in VRS:
        return tag, prefix, rest
    vr = VR_OF_TAG.get(tag)
    if vr is None:
        raise argparse.ArgumentTypeError(
            f"{name}: give the VR with the value, as in {name}=LO:{value}"
        )
    return tag, vr, value


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "morph", help="edit DICOM headers (the pixel data copied untouched)"
    )
    parser.add_argument("paths", nargs="+", metavar="SRC", help="files or folders (recursed)")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="where the outputs go (folders keep their layout)",
    )
    parser.add_argument(
        "--set",
        dest="sets",
        type=parse_set,
        action="append",
        default=[],
        metavar="TAG=VALUE",
        help="set a top-level element, added if absent (TAG=VR:VALUE for a tag outside "
        "the keyword table)",
    )
    parser.add_argument(
        "--remove",
        type=parse_tag,
        action="append",
        default=[],
        metavar="TAG",
        help="remove an element wherever it is, in sequences too",
    )
    parser.add_argument("--digest", choices=("sha256", "blake3"), default="sha256")
    parser.set_defaults(run=run)


def outputs(sources: list[str], out: Path) -> list[tuple[Path, Path]]:
    """(source file, output file) for each file: a folder's files keep their
    place under it; a file goes to ``out`` by its name."""
    from dicomrelay.errors import UsageError

    pairs: list[tuple[Path, Path]] = []
    for given in sources:
        root = Path(given)
        if not root.exists():
            raise UsageError(f"{given}: no such file or folder")
        for name in files_under([given]):
            path = Path(name)
            relative = path.relative_to(root) if root.is_dir() else Path(path.name)
            pairs.append((path, out / relative))
    seen: dict[Path, Path] = {}
    for src, dst in pairs:
        if dst.resolve() == src.resolve():
            raise UsageError(f"{src}: --out would overwrite it")
        if dst in seen:
            raise UsageError(f"{seen[dst]} and {src} would both be written to {dst}")
        seen[dst] = src
    return pairs


def run(args: argparse.Namespace) -> int:
    from dicomrelay.errors import DicomrelayError, UsageError
    from dicomrelay.rewrite import Edit, Remove, Set, rewrite_file

    if not args.sets and not args.remove:
        raise UsageError("nothing to do: give --set TAG=VALUE or --remove TAG")
    edits: list[Edit] = [Set(tag=tag, vr=vr, value=value) for tag, vr, value in args.sets]
    edits += [Remove(tag=tag) for tag in args.remove]
    pairs = outputs(args.paths, args.out)
    failed = 0
    for src, dst in pairs:
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            result = rewrite_file(src, dst, edits, digest=args.digest)
        except (DicomrelayError, OSError) as error:
            failed += 1
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            sys.stderr.write(f"dicomrelay morph: {src}: {reason}\n")
            continue
        sys.stdout.write(f"{os.fspath(dst)}\t{args.digest}:{result.digest}\n")
    return 1 if failed else 0
