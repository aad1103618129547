"""What a person at the command line sees when a command fails: one line
that says what and where, and an exit status; the traceback only on request
(``--debug`` or ``DICOMRELAY_DEBUG=1``)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
from typing import NoReturn

from dicomrelay.errors import DicomrelayError, UsageError

USAGE = 2  # the command line asks for something that cannot be
FAILURE = 1  # the command ran and failed
INTERRUPTED = 130  # Ctrl-C or SIGTERM: 128 + SIGINT, as shells report it


class Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake as one line (not the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An argument type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("DICOMRELAY_DEBUG", "") not in ("", "0")


def innermost(error: BaseException) -> BaseException:
    """The first real failure inside (nested) exception groups: task groups
    wrap the one that matters together with the cancellations it caused."""
    while isinstance(error, BaseExceptionGroup):
        real = [e for e in error.exceptions if not _is_cancellation(e)]
        error = (real or list(error.exceptions))[0]
    return error


def _is_cancellation(error: BaseException) -> bool:
    # anyio's cancellation on asyncio (and uvloop); checked after the loop has gone.
    return isinstance(error, asyncio.CancelledError)


def describe(error: BaseException) -> tuple[str, int]:
    """The line to print for ``error`` (without the command's name) and the
    exit status."""
    error = innermost(error)
    if isinstance(error, UsageError):
        return str(error), USAGE
    if isinstance(error, DicomrelayError):
        return str(error), FAILURE
    if isinstance(error, OSError):
        return describe_os_error(error), FAILURE
    return (
        f"unexpected {type(error).__name__}: {error} (run with --debug for the traceback)",
        FAILURE,
    )


def describe_os_error(error: OSError) -> str:
    """``[Errno 13] Permission denied: '/x'`` as ``/x: permission denied``."""
    reason = (error.strerror or str(error)).lower()
    if error.errno == errno.EADDRINUSE:
        return f"cannot listen: {_without_errno(str(error))} (is another process using the port?)"
    if error.filename is not None:
        where = os.fsdecode(error.filename)
        if error.filename2 is not None:
            where += f" -> {os.fsdecode(error.filename2)}"
        return f"{where}: {reason}"
    return _without_errno(str(error)) or reason


def _without_errno(text: str) -> str:
    if text.startswith("[Errno ") and "] " in text:
        return text.split("] ", 1)[1]
    return text
