"""The ``dicomrelay`` command line: one subcommand a module.

Each module registers its parsers with nothing heavier than the standard
library, and imports what a command runs inside that command: ``echoscu``
and ``storescu`` start in a fifth of a second, as an administrator used to
DCMTK expects, not after loading the node, the ledger and the PKI.

Every failure ends in one line on stderr, ``dicomrelay COMMAND: what``, and
an exit status (2 usage, 1 failure, 130 interrupted); ``--debug`` (anywhere
on the line) or ``DICOMRELAY_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from dicomrelay.allocator import keep_freed_memory
from dicomrelay.cli import (
    audit_command,
    deidentify_command,
    dicom_commands,
    loadtest_command,
    morph_command,
    node_commands,
    operator_errors,
    pki_commands,
    quarantine_command,
    reconcile_command,
    scan_command,
    share_command,
    token_command,
)

SUBCOMMANDS = (
    loadtest_command,
    node_commands,
    quarantine_command,
    audit_command,
    pki_commands,
    dicom_commands,
    scan_command,
    deidentify_command,
    morph_command,
    token_command,
    share_command,
    reconcile_command,
)


def build_parser() -> argparse.ArgumentParser:
    parser = operator_errors.Parser(
        prog="dicomrelay",
        description="Move DICOM studies between organisations, verified end to end.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of a failure (also DICOMRELAY_DEBUG=1); allowed anywhere",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in SUBCOMMANDS:
        command.register(sub)
    return parser


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so every `finally` (temporary files,
    # child processes) runs before the process exits.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    debug = operator_errors.debug_requested(words)
    args = build_parser().parse_args([w for w in words if w != "--debug"])
    keep_freed_memory()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stderr.write(f"dicomrelay {args.command}: interrupted\n")
        return operator_errors.INTERRUPTED
    except Exception as error:
        if debug:
            raise
        line, code = operator_errors.describe(error)
        sys.stderr.write(f"dicomrelay {args.command}: {line}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
