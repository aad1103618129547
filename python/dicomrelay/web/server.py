"""``WebServer``: the node's DICOMweb part. It serves the DICOMweb app with
uvicorn on the node's own event loop, inside the node's task group (no
thread, no process, no signal handlers of its own: the node's lifetime is
its lifetime), and keeps the ledger's attribute index up to date with what
reaches the store by other ways (studies committed from other
organisations), reading each new blob's header once.

With a certificate in ``[web]`` it serves HTTPS, and a caller may present a
certificate of its organisation issued by the node's CA (mutual TLS); the
organisation it proves reaches the app in the request's scope."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

import anyio
import anyio.to_thread
import uvicorn
from anyio.abc import TaskStatus
from uvicorn.protocols.http.h11_impl import H11Protocol

from dicomrelay._native import InstanceInfo, scan
from dicomrelay.config import NodeConfig
from dicomrelay.errors import DicomParseError, InstanceNotStored, StorageError
from dicomrelay.instance_store import InstanceStore
from dicomrelay.ledger import Ledger
from dicomrelay.ledger.archive import StoredAttributes
from dicomrelay.pki import org_code_of
from dicomrelay.web.app import PEER_ORG, DicomWebApp

log = logging.getLogger("dicomrelay.web")

INDEX_BATCH = 256
INDEX_IDLE_SECONDS = 1.0  # between looks for blobs not yet indexed, when there were none
CLOCK_MARGIN_SECONDS = 60.0  # how far back each look for unindexed blobs reaches
SHUTDOWN_SECONDS = 5.0  # responses still streaming when the node stops get this long


class _PeerAwareProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, telling the app which organisation the
    caller's certificate (verified in the handshake) names."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        org = org_code_of(der) if der else None
        if org is not None:
            app = self.app

            async def with_peer(scope: Any, receive: Any, send: Any) -> None:
                scope[PEER_ORG] = org
                await app(scope, receive, send)

            self.app = with_peer


class WebServer:
    def __init__(self, config: NodeConfig, ledger: Ledger, store: InstanceStore) -> None:
        assert config.web is not None
        self.config = config
        self.web = config.web
        self.ledger = ledger
        self.store = store
        self.app = DicomWebApp(config, ledger, store)
        self.port: int | None = None
        self._unreadable: set[str] = set()  # blobs the indexer could not read: not tried again
        self._indexed_until = 0.0  # the latest commit whose blobs are indexed

    def _uvicorn(self) -> uvicorn.Config:
        web = self.web
        tls: dict[str, Any] = {}
        if web.cert is not None and web.key is not None:
            tls = {"ssl_certfile": str(web.cert), "ssl_keyfile": str(web.key)}
            if self.config.identity is not None:
                tls |= {
                    "ssl_cert_reqs": ssl.CERT_OPTIONAL,
                    "ssl_ca_certs": str(self.config.identity.ca),
                }
        return uvicorn.Config(
            self.app.asgi,
            http=_PeerAwareProtocol,
            lifespan="off",
            log_config=None,  # the node's logging, as configured by whoever runs it
            access_log=False,  # every call is audited in the ledger instead
            proxy_headers=False,  # the address audited is the caller's own
            timeout_graceful_shutdown=int(SHUTDOWN_SECONDS),
            **tls,
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; started once listening."""
        config = self._uvicorn()
        config.load()
        sock = socket.create_server((self.web.host, self.web.port))
        self.port = sock.getsockname()[1]
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[sock])
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._index_forever)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                if server.started:
                    await server.shutdown(sockets=[sock])
                sock.close()

    # The index of what reaches the store by other ways.
    async def _index_forever(self) -> None:
        while True:
            if not await self.index_pending():
                await anyio.sleep(INDEX_IDLE_SECONDS)

    async def index_pending(self) -> int:
        """Record the attributes of stored blobs that lack them; how many.
        Each look starts a little before the latest commit already indexed
        (workers' clocks differ), never from the beginning again: the store
        may hold millions of rows."""
        since = self._indexed_until - CLOCK_MARGIN_SECONDS
        found = await self.ledger.unindexed(since, INDEX_BATCH + len(self._unreadable))
        digests = [d for d, _ in found if d not in self._unreadable][:INDEX_BATCH]
        if not digests:
            return 0
        read = await self._read_attributes(digests)
        if read:
            await self.ledger.add_attributes(read)
        self._indexed_until = max(self._indexed_until, max(c for d, c in found if d in digests))
        return len(read)

    async def _read_attributes(self, digests: list[str]) -> list[StoredAttributes]:
        out = []
        for digest in digests:
            try:
                data = await self.store.read_instance(digest)
                info: InstanceInfo = await anyio.to_thread.run_sync(scan, data)
            except (DicomParseError, StorageError, InstanceNotStored) as e:
                log.warning("cannot index stored instance %s: %s", digest, e)
                self._unreadable.add(digest)
                continue
            out.append(StoredAttributes.of(info, digest))
        return out
