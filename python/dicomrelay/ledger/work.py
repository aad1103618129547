"""A ledger transaction's body, written once for every backend.

A body is a generator: it yields the statements to run, one at a time, and is
sent back each one's result. It does no I/O of its own, so the SQLite driver
runs it whole on its worker thread (one hop off the event loop per
transaction) and the PostgreSQL driver awaits each statement on its
connection; neither knows what the body does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any, NamedTuple, TypeAlias, TypeVar

T = TypeVar("T")
Row: TypeAlias = tuple[Any, ...]


# Named tuples, not frozen dataclasses: made for every statement, they cost
# half as much to make.
class Query(NamedTuple):
    """One statement, in its driver's dialect, and its parameters: one row of
    them, or (``many``) a sequence of rows to run it with."""

    sql: str
    params: Sequence[Any] = ()
    many: bool = False


class Result(NamedTuple):
    rows: list[Row]  # empty for a statement that returns none
    rowcount: int  # rows changed, for an INSERT, UPDATE or DELETE

    def scalar(self) -> Any:
        """The first column of the only row."""
        return self.rows[0][0]


Work: TypeAlias = Generator[Query, Result, T]


def drive(work: Work[T], execute: Callable[[Query], Result]) -> T:
    """Run ``work`` to its end, each statement by ``execute``."""
    try:
        query = next(work)
        while True:
            query = work.send(execute(query))
    except StopIteration as done:
        result: T = done.value
        return result
    finally:
        work.close()


async def drive_async(work: Work[T], execute: Callable[[Query], Awaitable[Result]]) -> T:
    """``drive``, for a driver whose statements are awaited."""
    try:
        query = next(work)
        while True:
            query = work.send(await execute(query))
    except StopIteration as done:
        result: T = done.value
        return result
    finally:
        work.close()
