"""Group commit: a file appears under its final name only once its data is
durable, waiters share flushes, and a file that cannot be published says so."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from dicomrelay.groupcommit import GroupCommit

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def temp_file(directory: Path, name: str, data: bytes) -> Path:
    path = directory / f".{name}"
    path.write_bytes(data)
    return path


async def test_published_only_once_durable(tmp_path: Path) -> None:
    commits = GroupCommit(tmp_path)
    tickets = [
        commits.add(temp_file(tmp_path, f"f{i}", bytes([i]) * 100), tmp_path / f"f{i}")
        for i in range(20)
    ]
    assert not list(tmp_path.glob("f*")), "nothing under a final name before a flush"
    assert commits.pending == 20
    await commits.wait(tickets[-1])
    assert commits.pending == 0
    for i in range(20):
        assert (tmp_path / f"f{i}").read_bytes() == bytes([i]) * 100
    assert not list(tmp_path.glob(".f*"))
    commits.close()


async def test_waiters_share_flushes(tmp_path: Path) -> None:
    commits = GroupCommit(tmp_path)
    flushes = 0
    real_flush = commits.flush

    async def counted() -> None:
        nonlocal flushes
        if not commits.flushing and commits.pending:
            flushes += 1
        await real_flush()

    commits.flush = counted  # type: ignore[method-assign]
    tickets = [
        commits.add(temp_file(tmp_path, f"g{i}", b"x"), tmp_path / f"g{i}") for i in range(50)
    ]
    async with anyio.create_task_group() as tg:
        for t in tickets:
            tg.start_soon(commits.wait, t)
    # One flush makes the data durable and publishes; a second makes the renames durable.
    assert flushes == 2
    assert len(list(tmp_path.glob("g*"))) == 50
    commits.close()


async def test_a_file_that_cannot_be_published_raises(tmp_path: Path) -> None:
    commits = GroupCommit(tmp_path)
    good = commits.add(temp_file(tmp_path, "good", b"g"), tmp_path / "good")
    bad_temp = temp_file(tmp_path, "bad", b"b")
    bad = commits.add(bad_temp, tmp_path / "no-such-folder" / "bad")
    with pytest.raises(FileNotFoundError):
        await commits.wait(bad)
    await commits.wait(good)
    assert (tmp_path / "good").read_bytes() == b"g"
    assert not bad_temp.exists(), "the unpublished file is not left behind"
    commits.close()


async def test_flushes_for_arriving_data_are_spaced_but_never_hold_a_waiter(
    tmp_path: Path,
) -> None:
    commits = GroupCommit(tmp_path)
    first = commits.add(temp_file(tmp_path, "a", b"a"), tmp_path / "a")
    with anyio.fail_after(5):
        await commits.flush_soon(60.0)  # none before it: at once
    assert (tmp_path / "a").exists()
    await commits.wait(first)

    second = commits.add(temp_file(tmp_path, "b", b"b"), tmp_path / "b")
    async with anyio.create_task_group() as tg:
        tg.start_soon(commits.flush_soon, 60.0)  # the last flush began just now: it waits
        tg.start_soon(commits.flush_soon, 60.0)  # and one waiting is enough
        await anyio.sleep(0.2)
        assert commits.flushing
        assert not (tmp_path / "b").exists(), "flushed before its interval"
        with anyio.fail_after(5):
            await commits.wait(second)  # a waiter flushes at once
        assert (tmp_path / "b").read_bytes() == b"b"
        tg.cancel_scope.cancel()
    assert not commits.flushing
    commits.close()
