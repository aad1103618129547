"""The timers that end associations nobody is using: a peer that stops
answering (our SCU gives up after its DIMSE timeout), and a peer that falls
silent (our SCP aborts it after its idle timeout, and goes on serving)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomrelay.dicom.scp import StoreScp
from dicomrelay.dicom.scu import AssociationError, Client
from peers import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def slow_scp() -> Iterator[int]:
    """A pynetdicom SCP that takes 5 s to answer a C-ECHO."""
    ae = AE(ae_title="SLOW")
    ae.add_supported_context(Verification)
    release = threading.Event()

    def handle_echo(event: evt.Event) -> int:
        release.wait(5)
        return 0x0000

    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_ECHO, handle_echo)]
    )
    assert server is not None
    try:
        yield port
    finally:
        release.set()
        server.shutdown()


async def test_scu_gives_up_on_a_peer_that_does_not_answer(slow_scp: int) -> None:
    client = await Client.connect("127.0.0.1", slow_scp, called_ae_title="SLOW", dimse_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(AssociationError, match=r"no response within 0\.5 s"):
        async with client:
            await client.echo()
    assert time.monotonic() - started < 3


async def test_scp_aborts_a_silent_association_and_goes_on(tmp_path: Path) -> None:
    scp = StoreScp(
        ae_title="RELAY",
        output_dir=tmp_path / "out",
        quarantine_dir=tmp_path / "quarantine",
        idle_seconds=0.5,
    )
    port = free_port()
    async with anyio.create_task_group() as tg:
        tg.start_soon(scp.serve, "127.0.0.1", port)
        await anyio.sleep(0.2)
        async with await Client.connect("127.0.0.1", port, called_ae_title="RELAY") as silent:
            assert await silent.echo() == 0x0000
            await anyio.sleep(1.5)  # longer than the SCP waits
            with pytest.raises(AssociationError):
                await silent.echo()
        async with await Client.connect("127.0.0.1", port, called_ae_title="RELAY") as client:
            assert await client.echo() == 0x0000
        tg.cancel_scope.cancel()
