"""The runtime's futures, and ``wait``/``as_completed`` over them.

A ``Future`` is a ``concurrent.futures.Future`` whose waits drive the
process's connection (``connection.Connection.block_until``) instead of
sleeping, so the thread that waits is the one that reads the outcome.

This is the only module that touches the private parts of
``concurrent.futures`` (``_base``): the state names, the waiter helpers that
``wait`` and ``as_completed`` install, and a future's own fields. They exist
unchanged from Python 3.9 to 3.13, which the tests run on.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .protocol import TaskState

if TYPE_CHECKING:
    from .client import Client

_base: Any = cf._base
PENDING = _base.PENDING
FINISHED = _base.FINISHED
CANCELLED = _base.CANCELLED
CANCELLED_AND_NOTIFIED = _base.CANCELLED_AND_NOTIFIED
_SETTLED = (FINISHED, CANCELLED, CANCELLED_AND_NOTIFIED)
_DONE = (CANCELLED_AND_NOTIFIED, FINISHED)


class Future(cf.Future):
    """A PEP 3148 future whose waits drive the connection to the broker."""

    def __init__(self, client: Client, tid: int, label: str,
                 chunk: bool = False):
        # concurrent.futures.Future's own state, but with the client's one
        # condition instead of a new one per future (a third of what creating
        # a future cost). Waits here drive the client rather than sleep on the
        # condition, so sharing it wakes no one needlessly.
        self._condition = client.futures_condition
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiters: list = []
        self._done_callbacks: list = []
        self._client = client
        self._tid = tid
        self._label = label
        self._chunk = chunk

    def __repr__(self) -> str:
        return f"<Future {self._label} #{self._tid} {self._state.lower()}>"

    def _settled(self) -> bool:
        return self._state in _SETTLED

    def done(self) -> bool:
        if not self._settled():
            self._client.poll()
        return self._settled()

    def result(self, timeout: float | None = None) -> Any:
        if timeout is None:
            self._client.holder.run_if_held(self)
        if self._state != FINISHED:
            self._client.block_until(self._settled, timeout)
        elif self._exception is None:
            return self._result  # (FINISHED is final: no lock needed to read)
        return super().result(timeout=0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if timeout is None:
            self._client.holder.run_if_held(self)
        self._client.block_until(self._settled, timeout)
        return super().exception(timeout=0)

    def running(self) -> bool:
        if self._state == PENDING:
            self._update(self._client.probe(self._tid, cancel=False))
        return super().running()

    def cancel(self) -> bool:
        if self._state == PENDING:
            self._update(self._client.probe(self._tid, cancel=True))
        return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)

    def _update(self, state: TaskState) -> None:
        # Another thread may settle or cancel the future meanwhile: each step
        # checks, under the condition, the state it changes.
        if state == TaskState.CANCELLED:
            self._client.forget(self._tid)
            super().cancel()  # (not if its result came first)
            wanted = CANCELLED  # no executor will look: tell waiters now
        elif state == TaskState.RUNNING:
            wanted = PENDING
        else:
            return
        with self._condition:
            if self._state == wanted:
                self.set_running_or_notify_cancel()


def wait(client: Client | None, fs: Iterable[cf.Future], timeout: float | None,
         return_when: str) -> tuple[set, set]:
    """``concurrent.futures.wait``, driving ``client`` while it blocks."""
    fs = set(fs)
    with _base._AcquireFutures(fs):
        done = {f for f in fs if f._state in _DONE}
        not_done = fs - done
        if return_when == cf.FIRST_COMPLETED and done:
            return done, not_done
        if return_when == cf.FIRST_EXCEPTION and any(
                not f.cancelled() and f.exception(0) is not None for f in done):
            return done, not_done
        if len(done) == len(fs):
            return done, not_done
        waiter = _base._create_and_install_waiters(fs, return_when)
    try:
        if client is not None:
            client.block_until(waiter.event.is_set, timeout)
        else:
            waiter.event.wait(timeout)
    finally:
        for f in fs:
            with f._condition:
                f._waiters.remove(waiter)
    done.update(waiter.finished_futures)
    return done, fs - done


def as_completed(client: Client | None, fs: Iterable[cf.Future],
                 timeout: float | None) -> Iterator[cf.Future]:
    """``concurrent.futures.as_completed``, driving ``client`` while it blocks."""
    end = None if timeout is None else time.monotonic() + timeout
    fs = set(fs)
    total = len(fs)
    with _base._AcquireFutures(fs):
        finished = {f for f in fs if f._state in _DONE}
        pending = fs - finished
        waiter = _base._create_and_install_waiters(fs, _base._AS_COMPLETED)
    try:
        yield from finished
        while pending:
            left = None if end is None else end - time.monotonic()
            if left is not None and left < 0:
                raise cf.TimeoutError(
                    f"{len(pending)} (of {total}) futures unfinished")
            if client is not None:
                client.block_until(waiter.event.is_set, left)
            else:
                waiter.event.wait(left)
            with waiter.lock:
                finished = waiter.finished_futures
                waiter.finished_futures = []
                waiter.event.clear()
            for f in finished:
                if f in pending:
                    yield f
                    pending.remove(f)
    finally:
        for f in fs:
            with f._condition:
                f._waiters.remove(waiter)
