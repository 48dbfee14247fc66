"""The one way a test waits for something it cannot be told about: poll a condition.

``wait_until(check, what=...)`` calls ``check`` until it returns a truthy value and returns that
value; ``await wait_until_async(...)`` does the same without blocking the event loop (``check``
may be a coroutine function). Past ``timeout`` both raise ``TimeoutError`` naming ``what`` and
the last value seen. Exceptions of a type in ``ignore`` count as "not yet" (a server not
listening yet); any other exception propagates at once (a check that knows it will never hold
raises). Where the code under test can signal instead (an ``asyncio.Event`` gate, a task's
completion), a test waits on that, not on this.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


class _Tries:
    """The bookkeeping both twins share: the deadline and what to say when it passes."""

    def __init__(self, what: str, timeout: float) -> None:
        self.what = what
        self.timeout = timeout
        self.end = time.monotonic() + timeout
        self.last: object = None

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def error(self) -> TimeoutError:
        last = self.last
        seen = f"{type(last).__name__}: {last}" if isinstance(last, BaseException) else repr(last)
        return TimeoutError(f"{self.what}: not within {self.timeout:g} s (last seen: {seen})")


def wait_until(
    check: Callable[[], T | None],
    *,
    what: str,
    timeout: float = 10.0,
    interval: float = 0.01,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``check`` every ``interval`` seconds until it returns a truthy value; return it.

    (Typed as ``T | None`` -> ``T``: a check that answers "not yet" with ``None`` returns
    what it found.)"""
    tries = _Tries(what, timeout)
    while True:
        try:
            value = check()
        except ignore as exc:
            tries.last = exc
        else:
            if value:
                return value
            tries.last = value
        if tries.expired():
            raise tries.error()
        time.sleep(interval)


@overload
async def wait_until_async(
    check: Callable[[], Awaitable[T | None]],
    *,
    what: str,
    timeout: float = ...,
    interval: float = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


@overload
async def wait_until_async(
    check: Callable[[], T | None],
    *,
    what: str,
    timeout: float = ...,
    interval: float = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


async def wait_until_async(
    check: Callable[[], object],
    *,
    what: str,
    timeout: float = 10.0,
    interval: float = 0.01,
    ignore: tuple[type[BaseException], ...] = (),
) -> object:
    """``wait_until`` for a running event loop: ``await asyncio.sleep`` between calls, and
    ``check`` may return an awaitable (an ``async def``), which is awaited."""
    tries = _Tries(what, timeout)
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except ignore as exc:
            tries.last = exc
        else:
            if value:
                return value
            tries.last = value
        if tries.expired():
            raise tries.error()
        await asyncio.sleep(interval)
