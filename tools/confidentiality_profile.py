"""Convert PS3.15 Table E.1-1 from the standard's published data into dicomrelay's data file.

The source is innolitics/dicom-standard, which parses the DICOM standard's own
HTML into JSON: ``standard/confidentiality_profile_attributes.json`` (Table
E.1-1, one row per attribute, an action per option column) and
``standard/attributes.json`` (PS3.6 Table 6-1, for each attribute's VR, which
implicit VR data does not carry). Nothing is typed by hand: every row, action
and VR comes from those two files; this script only renames the columns and
turns tags into numbers.

    python tools/confidentiality_profile.py GIT_DIR [--commit REV] [--edition 2024b] \
        [--out python/dicomrelay/data/confidentiality_profile.json]

GIT_DIR is a clone of https://github.com/innolitics/dicom-standard (bare or
not). The edition is read from the message of the commit that last changed the
table ("Update standard to rev2024b") unless given.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPOSITORY = "https://github.com/innolitics/dicom-standard"
PROFILE_PATH = "standard/confidentiality_profile_attributes.json"
DICTIONARY_PATH = "standard/attributes.json"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / (
    "python/dicomrelay/data/confidentiality_profile.json"
)

# The source's column names for the options, and the names dicomrelay uses.
OPTION_COLUMNS = {
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_longitudinal_full_dates",
    "rtnLongModifDatesOpt": "retain_longitudinal_modified_dates",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}
KNOWN_COLUMNS = {"name", "tag", "id", "stdCompIOD", "basicProfile", *OPTION_COLUMNS}
ACTIONS = {"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
PRIVATE_ROW = "(GGGG,EEEE) WHERE GGGG IS ODD"
TAG = re.compile(r"\(([0-9A-FX]{4}),([0-9A-FX]{4})\)")


def git(git_dir: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(git_dir), *args], check=True, capture_output=True, text=True
    ).stdout


def tag_and_mask(text: str) -> tuple[int, int]:
    """``(60XX,3000)`` -> (0x60003000, 0xFF00FFFF): an X is any hex digit."""
    m = TAG.fullmatch(text.upper())
    if m is None:
        raise ValueError(f"not a tag: {text!r}")
    digits = m.group(1) + m.group(2)
    tag = int(digits.replace("X", "0"), 16)
    mask = int("".join("0" if c == "X" else "F" for c in digits), 16)
    return tag, mask


def dictionary_vrs(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Tag text (upper case) -> VR as PS3.6 gives it ("US or SS" kept whole)."""
    return {row["tag"].upper(): row["valueRepresentation"] for row in rows}


def convert(profile: list[dict[str, Any]], dictionary: list[dict[str, Any]]) -> dict[str, Any]:
    vrs = dictionary_vrs(dictionary)
    attributes = []
    private = None
    for row in profile:
        unknown = set(row) - KNOWN_COLUMNS
        if unknown:
            raise ValueError(f"{row['tag']}: columns this script does not know: {unknown}")
        actions = [row["basicProfile"], *(row[c] for c in OPTION_COLUMNS if c in row)]
        if any(a not in ACTIONS for a in actions):
            raise ValueError(f"{row['tag']}: unknown action in {actions}")
        options = {OPTION_COLUMNS[c]: row[c] for c in OPTION_COLUMNS if c in row}
        if row["tag"].upper() == PRIVATE_ROW:
            private = {"name": row["name"], "basic": row["basicProfile"], "options": options}
            continue
        tag, mask = tag_and_mask(row["tag"])
        # PS3.6 leaves out the command group (0000,xxxx, PS3.7) and the
        # retired curves (50xx,xxxx); their actions (X, U) need no VR.
        vr = vrs.get(row["tag"].upper())
        if vr is None and not set(actions) <= {"X", "U", "K", "C"}:
            raise ValueError(f"{row['tag']} {row['name']}: not in the attribute dictionary")
        attributes.append(
            {
                "tag": f"{tag:08X}",
                "mask": f"{mask:08X}",
                "name": row["name"],
                "vr": vr,
                "in_standard_iod": row["stdCompIOD"] == "Y",
                "basic": row["basicProfile"],
                "options": options,
            }
        )
    if private is None:
        raise ValueError("the table has no row for private attributes")
    attributes.sort(key=lambda a: (a["tag"], a["mask"]))
    return {"private": private, "attributes": attributes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("git_dir", type=Path, help="a clone of innolitics/dicom-standard")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--edition", help="the standard's edition, e.g. 2024b")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    commit = git(args.git_dir, "rev-parse", args.commit).strip()
    edition = args.edition
    if edition is None:
        message = git(args.git_dir, "log", "-1", "--format=%s", commit, "--", PROFILE_PATH)
        found = re.search(r"rev(\d{4}[a-e])", message)
        if found is None:
            parser.error(f"no edition in {message.strip()!r}: give --edition")
        edition = found.group(1)
    blobs = {}
    texts = {}
    for path in (PROFILE_PATH, DICTIONARY_PATH):
        blobs[path] = git(args.git_dir, "rev-parse", f"{commit}:{path}").strip()
        texts[path] = git(args.git_dir, "show", f"{commit}:{path}")
    table = convert(json.loads(texts[PROFILE_PATH]), json.loads(texts[DICTIONARY_PATH]))
    document = {
        "table": "DICOM PS3.15 Table E.1-1, Application Level Confidentiality Profile Attributes",
        "edition": edition,
        "acknowledgement": f"DICOM PS3.15 and PS3.6 {edition}, (c) NEMA",
        "source": {
            "repository": REPOSITORY,
            "commit": commit,
            "files": [{"path": p, "git_blob": blobs[p]} for p in (PROFILE_PATH, DICTIONARY_PATH)],
            "converted_by": "tools/confidentiality_profile.py",
        },
        **table,
    }
    args.out.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    print(f"{args.out}: {len(table['attributes'])} attributes, edition {edition}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
