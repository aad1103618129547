"""Running an async entry point of the command line: on uvloop when it is
installed, and stopped by SIGTERM or SIGINT through the event loop.

A signal handler that raises ``KeyboardInterrupt`` lands wherever the main
thread happens to be, possibly inside the event loop's or anyio's own
bookkeeping, and the loop is then torn down from outside: a process told to
stop could hang there. Here a signal cancels the work instead, so every
``finally`` runs on a loop that is still whole, anyio's worker threads stop
with it, and ``KeyboardInterrupt`` is raised only once the loop has ended.
A second signal while the work unwinds gets the default action (the process
ends at once), for an operator who will not wait.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def backend_options() -> dict[str, bool]:
    """anyio's asyncio backend on uvloop when it is installed."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {"use_uvloop": False}
    return {"use_uvloop": True}


def run(main: Callable[[], Awaitable[T]]) -> T:
    """``main``'s result, run on a new event loop; what it raises, as itself.
    SIGTERM or SIGINT cancels it and raises ``KeyboardInterrupt`` after the
    loop has ended (signals are watched from the main thread only)."""
    results: list[T] = []
    failures: list[Exception] = []

    async def watch(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async for _ in signals:
                scope.cancel()
                return  # the receiver closes: the next signal has its default action

    async def supervised() -> None:
        async with anyio.create_task_group() as tg:
            if threading.current_thread() is threading.main_thread():
                tg.start_soon(watch, tg.cancel_scope)
            try:
                results.append(await main())
            except Exception as e:  # kept out of the task group's exception group
                failures.append(e)
            finally:
                tg.cancel_scope.cancel()

    anyio.run(supervised, backend_options=backend_options())
    if failures:
        raise failures[0]
    if not results:  # only a signal cancels the work
        raise KeyboardInterrupt
    return results[0]
