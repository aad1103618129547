"""The local wake-up call between ``dicomrelay send`` and the node serving
the same data directory: real Unix sockets, no node."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import pytest

from dicomrelay.wakeup import SOCKET_NAME, WakeSocket, poke

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_poke_wakes_the_serving_node_and_none_is_heard_without_one(
    tmp_path: Path,
) -> None:
    assert not poke(tmp_path), "no node serves here"
    wake = WakeSocket(tmp_path)
    assert wake.open()
    try:
        assert poke(tmp_path)
        assert poke(tmp_path)
        with anyio.fail_after(5):
            await wake.wait()  # both read at once
        with anyio.move_on_after(0.2) as quiet:
            await wake.wait()
        assert quiet.cancelled_caught, "a wake-up was read twice"
    finally:
        wake.close()
    assert not (tmp_path / SOCKET_NAME).exists()
    assert not poke(tmp_path)


async def test_a_dead_nodes_socket_is_replaced_and_a_live_ones_kept(tmp_path: Path) -> None:
    # A node killed while serving leaves its socket file behind, read by nobody.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(tmp_path / SOCKET_NAME))
    stale.close()
    assert not poke(tmp_path)
    first = WakeSocket(tmp_path)
    assert first.open(), "the stale socket is replaced"
    second = WakeSocket(tmp_path)
    try:
        assert not second.open(), "a second node leaves the first its wake-ups"
        second.close()
        assert poke(tmp_path), "and does not take the first one's socket away"
        with anyio.fail_after(5):
            await first.wait()
    finally:
        first.close()
