"""``Node``: one organisation's engine. An async context manager that owns the
ledger, the blob store, the listener, the group committer and the scheduler,
all inside one task group."""

from __future__ import annotations

import heapq
import logging
import math
import random
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
import anyio.to_thread
from anyio.abc import SocketAttribute, TaskGroup

from dicomrelay import pki, sockets
from dicomrelay._native import TlsConfig
from dicomrelay.claims import Leases, renew_interval
from dicomrelay.config import DicomConfig, Limits, NodeConfig, Peer
from dicomrelay.connection import Connection
from dicomrelay.dicom import tls
from dicomrelay.dicom.scp import Refusal, StoredInstance, StoreScp
from dicomrelay.errors import ConfigurationError, DicomrelayError, TlsError
from dicomrelay.intake import adopt, queue_study
from dicomrelay.ledger import Ledger, OutgoingTransfer, TransferState, open_ledger
from dicomrelay.pacs_delivery import deliver_files
from dicomrelay.receipt import Receipt
from dicomrelay.receiver import Committer, Receiver
from dicomrelay.scheduler import Candidate, after_failure, plan
from dicomrelay.sender import Attempt, AttemptFailed, greet
from dicomrelay.sources import Source
from dicomrelay.store import BlobStore
from dicomrelay.transfer import Event, EventKind, Transfer
from dicomrelay.wakeup import WakeSocket

log = logging.getLogger("dicomrelay.node")

# Transfers a node that is not one of several named workers claims at once: all
# that are due (the scheduler then applies each destination's limit).
CLAIM_ALL = 10_000


class Node:
    def __init__(
        self,
        config: NodeConfig,
        *,
        ledger: Ledger | None = None,
        observer: Callable[[Event], None] | None = None,
        share_work: bool = True,
    ) -> None:
        """``observer``, if given, sees every event of every transfer (for metrics).
        ``share_work`` False: send only the transfers queued through this node
        (``dicomrelay send`` while no node serves its ledger), and hear no wake-ups."""
        self.config = config
        self._share = share_work
        self._observer = observer
        self._ledger = ledger
        self._tg: TaskGroup | None = None
        self._queued: dict[str, Candidate] = {}
        self._active: dict[str, int] = defaultdict(int)
        self._transfers: dict[str, Transfer] = {}
        self._wake = anyio.Event()
        self._acks: dict[str, list[int]] = defaultdict(list)
        self._acks_ready = anyio.Event()
        self._random = random.Random()
        self._deliveries: dict[str, anyio.Lock] = {}  # a lock per study being delivered
        self._leases: Leases | None = None  # this node's claims on the ledger's transfers
        self._wake_socket = WakeSocket(config.data_dir)  # bound while serving, if sharing work
        self._claim_now = anyio.Event()
        self._retries: list[float] = []  # heap: when transfers given back after failing are due
        self._delivered: dict[str, int] = {}  # instances acknowledged, by running attempt
        self._attempts: dict[str, anyio.CancelScope] = {}  # running, by transfer
        self._peer_codes = frozenset(p.code for p in config.peers)
        self._not_ours: set[str] = set()  # claimed, for a peer this worker does not know
        dicom_tls = config.dicom.tls if config.dicom is not None else None
        self._pacs_tls = (
            None
            if dicom_tls is None
            else tls.client_context(
                certificate=dicom_tls.certificate,
                private_key=dicom_tls.private_key,
                trusted_cas=dicom_tls.trusted_cas,
            )
        )
        self.port: int | None = None
        self.dicom_port: int | None = None

    # Life cycle.
    async def __aenter__(self) -> Self:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.ledger: Ledger = self._ledger or await open_ledger(
            cfg.ledger, data_dir=cfg.data_dir, schema=cfg.ledger_schema
        )
        try:
            await self._start()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.ledger.close()
            raise
        return self

    async def _start(self) -> None:
        cfg = self.config
        self.store = BlobStore(cfg.data_dir / "store")
        self.outbox = cfg.data_dir / "outbox"  # in-memory instances, written before sending
        self.outbox.mkdir(exist_ok=True)
        self._client_tls, server_tls, key_pem = self._tls()
        self._committer = Committer(self.ledger, self.store)
        receiver = Receiver(
            cfg,
            self.ledger,
            self.store,
            self._committer,
            server_tls,
            key_pem,
            on_committed=self._committed,
        )
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            self._tg.start_soon(self._committer.run)
            if cfg.listen_port is not None:
                listener = await sockets.Listener.bind(cfg.listen_host, cfg.listen_port)
                self.port = listener.port
                self._tg.start_soon(listener.serve, receiver.handle)
            if cfg.dicom is not None and cfg.dicom.listen_port is not None:
                await self._start_dicom(cfg.dicom)
            if cfg.dicom is not None and cfg.dicom.deliver_to is not None:
                for study, requested in await self.ledger.pending_deliveries():
                    self._tg.start_soon(self._deliver_to_pacs, study, requested, cfg.dicom)
            await self._start_claiming()
            self._tg.start_soon(self._schedule)
            self._tg.start_soon(self._record_acks)
        except BaseException:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._committer.close()
            self._wake_socket.close()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Stop: whatever was in flight resumes from the ledger next time."""
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._committer.close()
            self._wake_socket.close()
            await self._flush_acks()
            await self.ledger.close()

    def _tls(self) -> tuple[TlsConfig | None, TlsConfig | None, bytes | None]:
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

    async def _start_claiming(self) -> None:
        """Every node sends what it claims, on leases it renews while it works: a
        transfer queued by ``dicomrelay send`` beside a serving node, or left
        by a process that died mid-attempt, goes to the node that claims it.
        Without a worker name of its own, a node is the one worker of its data
        directory: it claims everything due, and takes back at start whatever
        it held when it stopped (a restart resumes at once)."""
        assert self._tg is not None
        cfg = self.config
        worker = cfg.worker or f"{socket.gethostname()}:{cfg.data_dir}"
        # Several workers: each holds no more than it can send.
        budget = cfg.limits.transfers_per_peer * max(1, len(cfg.peers)) if cfg.worker else CLAIM_ALL
        only = None if self._share else set[str]()
        self._leases = Leases(
            self.ledger, worker, lease_seconds=cfg.limits.lease_seconds, budget=budget, only=only
        )
        if self._share:
            await self.ledger.release_claims(worker)
            if self._wake_socket.open():
                self._tg.start_soon(self._hear_wakeups, self._wake_socket)
        if self._share and cfg.worker is None:
            for t in await self.ledger.unfinished_outgoing():  # its handles: node.transfer(id)
                self._transfers.setdefault(t.id, Transfer(t.id))
        self._tg.start_soon(self._share_work, self._leases)

    async def _hear_wakeups(self, wake: WakeSocket) -> None:
        """``dicomrelay send`` queued something: claim it now, not at the next poll."""
        while True:
            await wake.wait()
            self._claim_now.set()

    # Sending.
    async def send(self, source: Source, *, to: str, priority: str = "routine") -> Transfer:
        """Queue a study for ``to``; the returned Transfer yields its receipt."""
        transfer = await queue_study(self.config, self.ledger, source, to=to, priority=priority)
        handle = self._transfers[transfer.id] = Transfer(transfer.id)
        self._publish(handle, Event(kind=EventKind.QUEUED, transfer_id=transfer.id))
        return self.take(transfer.id)

    def take(self, transfer_id: str) -> Transfer:
        """A transfer in the ledger, sent by this node once it claims it (at
        once, unless another worker holds it): one this node queued, or one
        ``dicomrelay send`` queued for a node that is not there to send it."""
        assert self._leases is not None
        handle = self._transfers.setdefault(transfer_id, Transfer(transfer_id))
        if self._leases.only is not None:
            self._leases.only.add(transfer_id)
        self._claim_now.set()  # whichever worker claims it sends it
        return handle

    def _publish(self, handle: Transfer, event: Event) -> None:
        handle.publish(event)
        if self._observer is not None:
            self._observer(event)

    def transfer(self, transfer_id: str) -> Transfer:
        """The handle of a transfer this node sent or resumed."""
        return self._transfers[transfer_id]

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

    async def _share_work(self, leases: Leases) -> None:
        """Keep this worker's leases, stop attempts whose lease another worker
        took over, claim due transfers into the queue, and finish the handles of
        transfers queued here that other workers completed."""
        limits = self.config.limits
        try:
            await self._keep_claims(leases, limits)
        finally:
            # Stopping: what is claimed goes back at once (an attempt cut short
            # is queued again), rather than when its lease runs out.
            with anyio.CancelScope(shield=True):
                for transfer_id in sorted(leases.held):
                    await leases.release(transfer_id)

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
            assert self._leases is not None
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
        try:
            receipt = await self._deliver(transfer, self.config.peer(transfer.destination))
        except (AttemptFailed, DicomrelayError, OSError, TimeoutError) as e:
            await self._failed(transfer, handle, e, progressed=self._delivered[transfer_id] > 0)
            return
        finally:
            del self._delivered[transfer_id]
        await self.ledger.set_outgoing_state(
            transfer_id, TransferState.DONE, receipt=receipt.to_json()
        )
        await self.ledger.audit(
            self.config.org,
            "sent",
            transfer_id,
            f"{transfer.total} instances of {transfer.study_instance_uid}"
            f" to {transfer.destination}",
        )
        self._publish(handle, Event(kind=EventKind.COMMITTED, transfer_id=transfer_id))
        handle.finish(receipt)

    async def _deliver(self, transfer: OutgoingTransfer, peer: Peer) -> Receipt:
        limits = self.config.limits
        instances = await self.ledger.pending_instances(transfer.id)
        with anyio.fail_after(limits.connect_timeout):
            conn = await Connection.connect(
                peer.host, peer.port, self._client_tls, pki.server_name(peer.code)
            )
        try:
            if self._client_tls is not None:
                self._check_server(conn, peer)
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

            attempt = Attempt(conn, transfer, instances, limits, on_acked=acked, on_sent=sent)
            return await attempt.run()
        finally:
            await conn.aclose()

    def _check_server(self, conn: Connection, peer: Peer) -> None:
        # rustls already checked the name; a peer pinned to its own CA must also match it.
        if conn.peer_org != peer.code:
            raise TlsError(f"server certificate names {conn.peer_org}, not {peer.code}")
        pki.require_issuer(conn.peer_certificate, peer.ca, peer.code)

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
        message = f"{type(error).__name__}: {error}"
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

    # DICOM: studies in from the local PACS, out to other organisations; and
    # committed studies delivered into the local PACS.
    async def _start_dicom(self, dicom: DicomConfig) -> None:
        assert self._tg is not None
        root = self.config.data_dir / "dicom"
        scp = StoreScp(
            ae_title=dicom.ae_title,
            output_dir=root / "received",
            quarantine_dir=root / "quarantine",
            allowed_calling=frozenset(dicom.allowed_calling),
            # The PACS addresses the node by its configured AE title; a
            # caller addressing another has been misconfigured.
            require_called_ae_title=True,
            on_association_end=self._route_received,
            on_refusal=self._audit_refusal,
            digest=None,  # routing digests each instance as it records it in the ledger
            tls=None
            if dicom.tls is None
            else tls.server_context(
                certificate=dicom.tls.certificate,
                private_key=dicom.tls.private_key,
                trusted_cas=dicom.tls.trusted_cas,
                require_peer_certificate=dicom.tls.require_client_certificate,
            ),
        )
        try:
            listener = await sockets.tcp_listener(dicom.listen_host, dicom.listen_port or 0)
        except BaseException:
            scp.close()
            raise
        self.dicom_port = listener.extra(SocketAttribute.local_port)
        self._tg.start_soon(scp.serve_on, listener)  # closes the listener and the SCP

    async def _audit_refusal(self, refused: Refusal) -> None:
        """Every DICOM caller turned away is audited, as every wire peer is."""
        who = f"{refused.calling_ae_title or '?'} at {refused.peer}"
        if refused.what == "tls":
            who = refused.peer
        elif refused.what == "dataset":
            who = f"{refused.sop_instance_uid} from {who}"
        await self.ledger.audit(
            self.config.org, f"dicom-{refused.what}-refused", None, f"{who}: {refused.reason}"
        )

    async def _route_received(self, stored: list[StoredInstance]) -> None:
        """Send each study an association stored to the organisation its route names."""
        dicom = self.config.dicom
        assert dicom is not None
        studies: dict[str, list[StoredInstance]] = defaultdict(list)
        for s in stored:
            studies[s.info.study_instance_uid or ""].append(s)
        for study, instances in studies.items():
            first = instances[0]
            to = dicom.route(
                calling=first.calling_ae_title,
                called=first.called_ae_title,
                modality=first.info.modality,
            )
            detail = f"{len(instances)} instances of {study} from {first.calling_ae_title}"
            if to is None:
                await self.ledger.audit(self.config.org, "unrouted", None, detail)
                continue
            try:
                # Content-addressed copies: a later store of the same SOP Instance
                # UID replaces the received file, not what this transfer sends.
                paths = [s.path for s in instances]
                blobs = await anyio.to_thread.run_sync(adopt, self.store, paths, self.config.digest)
                transfer = await self.send([str(b) for b in blobs], to=to)
            except (DicomrelayError, OSError, ValueError) as e:
                await self.ledger.audit(self.config.org, "route-failed", None, f"{detail}: {e}")
                continue
            await self.ledger.audit(self.config.org, "routed", transfer.id, f"{detail} to {to}")

    def _committed(self, study_instance_uid: str) -> None:
        dicom = self.config.dicom
        if dicom is not None and dicom.deliver_to is not None and self._tg is not None:
            self._tg.start_soon(self._queue_delivery, study_instance_uid, dicom)

    async def _queue_delivery(self, study: str, dicom: DicomConfig) -> None:
        requested = await self.ledger.add_delivery(study)  # survives a restart until done
        await self._deliver_to_pacs(study, requested, dicom)

    async def _deliver_to_pacs(self, study: str, requested: float, dicom: DicomConfig) -> None:
        """C-STORE a committed study into the local PACS, retrying with backoff;
        the ledger says which deliveries a restarted node must pick up again.
        Deliveries of one study go one after another, each of what the study
        holds when it starts, so the PACS ends with the latest versions."""
        lock = self._deliveries.setdefault(study, anyio.Lock())
        try:
            async with lock:
                await self._deliver_study(study, requested, dicom)
        finally:
            if not lock.statistics().tasks_waiting and not lock.locked():
                self._deliveries.pop(study, None)

    async def _deliver_study(self, study: str, requested: float, dicom: DicomConfig) -> None:
        pacs = dicom.deliver_to
        assert pacs is not None
        paths = [str(path) for _uid, path in await self.study(study)]
        error = await deliver_files(
            paths, dicom, tls=self._pacs_tls, limits=self.config.limits, rng=self._random
        )
        delivered = not error
        await self.ledger.finish_delivery(
            study, requested=requested, delivered=delivered, error=error
        )
        if delivered:
            detail = f"{len(paths)} instances of {study} to {pacs.ae_title}"
            await self.ledger.audit(self.config.org, "delivered", None, detail)
        else:
            detail = f"{study} to {pacs.ae_title}: {error}"
            await self.ledger.audit(self.config.org, "delivery-dead", None, detail)

    # Reading.
    async def status(self) -> dict[str, int]:
        counts = await self.ledger.counts()
        counts["in_flight"] = sum(self._active.values())
        return counts

    async def study(self, study_instance_uid: str) -> list[tuple[str, Path]]:
        """A committed study in this node's store: (SOP Instance UID, blob path)."""
        rows = await self.ledger.study(study_instance_uid)
        return [(uid, self.store.path_of(digest)) for uid, digest, _size in rows]
