"""The receiving side of the wire protocol: one task per connection, one shared
group committer.

``ReceiverControl`` (receiver_control) makes every decision of a connection;
the session here only performs its effects: frames out, ledger and store calls,
and the committer's answers fed back. Python never copies chunk bytes.

An instance is acknowledged only after its record is appended to the segment
store and fdatasynced, and its location and row are committed to the ledger
with the store's durable end; the committer does this in rounds across every
connection.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import anyio
import anyio.to_thread

from dicomrelay import pki
from dicomrelay._native import Hasher, Payload, TlsConfig
from dicomrelay.arrival import ArrivalPlanner, TransferPlan, read_values, rewritten
from dicomrelay.config import DigestName, NodeConfig
from dicomrelay.connection import Connection
from dicomrelay.errors import DicomrelayError, StorageError, TlsError, first_failure
from dicomrelay.inbound import InboundRules
from dicomrelay.instance_store import InstanceStore, OnTheWay, Record
from dicomrelay.ledger import AfterCommit, IncomingInstance, Ledger
from dicomrelay.policy import Decision
from dicomrelay.protocol import Kind, Offer
from dicomrelay.receipt import Receipt
from dicomrelay.receiver_control import (
    AppendChunk,
    Audit,
    CheckPeer,
    Close,
    CommitTransfer,
    DiscardPartial,
    Effect,
    Held,
    LookUpCommit,
    LookUpHeld,
    PublishPartial,
    ReceiverControl,
    RecordCheckpoint,
    RecordHeld,
    Refused,
    ResumePartial,
    SendFrame,
    StudyCommitted,
    WriteInstance,
    claimed,
)
from dicomrelay.store import PartialFiles

log = logging.getLogger("dicomrelay.receiver")

_ORG_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")  # an organisation code: nothing to escape


def _address(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


@dataclass(slots=True)
class Stored:
    """An instance on its way to durable: record, then ledger row, then acknowledgement."""

    sender: str
    transfer_id: str
    instance: IncomingInstance
    algorithm: DigestName
    acknowledge: Callable[[int, float, BaseException | None], None]
    slot: int
    rewrite: OnTheWay | None = None  # reconciled as it arrives: stored rewritten


class Committer:
    """Group commit across every connection, by rounds of the instance store.

    Instances written while a round is under way wait for the next: each round
    appends them, makes them durable with one fdatasync per segment touched,
    and records their locations, their rows and the store's durable end in one
    ledger transaction; then their acknowledgements go out (or, if any step
    failed, every one of the round's failures). A round takes at most
    ``round_bytes`` (one instance alone may pass): acknowledgements then flow
    while the senders' windows still hold data for the next round, so the
    network and the disk work side by side rather than by turns; and the
    next round appends while this one's rows go into the ledger (the store
    keeps them in order).
    """

    def __init__(self, store: InstanceStore, round_bytes: int) -> None:
        self.store = store
        self.round_bytes = round_bytes
        self._ready: list[tuple[Stored, Record, Callable[[], None] | None]] = []
        self._wake = anyio.Event()

    def write(
        self,
        item: Stored,
        data: Payload | bytes | Path,
        after: Callable[[], None] | None = None,
    ) -> None:
        """Make ``data`` durable as the record of ``item``, record and acknowledge
        it; ``after`` runs (on a worker thread) once the round has succeeded."""
        record = Record(data, item.instance.digest, item.algorithm, item.rewrite)
        self._ready.append((item, record, after))
        self._wake.set()

    async def run(self) -> None:
        async with anyio.create_task_group() as rounds:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                batch = self._take_round()
                if self._ready:
                    self._wake.set()
                # The next round appends once this one has, while this one's
                # rows go into the ledger.
                appended = anyio.Event()
                rounds.start_soon(self._round, batch, appended.set)
                await appended.wait()

    def _take_round(self) -> list[tuple[Stored, Record, Callable[[], None] | None]]:
        taken, size = 0, 0
        for item, _, _ in self._ready:
            if taken and size + item.instance.size > self.round_bytes:
                break
            taken += 1
            size += item.instance.size
        batch, self._ready = self._ready[:taken], self._ready[taken:]
        return batch

    async def _round(
        self,
        batch: list[tuple[Stored, Record, Callable[[], None] | None]],
        appended: Callable[[], None],
    ) -> None:
        failure: BaseException | None = None
        try:
            await self.store.write_round(
                [record for _, record, _ in batch],
                [(item.sender, item.transfer_id, item.instance) for item, _, _ in batch],
                appended=appended,
            )
        except (OSError, DicomrelayError) as e:
            log.error("a storage round failed: %s", e)
            failure = e
        # A large instance's partial file goes once its record is durable; kept
        # if the round failed (a later attempt resumes it from its checkpoint).
        afters = [after for _, _, after in batch if after is not None]
        if afters and failure is None:
            await anyio.to_thread.run_sync(lambda: [after() for after in afters])
        for item, _, _ in batch:
            item.acknowledge(item.slot, item.instance.stored, failure)


async def discard_stored_partials(ledger: Ledger, partials: PartialFiles) -> int:
    """Partial files of large instances already in the store (a crash came
    between their round and their removal): removed; how many."""
    removed = 0
    for key in await anyio.to_thread.run_sync(partials.keys):
        sender, transfer_id, index = partial_key_parts(key)
        if index is None:
            continue
        if index in await ledger.received(sender, transfer_id):
            await anyio.to_thread.run_sync(partials.discard_partial, key)
            removed += 1
    return removed


def partial_key_parts(key: str) -> tuple[str, str, int | None]:
    """(sender, transfer id, index) of a partial file's key (see ReceiverControl)."""
    parts = key.rsplit("-", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        return "", "", None
    return parts[0], parts[1], int(parts[2])


class Receiver:
    """Accepts connections from known peers and stores what they send."""

    def __init__(
        self,
        config: NodeConfig,
        ledger: Ledger,
        store: InstanceStore,
        partials: PartialFiles,
        committer: Committer,
        tls: TlsConfig | None,
        key_pem: bytes | None,
        *,
        on_committed: Callable[[StudyCommitted], None] | None = None,
        after_commit: Callable[[str], AfterCommit | None] | None = None,
    ) -> None:
        """``on_committed`` hears of each study committed (for delivery onwards);
        ``after_commit`` says, for a sender, what its commits owe next (recorded
        with the commit)."""
        self.config = config
        self.on_committed = on_committed
        self.after_commit = after_commit
        self.ledger = ledger
        self.store = store
        self.partials = partials
        self.committer = committer
        self.tls = tls
        self.key_pem = key_pem
        self._write_limit = anyio.CapacityLimiter(8)
        self.inbound = InboundRules.of(config.policy)  # None: no receive rules
        self.arrival = ArrivalPlanner.of(config, ledger)  # None: nothing reconciled

    async def handle(self, sock: socket.socket) -> None:
        """Serve one accepted connection until it closes; never raises."""
        conn: Connection | None = None
        address = _address(sock)
        try:
            timeout = self.config.limits.connect_timeout
            try:
                with anyio.fail_after(timeout):
                    conn = await Connection.open(sock, self.tls)
            except TlsError as e:
                await self._audit_handshake(address, str(e))
                raise
            except TimeoutError:
                await self._audit_handshake(address, f"no TLS handshake within {timeout:g} s")
                raise
            await _Session(self, conn, address).run()
        except Refused as e:
            log.warning("refused connection: %s", e)
        except (ConnectionResetError, DicomrelayError, OSError, TimeoutError) as e:
            log.info("connection ended: %s", e)
        except Exception:
            # A defect met on one connection must not take the listener down.
            log.exception("connection failed")
        finally:
            if conn is not None:
                await conn.aclose()

    async def _audit_handshake(self, address: str, reason: str) -> None:
        """A failed handshake on the wire port: nobody proven, so the row is this
        node's, with the caller's address."""
        await self.ledger.audit(self.config.org, "tls-refused", None, f"{address}: {reason}")

    def proven_org(self, conn: Connection, name: str) -> str:
        """Who is on the other end, for the audit: the organisation the peer's
        certificate proves; without TLS, the name it claimed (escaped, cut
        short); "?" for a certificate that names none."""
        if self.tls is None:
            return name.upper() if _ORG_CODE.fullmatch(name) else claimed(name)
        return conn.peer_org or "?"

    def check_peer(self, conn: Connection, name: str) -> str:
        """The organisation on the other end, or Refused."""
        if self.tls is None:
            org = name.upper()
        else:
            if conn.peer_org is None or conn.peer_certificate is None:
                raise Refused("certificate names no organisation")
            org = conn.peer_org
        try:
            peer = self.config.peer(org)
        except DicomrelayError:
            raise Refused(f"unknown organisation {claimed(org)}") from None
        if self.tls is not None:
            try:
                pki.require_issuer(conn.peer_certificate, peer.ca, org)
            except TlsError as e:
                raise Refused(str(e)) from e
        return org


class _Session:
    """One connection on the receiving side: the async driver of a
    ``ReceiverControl``, which decides every step. Frames are fed in order, each
    one's effects performed (and its questions answered) before the next."""

    def __init__(self, receiver: Receiver, conn: Connection, address: str) -> None:
        self.r = receiver
        self.conn = conn
        self.control = ReceiverControl(
            org=receiver.config.org,
            address=address,
            write_buffer_bytes=receiver.config.limits.write_buffer_bytes,
        )
        self.algorithms: dict[str, DigestName] = {}  # each offered transfer's digest
        self.priorities: dict[str, str] = {}  # and priority
        self.studies: dict[str, str] = {}  # and study
        self.plans: dict[str, TransferPlan | None] = {}  # reconciled as they arrive
        self.judged: set[str] = set()  # transfers whose allowing was audited
        self.durable: list[tuple[int, float]] = []  # from the committer, not yet answered
        self.failures: list[tuple[int, BaseException]] = []
        self.stored = anyio.Event()
        self.room = anyio.Event()

    async def run(self) -> None:
        """Raises the session's first failure itself, not wrapped in a group."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._answer_storage)
                try:
                    await self._serve()
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise first_failure(group) from None

    async def _serve(self) -> None:
        control = self.control
        async for frames in self.conn.frames():
            now = time.time()
            for frame in frames:
                if frame.kind is Kind.CHUNK:
                    assert frame.data is not None
                    effects = control.chunk(
                        frame.stream, frame.offset, frame.data, frame.digest_ok, frame.digest, now
                    )
                else:
                    effects = control.receive(frame.kind, frame.payload)
                if effects:
                    await self._perform(effects)
                    continue
                # Backpressure: read nothing more while too many bytes wait to become durable.
                while control.waiting_for_room:
                    self.room = anyio.Event()
                    await self.room.wait()

    async def _perform(self, effects: list[Effect]) -> None:
        """Each effect in order; a question's answer's effects before the next."""
        for effect in effects:
            if isinstance(effect, WriteInstance):
                way = None
                if self.r.inbound is not None:
                    decision = await self._judge(effect.transfer_id, effect.data)
                    way = await self._on_the_way(
                        effect.transfer_id, effect.instance, effect.data, decision
                    )
                stored = self._stored(effect.slot, effect.transfer_id, effect.instance, way)
                self.r.committer.write(stored, effect.data)
            elif isinstance(effect, SendFrame):
                await self.conn.send(effect.kind, effect.payload)
            elif isinstance(effect, AppendChunk):
                await self._append(effect)
            elif isinstance(effect, Close):
                raise effect.error
            else:
                await self._perform_rarely(effect)

    async def _perform_rarely(self, effect: Effect) -> None:
        """The effects met once per offer, commit, connection or large instance."""
        control, ledger, sender = self.control, self.r.ledger, self.control.sender
        if isinstance(effect, LookUpHeld):
            self.algorithms[effect.offer.transfer_id] = cast(DigestName, effect.offer.digest)
            self.priorities[effect.offer.transfer_id] = effect.offer.priority
            self.studies[effect.offer.transfer_id] = effect.offer.study_instance_uid
            await self._perform(control.held(await self._held(effect.offer), time.time()))
        elif isinstance(effect, ResumePartial):
            offset, hasher = await self._resume(effect)
            await self._perform(control.partial_resumed(effect.slot, offset, hasher))
        elif isinstance(effect, RecordHeld):
            await ledger.record_received(sender, effect.transfer_id, effect.instances)
        elif isinstance(effect, RecordCheckpoint):
            await ledger.record_partial(sender, effect.transfer_id, effect.index, effect.offset)
        elif isinstance(effect, DiscardPartial):
            await anyio.to_thread.run_sync(self.r.partials.discard_partial, effect.key)
        elif isinstance(effect, PublishPartial):
            await self._publish(effect)
        elif isinstance(effect, CheckPeer):
            try:
                org = self.r.check_peer(self.conn, effect.claimed)
            except Refused as e:
                proven = self.r.proven_org(self.conn, effect.claimed)
                await self._perform(control.peer_refused(proven, str(e)))
            else:
                await self._perform(control.peer_admitted(org))
        elif isinstance(effect, LookUpCommit):
            incoming = await ledger.incoming(sender, effect.transfer_id)
            committable = incoming is not None and incoming.receipt is None
            received = await ledger.received(sender, effect.transfer_id) if committable else {}
            await self._perform(control.commit_looked_up(incoming, received, time.time()))
        elif isinstance(effect, CommitTransfer):
            await self._perform(control.committed(await self._commit(effect.receipt)))
        elif isinstance(effect, Audit):
            await ledger.audit(effect.org, effect.action, effect.transfer_id, effect.detail)
        elif isinstance(effect, StudyCommitted):
            if self.r.on_committed is not None:
                self.r.on_committed(effect)
        else:
            raise AssertionError(f"unhandled effect {effect!r}")

    async def _held(self, offer: Offer) -> Held:
        """What is held for an offer: its receipt if committed; else what the
        transfer holds, and the sizes of the stored instances among the offered
        digests that this sender delivered before."""
        ledger, sender = self.r.ledger, self.control.sender
        receipt = await ledger.note_incoming(
            sender, offer.transfer_id, offer.study_instance_uid, offer.total, offer.digest
        )
        if receipt is not None:
            return Held(receipt=receipt)
        received = await ledger.received(sender, offer.transfer_id)
        delivered = await ledger.digests_from(sender, [i.digest for i in offer.instances])
        if not delivered:
            return Held(received=received)
        sizes: dict[str, int | None] = dict(await self.r.store.size_of(list(delivered)))
        return Held(received=received, sizes=sizes)

    async def _resume(self, effect: ResumePartial) -> tuple[int, Hasher | None]:
        """A large instance's durable prefix from an earlier attempt, if any: the
        partial file cut back to its last checkpoint and that prefix hashed again."""
        offset = await self.r.ledger.partial(self.control.sender, effect.transfer_id, effect.index)
        if not offset:
            return 0, None
        try:
            hasher = await anyio.to_thread.run_sync(
                self.r.partials.hash_partial, effect.key, offset, Hasher(effect.algorithm)
            )
        except (OSError, ValueError):
            return 0, None
        return offset, hasher

    async def _append(self, effect: AppendChunk) -> None:
        data = memoryview(effect.data)
        try:
            await anyio.to_thread.run_sync(
                lambda: self.r.partials.append_partial(
                    effect.key, effect.offset, data, sync=effect.checkpoint
                ),
                limiter=self.r._write_limit,
            )
        except StorageError as e:
            await self._perform(self.control.write_failed(effect.slot, str(e)))
        else:
            await self._perform(self.control.appended())

    async def _publish(self, effect: PublishPartial) -> None:
        """A complete, verified large instance: its partial file (durable to its
        last checkpoint, kept until then for a later attempt to resume) goes
        into the store as one record in the committer's next round, read a
        buffer at a time, and is removed once the round is over."""
        partials, key = self.r.partials, effect.key
        path = partials.partial_path(key)
        try:
            size = (await anyio.to_thread.run_sync(path.stat)).st_size
        except OSError as e:
            size, reason = -1, str(e)
        else:
            reason = f"its partial file holds {size} bytes, not {effect.instance.size}"
        if size != effect.instance.size:  # what was hashed is not what the file holds
            await self._perform(self.control.write_failed(effect.slot, reason))
            return

        way = None
        if self.r.inbound is not None:
            decision = await self._judge(effect.transfer_id, path)
            way = await self._on_the_way(effect.transfer_id, effect.instance, path, decision)

        def after() -> None:
            partials.discard_partial(key)

        stored = self._stored(effect.slot, effect.transfer_id, effect.instance, way)
        self.r.committer.write(stored, path, after)

    async def _judge(self, transfer_id: str, data: Payload | Path) -> Decision:
        """The inbound rules on one whole instance before it is stored: a
        refusal is audited and ends the transfer (the control's effects close
        the connection); the first instance allowed of a transfer on this
        connection is audited as the transfer's allowing."""
        inbound = self.r.inbound
        assert inbound is not None
        sender, priority = self.control.sender, self.priorities.get(transfer_id, "routine")
        if isinstance(data, Path):
            verdict = await anyio.to_thread.run_sync(
                lambda: inbound.judge(data, sender=sender, priority=priority)
            )
        else:
            verdict = inbound.judge(data, sender=sender, priority=priority)
        decision = verdict.decision
        if decision.allowed and transfer_id in self.judged:
            return decision
        study = verdict.study_uid or "?"
        action = "policy-allowed" if decision.allowed else "policy-refused"
        await self.r.ledger.audit(
            sender,
            action,
            transfer_id,
            f"study {study} from {sender}: {decision.reason}",
            study_uid=verdict.study_uid,
            patient_id=verdict.patient_id,
            remote=self.control.address,
        )
        if not decision.allowed:
            await self._perform(self.control.policy_refused(decision.reason))
        self.judged.add(transfer_id)
        return decision

    async def _on_the_way(
        self,
        transfer_id: str,
        instance: IncomingInstance,
        data: Payload | Path,
        decision: Decision,
    ) -> OnTheWay | None:
        """The edits that reconcile this instance as it is stored, when its
        rule reconciles and its transfer's patient was found (looked up at
        the transfer's first such instance on this connection)."""
        planner = self.r.arrival
        if planner is None or decision.reconcile is None:
            return None
        values = await read_values(data)
        if values is None:
            return None
        study = self.studies.get(transfer_id, "")
        if transfer_id not in self.plans:
            self.plans[transfer_id] = await planner.plan(
                decision,
                values,
                sender=self.control.sender,
                transfer_id=transfer_id,
                study_uid=study,
                priority=self.priorities.get(transfer_id, "routine"),
            )
        plan = self.plans[transfer_id]
        if plan is None:
            return None
        way = planner.edits(
            plan,
            values,
            transfer_id=transfer_id,
            study_uid=study,
            sop_uid=instance.sop_instance_uid,
        )
        if way is None or isinstance(data, Path):
            return way  # a large instance is rewritten by the round, its file mapped
        return await rewritten(way, data, self.algorithms[transfer_id])

    async def _commit(self, receipt: Receipt) -> bytes:
        """Sign the receipt, then make the study visible and keep the receipt: the
        one the ledger keeps (an earlier one, if committed before)."""
        if self.r.key_pem is not None:
            receipt = receipt.signed(self.r.key_pem)
        then = self.r.after_commit(receipt.sender) if self.r.after_commit else None
        return await self.r.ledger.commit_incoming(
            receipt.sender,
            receipt.transfer_id,
            receipt.study_instance_uid,
            receipt.to_json(),
            receipt.committed_at,
            then=then,
            priority=self.priorities.get(receipt.transfer_id, "routine"),
        )

    def _stored(
        self,
        slot: int,
        transfer_id: str,
        instance: IncomingInstance,
        rewrite: OnTheWay | None = None,
    ) -> Stored:
        return Stored(
            sender=self.control.sender,
            transfer_id=transfer_id,
            instance=instance,
            algorithm=self.algorithms[transfer_id],
            acknowledge=self._acknowledge,
            slot=slot,
            rewrite=rewrite,
        )

    def _acknowledge(self, slot: int, stored_at: float, error: BaseException | None) -> None:
        """The committer's word on one instance, answered to the control in batches."""
        if error is None:
            self.durable.append((slot, stored_at))
        else:
            self.failures.append((slot, error))
        self.stored.set()

    async def _answer_storage(self) -> None:
        while True:
            await self.stored.wait()
            self.stored = anyio.Event()
            durable, self.durable = self.durable, []
            failures, self.failures = self.failures, []
            effects = self.control.durable(durable) if durable else []
            for slot, error in failures:
                effects += self.control.write_failed(slot, str(error))
            # Room is made now (writes that waited go out first, before any await),
            # so frames need not wait for the acknowledgements to be sent.
            self.room.set()
            await self._perform(effects)
