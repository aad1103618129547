"""The store's rounds pipelined: while one round's rows go into the ledger the
next appends, yet the ledger takes them in order, a round that fails takes
every round appended after it down with it (its records cut, nothing of it
located), and the committer keeps each round within its byte budget."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from dicomrelay.errors import LedgerUnavailable, StorageError
from dicomrelay.instance_store import InstanceStore, Record
from dicomrelay.ledger import IncomingInstance, Ledger
from dicomrelay.ledger.sqlite import SqliteLedger, memory_ledger
from dicomrelay.receiver import Committer, Stored

pytestmark = pytest.mark.anyio
TID = "d" * 32


def blob(n: int, size: int = 3000) -> tuple[bytes, str]:
    data = bytes([n % 251]) * size + n.to_bytes(4, "big")
    return data, hashlib.sha256(data).hexdigest()


def row(n: int, data: bytes, digest: str) -> IncomingInstance:
    return IncomingInstance(
        index=n, sop_instance_uid=f"1.2.3.{n}", size=len(data), digest=digest, stored=1.0
    )


class HeldLedger(SqliteLedger):
    """A real ledger whose next round's transaction waits to be let go, and
    then fails if told to: a slow or failing ledger under a pipelined round."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.held_round: anyio.Event | None = None
        self.fail_next = False
        self.ends: list[tuple[int, int]] = []

    async def record_round(self, *args: Any, **kwargs: Any) -> None:
        """The ledger's own, after the hold and the injected failure."""
        if self.held_round is not None:
            held, self.held_round = self.held_round, None
            await held.wait()
        if self.fail_next:
            self.fail_next = False
            raise LedgerUnavailable("injected: the ledger's disk failed")
        await super().record_round(*args, **kwargs)
        self.ends.append(args[1])  # (store, end, located, received)


async def open_store(tmp_path: Path, ledger: Ledger) -> InstanceStore:
    await ledger.note_incoming("RX1", TID, "1.2.3", 100, "sha256")
    store = await InstanceStore.open(tmp_path / "segments", ledger, segment_size=1 << 22)
    if isinstance(ledger, HeldLedger):
        ledger.ends.clear()  # the end a new store records when it opens
    return store


async def test_the_next_round_appends_while_one_is_recorded_and_the_ledger_keeps_order(
    tmp_path: Path,
) -> None:
    ledger = HeldLedger()
    store = await open_store(tmp_path, ledger)
    first, second = blob(1), blob(2)
    release = anyio.Event()
    ledger.held_round = release
    second_appended = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            store.write_round,
            [Record(first[0], first[1], "sha256")],
            [("RX1", TID, row(0, *first))],
        )
        await anyio.wait_all_tasks_blocked()
        # The first round is synced and waits on the ledger; the second appends now.
        tg.start_soon(
            lambda: store.write_round(
                [Record(second[0], second[1], "sha256")],
                [("RX1", TID, row(1, *second))],
                appended=second_appended.set,
            )
        )
        with anyio.fail_after(5):
            await second_appended.wait()
        assert not ledger.ends, "nothing recorded while the first round is held"
        release.set()
    assert ledger.ends == sorted(ledger.ends)
    assert len(ledger.ends) == 2
    for data, digest in (first, second):
        assert bytes(await store.read_instance(digest)) == data
    store.close()


async def test_a_failed_round_fails_the_one_appended_after_it_and_cuts_both(
    tmp_path: Path,
) -> None:
    ledger = HeldLedger()
    store = await open_store(tmp_path, ledger)
    before = blob(0)
    await store.write_round(
        [Record(before[0], before[1], "sha256")], [("RX1", TID, row(0, *before))]
    )
    recorded = ledger.ends[-1]
    first, second, after = blob(1), blob(2), blob(3)
    release = anyio.Event()
    ledger.held_round, ledger.fail_next = release, True
    failures: list[str] = []

    async def round_(data: bytes, digest: str, index: int) -> None:
        try:
            await store.write_round(
                [Record(data, digest, "sha256")], [("RX1", TID, row(index, data, digest))]
            )
        except (StorageError, LedgerUnavailable) as e:
            failures.append(f"{index}: {type(e).__name__}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(round_, *first, 1)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(round_, *second, 2)
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert sorted(failures) == ["1: LedgerUnavailable", "2: StorageError"]
    assert ledger.ends == [recorded], "neither round recorded an end"
    assert await store.locations([first[1], second[1]]) == {}
    # The next round opens the store again at the recorded end and goes on;
    # the second round's digest, cut with it, is appended again when it returns.
    await store.write_round(
        [Record(second[0], second[1], "sha256"), Record(after[0], after[1], "sha256")],
        [("RX1", TID, row(2, *second)), ("RX1", TID, row(3, *after))],
    )
    for data, digest in (before, second, after):
        assert bytes(await store.read_instance(digest)) == data
    store.close()
    # Opened afresh from the ledger: what was recorded, and only that.
    again = await InstanceStore.open(tmp_path / "segments", ledger, segment_size=1 << 22)
    assert set(await again.locations([b[1] for b in (before, first, second, after)])) == {
        before[1],
        second[1],
        after[1],
    }
    again.close()


async def test_a_digest_in_two_rounds_in_flight_is_stored_once(tmp_path: Path) -> None:
    ledger = HeldLedger()
    store = await open_store(tmp_path, ledger)
    same = blob(7)
    release = anyio.Event()
    ledger.held_round = release
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            store.write_round, [Record(same[0], same[1], "sha256")], [("RX1", TID, row(0, *same))]
        )
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(
            store.write_round, [Record(same[0], same[1], "sha256")], [("RX1", TID, row(1, *same))]
        )
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert len(ledger.ends) == 2
    assert ledger.ends[0] == ledger.ends[1], "the second round appended nothing"
    assert bytes(await store.read_instance(same[1])) == same[0]
    store.close()


async def test_the_committer_keeps_each_round_within_its_budget(tmp_path: Path) -> None:
    ledger = memory_ledger()
    store = await open_store(tmp_path, ledger)
    rounds: list[int] = []
    write_round = store.write_round

    async def counted(records: Sequence[Record], *args: object, **kwargs: object) -> None:
        rounds.append(len(records))
        await write_round(records, *args, **kwargs)  # type: ignore[arg-type]

    store.write_round = counted  # type: ignore[method-assign]
    committer = Committer(store, round_bytes=10_000)
    acknowledged: list[tuple[int, BaseException | None]] = []
    blobs = [blob(n) for n in range(10)]  # 3,004 bytes each: three to a round
    for n, (data, digest) in enumerate(blobs):
        item = Stored(
            sender="RX1",
            transfer_id=TID,
            instance=row(n, data, digest),
            algorithm="sha256",
            acknowledge=lambda slot, _at, error: acknowledged.append((slot, error)),
            slot=n,
        )
        committer.write(item, data)
    async with anyio.create_task_group() as tg:
        tg.start_soon(committer.run)
        with anyio.fail_after(10):
            while len(acknowledged) < len(blobs):
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert rounds == [3, 3, 3, 1]
    assert sorted(acknowledged, key=lambda a: a[0]) == [(n, None) for n in range(10)]
    for data, digest in blobs:
        assert bytes(await store.read_instance(digest)) == data
    store.close()
