"""The ``dicomrelay`` command line: one subcommand a module.

Each module registers its parsers with nothing heavier than the standard
library, and imports what a command runs inside that command: ``echoscu``
and ``storescu`` start in a fifth of a second, as an administrator used to
DCMTK expects, not after loading the node, the ledger and the PKI."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dicomrelay.allocator import keep_freed_memory
from dicomrelay.cli import dicom_commands, loadtest_command, node_commands, scan_command

SUBCOMMANDS = (loadtest_command, node_commands, dicom_commands, scan_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicomrelay",
        description="Move DICOM studies between organisations, verified end to end.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in SUBCOMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
