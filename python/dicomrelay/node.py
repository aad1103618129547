"""``Node``: one organisation's engine, wired once. It builds the ledger, the
blob store, the outbox (sending), the inbox (receiving) and, when configured,
the DICOM gateway and the DICOMweb server, and owns their lifetimes through
one exit stack; the parts talk through narrow interfaces and memory streams,
never through the node."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio

from dicomrelay._native import TlsConfig
from dicomrelay.config import NodeConfig
from dicomrelay.errors import ConfigurationError
from dicomrelay.gateway import DicomGateway, study_paths
from dicomrelay.inbox import Inbox
from dicomrelay.ledger import Ledger, open_ledger
from dicomrelay.outbox import Outbox
from dicomrelay.sources import Source
from dicomrelay.store import BlobStore
from dicomrelay.transfer import Event, Transfer


class Node:
    def __init__(
        self,
        config: NodeConfig,
        *,
        ledger: Ledger | None = None,
        observer: Callable[[Event], None] | None = None,
        share_work: bool = True,
    ) -> None:
        """``ledger``: one already open (the node closes it); by default the
        one ``config`` names. ``observer`` sees every event of every transfer
        (for metrics). ``share_work`` False: send only the transfers queued
        through this node (``dicomrelay send`` while no node serves its
        ledger), and hear no wake-ups."""
        self.config = config
        self._given_ledger = ledger
        self._observer = observer
        self._share_work = share_work
        self._stack = AsyncExitStack()
        self.port: int | None = None
        self.dicom_port: int | None = None
        self.web_port: int | None = None

    async def __aenter__(self) -> Self:
        try:
            await self._start(self._stack)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self, stack: AsyncExitStack) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = self._given_ledger or await open_ledger(
            cfg.ledger, data_dir=cfg.data_dir, schema=cfg.ledger_schema
        )
        stack.push_async_callback(self.ledger.close)
        self.store = BlobStore(cfg.data_dir / "store")
        client_tls, server_tls, key_pem = self._tls()
        self.outbox = Outbox(
            cfg, self.ledger, client_tls, observer=self._observer, share_work=self._share_work
        )
        dicom = cfg.dicom
        delivers = dicom is not None and dicom.deliver_to is not None
        self.inbox = Inbox(
            cfg, self.ledger, self.store, server_tls, key_pem, report_commits=delivers
        )
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)  # leaving: stop the parts, then wait for them
        await tg.start(self.inbox.run)
        self.port = self.inbox.port
        if dicom is not None:
            committed = self.inbox.committed if delivers else None
            gateway = DicomGateway(cfg, dicom, self.ledger, self.store, self.outbox, committed)
            await tg.start(gateway.run)
            self.dicom_port = gateway.port
        if cfg.web is not None:
            # Imported here: the web extra is needed only by nodes that serve DICOMweb.
            try:
                from dicomrelay.web.server import WebServer
            except ImportError as e:
                raise ConfigurationError(
                    f"[web] needs the web extra: pip install 'dicomrelay[web]' ({e})"
                ) from e

            web = WebServer(cfg, self.ledger, self.store)
            await tg.start(web.run)
            self.web_port = web.port
        await tg.start(self.outbox.run)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Stop: whatever was in flight resumes from the ledger next time."""
        return await self._stack.__aexit__(exc_type, exc, tb)

    def _tls(self) -> tuple[TlsConfig | None, TlsConfig | None, bytes | None]:
        """(client, server, organisation key): the client and server trust the
        organisation's CA and every CA pinned for a peer."""
        cfg = self.config
        if cfg.identity is None:
            return None, None, None
        ca, cert, key = cfg.identity.read()
        bundle = [ca]
        for peer in cfg.peers:
            if peer.ca is not None:
                bundle.append(peer.ca.read_bytes())
        trusted = b"\n".join(dict.fromkeys(bundle))
        if cfg.insecure_plaintext:
            return None, None, key
        return TlsConfig.client(trusted, cert, key), TlsConfig.server(trusted, cert, key), key

    # Sending (the outbox's).
    async def send(self, source: Source, *, to: str, priority: str = "routine") -> Transfer:
        """Queue a study for ``to``; the returned Transfer yields its receipt."""
        return await self.outbox.send(source, to=to, priority=priority)

    def take(self, transfer_id: str) -> Transfer:
        """A transfer in the ledger, sent by this node once it claims it."""
        return self.outbox.take(transfer_id)

    def transfer(self, transfer_id: str) -> Transfer:
        """The handle of a transfer this node sent or resumed."""
        return self.outbox.transfer(transfer_id)

    # Reading.
    async def status(self) -> dict[str, int]:
        counts = await self.ledger.counts()
        counts["in_flight"] = self.outbox.in_flight
        return counts

    async def study(self, study_instance_uid: str) -> list[tuple[str, Path]]:
        """A committed study in this node's store: (SOP Instance UID, blob path)."""
        return study_paths(self.store, await self.ledger.study(study_instance_uid))
