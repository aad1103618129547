"""``Inbox``: a node's receiving side. It listens for other organisations'
nodes, stores what they send through the group committer (rounds of the
instance store), and reports each
study it commits on a memory stream (``committed``), for whoever delivers
studies onwards."""

from __future__ import annotations

import math
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from dicomrelay import sockets
from dicomrelay._native import TlsConfig
from dicomrelay.config import NodeConfig
from dicomrelay.instance_store import InstanceStore
from dicomrelay.ledger import AfterCommit, Ledger
from dicomrelay.receiver import Committer, Receiver, discard_stored_partials
from dicomrelay.receiver_control import StudyCommitted
from dicomrelay.store import PartialFiles


class Inbox:
    def __init__(
        self,
        config: NodeConfig,
        ledger: Ledger,
        store: InstanceStore,
        partials: PartialFiles,
        server_tls: TlsConfig | None,
        key_pem: bytes | None,
        *,
        report_commits: bool = False,
        after_commit: Callable[[str], AfterCommit | None] | None = None,
    ) -> None:
        """``report_commits``: put each committed study (``StudyCommitted``) on
        ``committed`` (unbounded: a commit never waits for a delivery; studies
        are few)."""
        self.config = config
        self._ledger = ledger
        self._partials = partials
        self.committer = Committer(store, config.limits.round_bytes)
        send, receive = anyio.create_memory_object_stream[StudyCommitted](math.inf)
        self.committed: MemoryObjectReceiveStream[StudyCommitted] = receive
        self._receiver = Receiver(
            config,
            ledger,
            store,
            partials,
            self.committer,
            server_tls,
            key_pem,
            on_committed=send.send_nowait if report_commits else None,
            after_commit=after_commit,
        )
        self._commits = send
        self.port: int | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Commit, and serve the wire port if the node listens, until cancelled;
        started once listening."""
        cfg = self.config
        try:
            await discard_stored_partials(self._ledger, self._partials)
            # Bound before any task starts: a busy port is the one error raised.
            listener = None
            if cfg.listen_port is not None:
                listener = await sockets.Listener.bind(cfg.listen_host, cfg.listen_port)
                self.port = listener.port
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.committer.run)
                if listener is not None:
                    tg.start_soon(listener.serve, self._receiver.handle)
                task_status.started()
        finally:
            self._commits.close()
