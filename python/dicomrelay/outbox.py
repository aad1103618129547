"""``Outbox``: a node's sending side. It queues studies in the ledger, claims
due transfers on leases (shared with any other worker of the same ledger),
schedules them by priority within each destination's limit, runs their
attempts, records acknowledgements a batch at a time, and retries with
backoff or makes dead letters. The decisions are pure functions
(``scheduler.plan``, ``scheduler.after_failure``) and the attempt's protocol a
sans-IO machine (``sender_control``); this module performs them."""

from __future__ import annotations

import heapq
import logging
import math
import os
import random
import socket
import time
from collections import defaultdict
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup, TaskStatus

from dicomrelay import pki
from dicomrelay._native import TlsConfig
from dicomrelay.claims import Leases, renew_interval
from dicomrelay.config import Limits, NodeConfig, Peer
from dicomrelay.connection import Connection
from dicomrelay.errors import ConfigurationError, DicomrelayError, TlsError
from dicomrelay.instance_store import STORED, InstanceStore
from dicomrelay.intake import OUTBOX, queue, queue_stored
from dicomrelay.ledger import Ledger, OutgoingInstance, OutgoingTransfer, TransferState
from dicomrelay.receipt import Receipt
from dicomrelay.scheduler import Candidate, after_failure, plan
from dicomrelay.sender import Attempt, AttemptFailed, greet, open_file
from dicomrelay.sources import Source
from dicomrelay.spool import SPOOL_NAME, SPOOLED, parse_locator, spool_folders
from dicomrelay.spool import remove as remove_spool
from dicomrelay.transfer import Event, EventKind, Transfer, failure_reason
from dicomrelay.wakeup import WakeSocket

log = logging.getLogger("dicomrelay.outbox")

# Transfers a node that is not one of several named workers claims at once: all
# that are due (the scheduler then applies each destination's limit).
CLAIM_ALL = 10_000


class Outbox:
    def __init__(
        self,
        config: NodeConfig,
        ledger: Ledger,
        client_tls: TlsConfig | None,
        *,
        observer: Callable[[Event], None] | None = None,
        share_work: bool = True,
        store: InstanceStore | None = None,
    ) -> None:
        """``store``: this node's, from which the instances its DICOM SCP
        received are sent on (``send_stored``).
        ``observer`` sees every event of every transfer (for metrics).
        ``share_work`` False: send only the transfers queued through this
        outbox (``dicomrelay send`` while no node serves its ledger), and
        hear no wake-ups."""
        self.config = config
        self.ledger = ledger
        self.store = store
        self._client_tls = client_tls
        self._observer = observer
        self._share = share_work
        self._tg: TaskGroup | None = None
        self._queued: dict[str, Candidate] = {}
        self._active: dict[str, int] = defaultdict(int)
        self._transfers: dict[str, Transfer] = {}
        self._wake = anyio.Event()
        self._acks: dict[str, list[int]] = defaultdict(list)
        self._acks_ready = anyio.Event()
        self._random = random.Random()
        self._wake_socket = WakeSocket(config.data_dir)  # bound while serving, if sharing work
        self._claim_now = anyio.Event()
        self._retries: list[float] = []  # heap: when transfers given back after failing are due
        self._delivered: dict[str, int] = {}  # instances acknowledged, by running attempt
        self._attempts: dict[str, anyio.CancelScope] = {}  # running, by transfer
        self._peer_codes = frozenset(p.code for p in config.peers)
        self._not_ours: set[str] = set()  # claimed, for a peer this worker does not know
        cfg = config
        worker = cfg.worker or f"{socket.gethostname()}:{cfg.data_dir}"
        # Several workers: each holds no more than it can send.
        budget = cfg.limits.transfers_per_peer * max(1, len(cfg.peers)) if cfg.worker else CLAIM_ALL
        self._leases = Leases(
            ledger,
            worker,
            lease_seconds=cfg.limits.lease_seconds,
            budget=budget,
            only=None if share_work else set(),
        )

    @property
    def in_flight(self) -> int:
        """Attempts running now, over every destination."""
        return sum(self._active.values())

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Claim, schedule and send until cancelled; started once ready to queue.

        Every node sends what it claims, on leases it renews while it works: a
        transfer queued by ``dicomrelay send`` beside a serving node, or left
        by a process that died mid-attempt, goes to the node that claims it.
        Without a worker name of its own, a node is the one worker of its data
        directory: it takes back at start whatever it held when it stopped (a
        restart resumes at once)."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if self._share:
                    await self.ledger.release_claims(self._leases.worker)
                    if self._wake_socket.open():
                        tg.start_soon(self._hear_wakeups, self._wake_socket)
                if self._share and self.config.worker is None:
                    for t in await self.ledger.unfinished_outgoing():  # their handles
                        self._transfers.setdefault(t.id, Transfer(t.id))
                tg.start_soon(self._share_work)
                tg.start_soon(self._schedule)
                tg.start_soon(self._record_acks)
                task_status.started()
        finally:
            self._wake_socket.close()
            with anyio.CancelScope(shield=True):
                await self._flush_acks()

    async def _hear_wakeups(self, wake: WakeSocket) -> None:
        """``dicomrelay send`` queued something: claim it now, not at the next poll."""
        while True:
            await wake.wait()
            self._claim_now.set()

    # Queueing.
    async def send(
        self, source: Source, *, to: str, priority: str = "routine", source_ae: str | None = None
    ) -> Transfer:
        """Queue a study for ``to``, if the policy allows it (PolicyRefused if
        not); the returned Transfer yields its receipt."""
        queued = await queue(
            self.config, self.ledger, source, to=to, priority=priority, source_ae=source_ae
        )
        transfer = queued.transfer
        handle = self._transfers[transfer.id] = Transfer(transfer.id, held=queued.held)
        self._publish(handle, Event(kind=EventKind.QUEUED, transfer_id=transfer.id))
        return self.take(transfer.id)

    async def send_stored(
        self,
        digests: list[str],
        *,
        to: str,
        priority: str = "routine",
        source_ae: str | None = None,
    ) -> Transfer:
        """Queue instances of one study held in this node's store for ``to``
        (``source_ae``: the calling AE title that stored it, for the policy)."""
        if self.store is None:
            raise DicomrelayError("this outbox was given no store to send from")
        transfer = await queue_stored(
            self.config,
            self.ledger,
            self.store,
            digests,
            to=to,
            priority=priority,
            source_ae=source_ae,
        )
        handle = self._transfers[transfer.id] = Transfer(transfer.id)
        self._publish(handle, Event(kind=EventKind.QUEUED, transfer_id=transfer.id))
        return self.take(transfer.id)

    async def _open_source(self, instance: OutgoingInstance) -> tuple[int, int]:
        """An instance's bytes: its file, its place in its transfer's spool,
        or its record in this node's store."""
        if instance.path.startswith(SPOOLED):
            path, offset = parse_locator(instance.path)
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC), offset
        if not instance.path.startswith(STORED):
            return await open_file(instance)
        if self.store is None:
            # Queued by a worker whose store this one does not hold.
            raise AttemptFailed(
                f"instance {instance.sop_instance_uid} is in another node's store",
                retriable=True,
            )
        fd, offset, _length = await self.store.open_record(instance.path[len(STORED) :])
        return fd, offset

    def take(self, transfer_id: str) -> Transfer:
        """A transfer in the ledger, sent here once claimed (at once, unless
        another worker holds it): one queued here, or one ``dicomrelay send``
        queued for a node that is not there to send it."""
        handle = self._transfers.setdefault(transfer_id, Transfer(transfer_id))
        if self._leases.only is not None:
            self._leases.only.add(transfer_id)
        self._claim_now.set()  # whichever worker claims it sends it
        return handle

    def transfer(self, transfer_id: str) -> Transfer:
        """The handle of a transfer sent or resumed here."""
        return self._transfers[transfer_id]

    def _publish(self, handle: Transfer, event: Event) -> None:
        handle.publish(event)
        if self._observer is not None:
            self._observer(event)

    # Scheduling.
    async def _schedule(self) -> None:
        assert self._tg is not None
        while True:
            now = time.time()
            decision = plan(
                self._queued.values(), self._active, self.config.limits.transfers_per_peer, now
            )
            for transfer_id in decision.start:
                c = self._queued.pop(transfer_id)
                self._active[c.destination] += 1
                self._tg.start_soon(self._attempt, c)
            self._wake = anyio.Event()
            delay = math.inf if decision.wake_at is None else max(0.0, decision.wake_at - now)
            with anyio.move_on_after(delay):
                await self._wake.wait()

    async def _share_work(self) -> None:
        """Keep this worker's leases, stop attempts whose lease another worker
        took over, claim due transfers into the queue, and finish the handles of
        transfers queued here that other workers completed."""
        try:
            await self._keep_claims(self._leases, self.config.limits)
        finally:
            # Stopping: what is claimed goes back at once (an attempt cut short
            # is queued again), rather than when its lease runs out.
            with anyio.CancelScope(shield=True):
                for transfer_id in sorted(self._leases.held):
                    await self._leases.release(transfer_id)

    async def _keep_claims(self, leases: Leases, limits: Limits) -> None:
        while True:
            now = time.time()
            for transfer_id in await leases.renew(now):
                self._queued.pop(transfer_id, None)
                scope = self._attempts.get(transfer_id)
                if scope is not None:
                    scope.cancel()
            for t in await leases.claim(now):
                if t.destination not in self._peer_codes:
                    # Queued by a worker configured with a peer this one lacks:
                    # given back for that worker, never dead-lettered here.
                    if t.id not in self._not_ours:
                        self._not_ours.add(t.id)
                        log.warning("transfer %s is for %s, not a peer here", t.id, t.destination)
                    await leases.release(t.id)
                    continue
                self._transfers.setdefault(t.id, Transfer(t.id))
                self._queued[t.id] = Candidate.of(t, next_attempt=now)  # before the scheduler
                self._wake.set()
            await self._finish_handles_done_elsewhere(leases)
            delay = renew_interval(limits.lease_seconds, limits.claim_poll_seconds)
            if self._retries:  # a transfer given back after failing falls due
                delay = min(delay, max(0.0, self._retries[0] - time.time()))
            with anyio.move_on_after(delay):
                await self._claim_now.wait()
            self._claim_now = anyio.Event()
            while self._retries and self._retries[0] <= time.time():
                heapq.heappop(self._retries)

    async def _finish_handles_done_elsewhere(self, leases: Leases) -> None:
        waiting = [
            transfer_id
            for transfer_id, handle in self._transfers.items()
            if not handle.done and transfer_id not in leases.held
        ]
        if not waiting:
            return
        for t in await self.ledger.finished_outgoing(waiting):
            handle = self._transfers[t.id]
            if handle.done:
                continue
            if t.state is TransferState.DONE and t.receipt is not None:
                self._publish(handle, Event(kind=EventKind.COMMITTED, transfer_id=t.id))
                handle.finish(Receipt.from_json(t.receipt))
            else:
                detail = t.last_error or "dead letter"
                self._publish(handle, Event(kind=EventKind.FAILED, transfer_id=t.id, detail=detail))
                handle.finish(None, detail)

    # Attempts.
    async def _attempt(self, candidate: Candidate) -> None:
        transfer_id = candidate.id
        handle = self._transfers.setdefault(transfer_id, Transfer(transfer_id))
        scope = self._attempts[transfer_id] = anyio.CancelScope()
        try:
            with scope:  # cancelled if another worker took the lease over
                await self._attempt_once(transfer_id, handle)
        finally:
            del self._attempts[transfer_id]
            self._active[candidate.destination] -= 1
            self._wake.set()
            with anyio.CancelScope(shield=True):
                await self._leases.release(transfer_id)
            self._claim_now.set()  # room for another claim

    async def _attempt_once(self, transfer_id: str, handle: Transfer) -> None:
        transfer = await self.ledger.outgoing(transfer_id)
        if transfer is None or transfer.state in (TransferState.DONE, TransferState.DEAD):
            return
        await self.ledger.set_outgoing_state(transfer_id, TransferState.ACTIVE)
        self._publish(handle, Event(kind=EventKind.STARTED, transfer_id=transfer_id))
        self._delivered[transfer_id] = 0
        pending = await self.ledger.pending_instances(transfer_id)
        spools = spool_folders([i.path for i in pending])
        spools.add(self.config.data_dir / OUTBOX / transfer_id)
        try:
            peer = self.config.peer(transfer.destination)
            receipt = await self._deliver(transfer, peer, pending)
        except (AttemptFailed, DicomrelayError, OSError, TimeoutError) as e:
            await self._failed(transfer, handle, e, progressed=self._delivered[transfer_id] > 0)
            return
        finally:
            del self._delivered[transfer_id]
        await self.ledger.set_outgoing_state(
            transfer_id, TransferState.DONE, receipt=receipt.to_json()
        )
        # What was made for this transfer alone (a de-identified copy) goes.
        for folder in spools:
            if (folder / SPOOL_NAME).exists():
                await anyio.to_thread.run_sync(remove_spool, folder)
        await self.ledger.audit(
            self.config.org,
            "sent",
            transfer_id,
            f"{transfer.total} instances of {transfer.study_instance_uid}"
            f" to {transfer.destination}",
        )
        self._publish(handle, Event(kind=EventKind.COMMITTED, transfer_id=transfer_id))
        handle.finish(receipt)

    async def _deliver(
        self, transfer: OutgoingTransfer, peer: Peer, instances: list[OutgoingInstance]
    ) -> Receipt:
        limits = self.config.limits
        with anyio.fail_after(limits.connect_timeout):
            conn = await Connection.connect(
                peer.host, peer.port, self._client_tls, pki.server_name(peer.code)
            )
        try:
            if self._client_tls is not None:
                _check_server(conn, peer)
            with anyio.fail_after(limits.connect_timeout):
                await greet(conn, self.config.org, peer.code, transfer.digest)
            handle = self._transfers[transfer.id]

            def acked(indexes: list[tuple[int, float]]) -> None:
                self._delivered[transfer.id] += len(indexes)
                self._acks[transfer.id].extend(i for i, _ in indexes)
                self._acks_ready.set()
                for i, latency in indexes:
                    self._publish(
                        handle,
                        Event(
                            kind=EventKind.VERIFIED,
                            transfer_id=transfer.id,
                            index=i,
                            latency=latency,
                        ),
                    )

            def sent(index: int) -> None:
                self._publish(
                    handle,
                    Event(kind=EventKind.INSTANCE_SENT, transfer_id=transfer.id, index=index),
                )

            attempt = Attempt(
                conn,
                transfer,
                instances,
                limits,
                on_acked=acked,
                on_sent=sent,
                open_source=self._open_source,
            )
            return await attempt.run()
        finally:
            await conn.aclose()

    async def _failed(
        self,
        transfer: OutgoingTransfer,
        handle: Transfer,
        error: BaseException,
        *,
        progressed: bool,
    ) -> None:
        limits = self.config.limits
        retriable = getattr(error, "retriable", not isinstance(error, ConfigurationError))
        outcome = after_failure(
            attempts=transfer.attempts,
            attempts_without_progress=transfer.attempts_without_progress,
            progressed=progressed,
            retriable=retriable,
            max_attempts=limits.max_attempts,
            now=time.time(),
            base=limits.backoff_base,
            cap=limits.backoff_cap,
            unit=self._random.random(),
        )
        message = failure_reason(error)
        await self.ledger.set_outgoing_state(
            transfer.id,
            outcome.state,
            attempts=outcome.attempts,
            attempts_without_progress=outcome.attempts_without_progress,
            next_attempt=outcome.next_attempt,
            error=message,
        )
        if outcome.state is TransferState.DEAD:
            await self.ledger.audit(self.config.org, "dead-letter", transfer.id, message)
            self._publish(
                handle, Event(kind=EventKind.FAILED, transfer_id=transfer.id, detail=message)
            )
            handle.finish(None, message)
            return
        self._publish(
            handle, Event(kind=EventKind.RETRYING, transfer_id=transfer.id, detail=message)
        )
        # Given back when the attempt ends: any worker (this one too) retries it when due.
        heapq.heappush(self._retries, outcome.next_attempt)

    # Acknowledgements.
    async def _record_acks(self) -> None:
        """Coalesce acknowledgements into one ledger transaction per batch."""
        while True:
            await self._acks_ready.wait()
            self._acks_ready = anyio.Event()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        pending, self._acks = self._acks, defaultdict(list)
        now = time.time()
        for transfer_id, indexes in pending.items():
            with anyio.CancelScope(shield=True):
                await self.ledger.mark_acked(transfer_id, indexes, now)


def _check_server(conn: Connection, peer: Peer) -> None:
    # rustls already checked the name; a peer pinned to its own CA must also match it.
    if conn.peer_org != peer.code:
        raise TlsError(f"server certificate names {conn.peer_org}, not {peer.code}")
    pki.require_issuer(conn.peer_certificate, peer.ca, peer.code)
