"""``event_loop.run``: how the command line runs its async entry points. A
stop signal cancels the work on a loop that is still whole, then raises
``KeyboardInterrupt``; a failure comes out as itself."""

from __future__ import annotations

import os
import signal
import threading
import time

import anyio
import anyio.to_thread
import pytest

from dicomrelay import event_loop
from dicomrelay.errors import DicomrelayError


def anyio_worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "AnyIO worker thread"]


def test_the_result_comes_back() -> None:
    async def main() -> int:
        return await anyio.to_thread.run_sync(lambda: 6 * 7)

    assert event_loop.run(main) == 42


def test_a_failure_comes_out_as_itself_not_as_a_group() -> None:
    async def main() -> None:
        raise DicomrelayError("the peer refused")

    with pytest.raises(DicomrelayError, match="the peer refused"):
        event_loop.run(main)


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_unwinds_the_work_on_the_loop(number: signal.Signals) -> None:
    before = signal.getsignal(number)
    unwound: list[str] = []

    async def main() -> None:
        await anyio.to_thread.run_sync(time.sleep, 0.01)  # a worker thread exists
        try:
            os.kill(os.getpid(), number)
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                # Awaiting in a finally works: the loop is whole.
                await anyio.to_thread.run_sync(time.sleep, 0.01)
                unwound.append("finally")

    with pytest.raises(KeyboardInterrupt):
        event_loop.run(main)
    assert unwound == ["finally"]
    for worker in anyio_worker_threads():
        worker.join(timeout=5)
    assert anyio_worker_threads() == [], "anyio's worker threads outlived the loop"
    assert signal.getsignal(number) == before  # the handler given back


def test_off_the_main_thread_no_signal_is_watched() -> None:
    got: list[int] = []

    async def main() -> int:
        return 1

    thread = threading.Thread(target=lambda: got.append(event_loop.run(main)))
    thread.start()
    thread.join(timeout=10)
    assert got == [1]
