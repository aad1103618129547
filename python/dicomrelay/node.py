"""``Node``: one organisation's engine, wired once. It builds the ledger, the
instance store (and its keeper: retention, compaction), the outbox (sending),
the inbox (receiving) and, when configured, the DICOM gateway and the DICOMweb
server, and owns their lifetimes through one exit stack; the parts talk
through narrow interfaces and memory streams, never through the node."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

import anyio

from dicomrelay._native import TlsConfig
from dicomrelay.blob_import import import_blobs
from dicomrelay.config import NodeConfig
from dicomrelay.errors import ConfigurationError, DicomrelayError
from dicomrelay.gateway import DicomGateway
from dicomrelay.inbox import Inbox
from dicomrelay.instance_store import InstanceStore
from dicomrelay.ledger import AfterCommit, Ledger, open_ledger
from dicomrelay.outbox import Outbox
from dicomrelay.reconciler import Reconciler
from dicomrelay.retention import StoreKeeper
from dicomrelay.sharing import DEFAULT_LIFETIME, SharedLink, revoke_share, share_study
from dicomrelay.sources import Source
from dicomrelay.store import PartialFiles
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
        self._store: InstanceStore | None = None
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
        client_tls, server_tls, key_pem = self._tls()
        dicom = cfg.dicom
        # Only a node that receives keeps a store (a sending-only node, such
        # as `dicomrelay send` alone, must not take the serving node's).
        # A DICOMweb face receives too (STOW-RS) and serves what is stored.
        receives = cfg.listen_port is not None or dicom is not None or cfg.web is not None
        if receives:
            root = cfg.data_dir / "store"
            self._store = await InstanceStore.open(
                root / "segments", self.ledger, segment_size=cfg.store.segment_mb << 20
            )
            stack.callback(self._store.close)
            await import_blobs(root / "blobs", self._store)  # kept by earlier releases
        self.outbox = Outbox(
            cfg,
            self.ledger,
            client_tls,
            observer=self._observer,
            share_work=self._share_work,
            store=self._store,
        )
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)  # leaving: stop the parts, then wait for them
        if self._store is not None:
            delivers = dicom is not None and dicom.deliver_to is not None
            reconciles = Reconciler.needed(cfg)

            def after_commit(sender: str) -> AfterCommit | None:
                if reconciles and Reconciler.reconciles(cfg, sender):
                    return "reconcile"
                return "deliver" if delivers else None

            self.inbox = Inbox(
                cfg,
                self.ledger,
                self._store,
                PartialFiles(cfg.data_dir / "store"),
                server_tls,
                key_pem,
                report_commits=delivers or reconciles,
                after_commit=after_commit,
            )
            await tg.start(self.inbox.run)
            self.port = self.inbox.port
            released = self.inbox.committed
            if reconciles:
                # Between the inbox and the PACS: a study is delivered once reconciled.
                reconciler = Reconciler(
                    cfg, self.ledger, self._store, self.inbox.committed, release=delivers
                )
                await tg.start(reconciler.run)
                released = reconciler.released
            if dicom is not None:
                committed = released if delivers else None
                gateway = DicomGateway(cfg, dicom, self.ledger, self._store, self.outbox, committed)
                await tg.start(gateway.run)
                self.dicom_port = gateway.port
            tg.start_soon(StoreKeeper(self._store, cfg.store).run)
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

    @property
    def store(self) -> InstanceStore:
        """The store of what this node received (a node that listens nowhere
        and has no DICOM face keeps none)."""
        if self._store is None:
            raise DicomrelayError("this node receives nothing: it keeps no store")
        return self._store

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
        """Queue a study for ``to`` (PolicyRefused, nothing queued, if the
        node's rules do not allow it); the returned Transfer yields its receipt."""
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

    async def study(self, study_instance_uid: str) -> list[tuple[str, str]]:
        """A committed study in this node's store: (SOP Instance UID, digest);
        ``node.store.open_instance(digest)`` reads one."""
        return [(uid, digest) for uid, digest, _ in await self.ledger.study(study_instance_uid)]

    # Patient links (``dicomrelay.sharing``).
    async def share(
        self, study_instance_uid: str, *, lifetime: float = DEFAULT_LIFETIME, pin: bool = False
    ) -> SharedLink:
        """A link for a person to one study in the store, made with ``[web]
        base_url`` (else the address this node's web server listens on):
        ``link.url``, and ``link.pin`` (when asked) to send another way."""
        return await share_study(
            self.ledger,
            self.config,
            study_instance_uid,
            lifetime=lifetime,
            pin=pin,
            served_port=self.web_port,
        )

    async def revoke_share(self, token_or_id: str) -> bool:
        """Revoke a link (its id, token or URL) at once; false if none was active."""
        return await revoke_share(self.ledger, token_or_id, by=self.config.org)
