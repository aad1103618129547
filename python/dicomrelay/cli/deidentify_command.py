"""``dicomrelay deidentify SRC... --out DIR``: PS3.15 Annex E de-identification
of files, for research sets and for operators."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dicomrelay.cli.scan_command import files_under
from dicomrelay.confidentiality_profile import Option

OPTION_HELP = {
    Option.RETAIN_LONGITUDINAL_FULL_DATES: "keep dates and times as they are",
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
        "keep dates moved by the project's offset (1 to 3,652 days back, the same for every "
        "file of the project); times of day kept"
    ),
    Option.RETAIN_PATIENT_CHARACTERISTICS: "keep sex, age, size, weight, ethnic group...",
    Option.RETAIN_DEVICE_IDENTITY: "keep station names, serial numbers; AE titles pseudonymised",
    Option.RETAIN_INSTITUTION_IDENTITY: "keep institution names and addresses",
    Option.RETAIN_UIDS: "keep the UIDs instead of remapping them",
    Option.RETAIN_SAFE_PRIVATE: "keep the private attributes --safe-private lists",
    Option.CLEAN_DESCRIPTORS: (
        "keep descriptions and comments with the header's names, IDs, long numbers and "
        "written dates taken out"
    ),
}


def register(sub: Any) -> None:
    options = "; ".join(f"{o.value}: {OPTION_HELP[o]}" for o in Option)
    parser: argparse.ArgumentParser = sub.add_parser(
        "deidentify",
        help="de-identify DICOM files (PS3.15 Annex E Basic Profile and options)",
        description=(
            "De-identify DICOM files by the Basic Application Level Confidentiality Profile "
            "(PS3.15 Annex E, Table E.1-1) and the options chosen. Outputs are named "
            "OUT/STUDY/SERIES/INSTANCE.dcm by their new UIDs. Instances whose pixels may show "
            "identity (burned-in annotation) are refused unless --allow-burned-in."
        ),
    )
    parser.add_argument("sources", nargs="+", metavar="SRC", help="files or folders (recursed)")
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="where the outputs go"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        choices=[o.value for o in Option],
        metavar="NAME",
        help=f"a profile option (repeat for several): {options}",
    )
    parser.add_argument(
        "--key-file",
        required=True,
        type=Path,
        metavar="FILE",
        help="the project key (at least 16 bytes, e.g. `openssl rand -hex 32`): the same key "
        "gives the same new UIDs, date offset and pseudonyms",
    )
    parser.add_argument(
        "--safe-private",
        type=Path,
        metavar="FILE",
        help="with --option retain-safe-private: the private attributes known to be safe, one "
        "GROUP,CREATOR,ELEMENT a line (0019,GEMS_ACQU_01,23)",
    )
    parser.add_argument(
        "--allow-burned-in",
        action="store_true",
        help="de-identify instances whose pixels may show identity (their pixels are not cleaned)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dicomrelay import scan_many
    from dicomrelay.deid_files import (
        deidentify_file,
        output_path,
        parse_safe_private,
        read_project_key,
    )
    from dicomrelay.deidentify import SafePrivate, check_options
    from dicomrelay.errors import (
        BurnedInAnnotation,
        ConfigurationError,
        DicomrelayError,
        UsageError,
    )

    for source in args.sources:
        if not Path(source).exists():
            raise UsageError(f"{source}: no such file or folder")
    try:
        options = check_options([Option(name) for name in args.option])
        key = read_project_key(args.key_file)
        safe: tuple[SafePrivate, ...] = ()
        if Option.RETAIN_SAFE_PRIVATE in options:
            if args.safe_private is None:
                raise UsageError("--option retain-safe-private needs --safe-private FILE")
            text = args.safe_private.read_text()
            safe = parse_safe_private(text, source=str(args.safe_private))
        elif args.safe_private is not None:
            raise UsageError("--safe-private is used only with --option retain-safe-private")
    except ConfigurationError as error:
        raise UsageError(str(error)) from None
    paths = [Path(p) for p in files_under(args.sources)]
    done = refused = failed = 0
    written: dict[Path, Path] = {}  # output -> its source, this run
    for path, info in zip(paths, scan_many(paths), strict=True):
        if isinstance(info, Exception):
            failed += 1
            sys.stderr.write(f"{path}: not read: {info}\n")
            continue
        target = output_path(args.out, info, key, options)
        if target in written:
            failed += 1
            sys.stderr.write(f"{path}: failed: the same instance as {written[target]}\n")
            continue
        written[target] = path
        try:
            result = deidentify_file(
                path,
                args.out,
                info,
                options=options,
                key=key,
                safe_private=safe,
                allow_burned_in=args.allow_burned_in,
            )
        except BurnedInAnnotation as error:
            refused += 1
            sys.stderr.write(f"{path}: refused: {error.reason}\n")
            continue
        except (DicomrelayError, OSError) as error:
            failed += 1
            sys.stderr.write(f"{path}: failed: {error}\n")
            continue
        done += 1
        sys.stdout.write(f"{path} -> {result.output}\n")
    sys.stderr.write(f"{done} de-identified, {refused} refused, {failed} failed\n")
    return 1 if refused or failed else 0
