"""The futures API: SCOOP's names with PEP 3148 semantics.

These functions are thin: they pick this process's runtime (a launched
run's connection, or the sequential stand-in) and delegate to it. ``map``
sends its input in chunks, a bounded number of them in flight, so a long or
endless iterable is read lazily and results come back in order.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools
import math
import operator
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Callable

from . import future as _future, runtime as _runtime, serialization, tuning
from .config import Config
from .errors import NoWorkersError, RemoteError, RemoteTraceback, WorkerLostError
from .future import Future
from .protocol import Flags

__all__ = [
    "submit", "options", "map", "map_as_completed", "as_completed", "wait", "shutdown",
    "mapReduce", "map_reduce", "mapScan", "map_scan", "Future",
    "FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED",
    "TimeoutError", "CancelledError", "RemoteError", "RemoteTraceback",
    "WorkerLostError", "NoWorkersError",
]

FIRST_COMPLETED = cf.FIRST_COMPLETED
FIRST_EXCEPTION = cf.FIRST_EXCEPTION
ALL_COMPLETED = cf.ALL_COMPLETED
TimeoutError = cf.TimeoutError
CancelledError = cf.CancelledError

_shut_down = False
_DEFAULTS = Config()


def submit(fn: Callable, *args: Any, **kwargs: Any) -> cf.Future:
    """Schedule ``fn(*args, **kwargs)`` on a worker; its Future."""
    return _submit(fn, args, kwargs, Flags.NONE)


def _submit(fn: Callable, args: tuple, kwargs: dict, flags: Flags) -> cf.Future:
    if _shut_down:
        raise RuntimeError("cannot submit new futures after shutdown()")
    future = _runtime.get().submit_call(fn, args, kwargs, flags)
    return serialization.claim_task_files(future)


class Options:
    """Per-call settings, kept apart from the function's own arguments:

        futures.options(retry=False).submit(transfer_money, account, 10)

    ``retry=False``: if the worker running the task dies, the task fails with
    ``WorkerLostError`` instead of running again elsewhere (for tasks with
    effects that must not happen twice).
    """

    def __init__(self, retry: bool = True):
        self.flags = Flags.NONE if retry else Flags.NO_RETRY

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> cf.Future:
        return _submit(fn, args, kwargs, self.flags)


def options(*, retry: bool = True) -> Options:
    """Settings for the calls made through the returned object (see Options)."""
    return Options(retry=retry)


def _known_length(iterables: tuple) -> int | None:
    lengths = [operator.length_hint(it, -1) for it in iterables]
    return None if not lengths or min(lengths) < 0 else min(lengths)


def _iterate(items: Any) -> Iterator:
    try:
        return iter(items)
    except TypeError:
        raise TypeError(f"map() spreads iterables over the workers; "
                        f"{type(items).__name__} {items!r:.40} is not iterable") from None


def _window(rt: Any) -> int:
    per_worker = getattr(getattr(rt, "config", None), "map_window_per_worker",
                         _DEFAULTS.map_window_per_worker)
    return max(2, rt.size * per_worker)


class _Feeder:
    """Reads a map's input lazily and keeps a bounded number of chunks in flight.

    Calls per chunk: when the input's length is known, enough for a few
    chunks per worker, so workers share the load; otherwise the size adapts,
    starting at one call and doubling while chunks come back within
    ``tuning.MAP_CHUNK_FAST`` seconds, halving when they take over
    ``MAP_CHUNK_SLOW``.
    """

    def __init__(self, fn: Callable, iterables: tuple, chunksize: int | None):
        if _shut_down:
            raise RuntimeError("cannot submit new futures after shutdown()")
        self.rt = _runtime.get()
        self.fn = fn
        length = _known_length(iterables)
        self.sized = length is not None
        self.adaptive = chunksize is None and not self.sized
        if chunksize is not None:
            self.size = max(1, int(chunksize))
        elif length is not None:
            self.size = max(1, math.ceil(length / (self.rt.size * tuning.MAP_CHUNKS_PER_WORKER)))
        else:
            self.size = 1
        # One iterable: its items travel as they are, and run as fn(item);
        # several: tuples of one item of each, run as fn(*call).
        self.star = len(iterables) != 1
        if not self.star and serialization.sliceable(iterables[0]):
            self.chunks = self._slices(iterables[0])
        else:
            iterators = [_iterate(it) for it in iterables]
            self.chunks = self._lists(zip(*iterators) if self.star else iterators[0])
        self.window = _window(self.rt)

    def _slices(self, whole: Any) -> Iterator:
        for start in range(0, len(whole), self.size):
            yield whole[start:start + self.size]

    def _lists(self, calls: Iterator) -> Iterator:
        while True:
            chunk = list(itertools.islice(calls, self.size))
            if not chunk:
                return
            yield chunk

    def fill(self, inflight: Any, add: Callable) -> None:
        """Submit chunks until ``inflight`` holds a window's worth.

        Chunks of an input of known length leave together, in one message
        unless they are slow to pickle (``chunks.submit_chunks``; a map of
        one chunk may run here instead, see ``origin.make_client``); a
        generator's leave one by one as they are read, since it may be slow
        to yield. If a chunk cannot be pickled, those that left before it
        run all the same."""
        room = max(0, self.window - len(inflight))
        if not self.sized:
            for chunk in itertools.islice(self.chunks, room):
                add(self._send_chunk(chunk))
            return
        chunks = list(itertools.islice(self.chunks, room))
        if len(chunks) == 1:
            add(self._send_chunk(chunks[0]))
        elif chunks:
            for future in self.rt.submit_chunks(self.fn, chunks, self.star):
                add(future)

    def _send_chunk(self, chunk: Any) -> cf.Future:
        future = serialization.claim_task_files(
            self.rt.submit_chunk(self.fn, chunk, self.star))
        if self.adaptive:
            future.add_done_callback(functools.partial(
                self._adapt, time.monotonic(), len(chunk)))
        return future

    def _adapt(self, started: float, calls: int, future: cf.Future) -> None:
        if calls < self.size:
            return  # a chunk of an older size says nothing of this one
        took = time.monotonic() - started
        if took < tuning.MAP_CHUNK_FAST:
            self.size = min(self.size * 2, tuning.MAP_CHUNK_LARGEST)
        elif took > tuning.MAP_CHUNK_SLOW:
            self.size = max(1, self.size // 2)


def _left(end: float | None) -> float | None:
    return None if end is None else max(0.0, end - time.monotonic())


def _deadline(timeout: float | None) -> float | None:
    timeout = _no_limit(timeout)
    return None if timeout is None else time.monotonic() + timeout


def _no_limit(timeout: float | None) -> float | None:
    """A negative timeout is no limit, as SCOOP documents (``timeout=-1``)."""
    return None if timeout is not None and timeout < 0 else timeout


_ignored_warned: set = set()


def _ignore(call: str, ignored: dict) -> None:
    """SCOOP's maps accepted keyword arguments and ignored them (its examples
    pass ``parallelLevel``): so do these, saying so once per name."""
    for name in ignored:
        if name not in _ignored_warned:
            _ignored_warned.add(name)
            warnings.warn(f"futures.{call}() ignores the keyword argument {name!r}, "
                          "as SCOOP did", stacklevel=3)


def map(fn: Callable, *iterables: Iterable, timeout: float | None = None,
        chunksize: int | None = None, **ignored: Any) -> Iterator:
    """``fn`` over the items of ``iterables`` on the workers; an iterator of
    the results in input order. Work starts now; an exception is raised at
    its item; ``timeout`` counts from this call (negative: no limit). Other
    keyword arguments are ignored, with a warning, as SCOOP's map did."""
    _ignore("map", ignored)
    feeder = _Feeder(fn, iterables, chunksize)
    end = _deadline(timeout)
    inflight: deque = deque()
    feeder.fill(inflight, inflight.append)
    return itertools.chain.from_iterable(_ordered(feeder, inflight, end))


# The two generators below yield each chunk's values as one list, which
# ``chain.from_iterable`` hands out one by one at C speed: a generator step
# per value cost more than the rest of the origin's work on a map of no-ops.
# An error is raised when the values before it have all been taken.

def _ordered(feeder: _Feeder, inflight: deque, end: float | None) -> Iterator:
    try:
        while inflight:
            values, error = inflight[0].result(_left(end))
            inflight.popleft()
            feeder.fill(inflight, inflight.append)
            yield values
            if error is not None:
                raise error
    finally:
        for future in inflight:
            future.cancel()


def map_as_completed(fn: Callable, *iterables: Iterable,
                     timeout: float | None = None,
                     chunksize: int | None = None, **ignored: Any) -> Iterator:
    """Like ``map``, but yields each result as soon as it is ready."""
    _ignore("map_as_completed", ignored)
    feeder = _Feeder(fn, iterables, chunksize)
    end = _deadline(timeout)
    inflight: set = set()
    feeder.fill(inflight, inflight.add)
    return itertools.chain.from_iterable(_unordered(feeder, inflight, end))


def _unordered(feeder: _Feeder, inflight: set, end: float | None) -> Iterator:
    try:
        while inflight:
            done, _ = wait(inflight, _left(end), FIRST_COMPLETED)
            if not done:
                raise TimeoutError(f"{len(inflight)} map chunks unfinished")
            for future in done:
                inflight.discard(future)
                values, error = future.result()
                feeder.fill(inflight, inflight.add)
                yield values
                if error is not None:
                    raise error
    finally:
        for future in inflight:
            future.cancel()


def wait(fs: Iterable[cf.Future], timeout: float | None = None,
         return_when: str = ALL_COMPLETED) -> tuple[set, set]:
    """Wait for the futures ``fs``; ``(done, not_done)`` as in PEP 3148. A
    negative ``timeout`` is no limit, as in SCOOP."""
    return _future.wait(_runtime.client(), fs, _no_limit(timeout), return_when)


def as_completed(fs: Iterable[cf.Future], timeout: float | None = None) -> Iterator:
    """Yield the futures ``fs`` as they complete; TimeoutError after
    ``timeout`` (negative: no limit, as in SCOOP)."""
    return _future.as_completed(_runtime.client(), fs, _no_limit(timeout))


def shutdown(wait: bool = True) -> None:
    """Refuse new submissions; with ``wait``, return once every future this
    process submitted is done."""
    global _shut_down
    _shut_down = True
    rt = _runtime.client()
    if wait and rt is not None:
        rt.block_until(lambda: not rt.pending(), None)


def mapReduce(mapFunc: Callable, reductionOp: Callable, *iterables: Iterable,
              **ignored: Any) -> Any:
    """``functools.reduce(reductionOp, map(mapFunc, *iterables))``, the map on
    the workers and the reduction as results arrive, in order."""
    _ignore("mapReduce", ignored)
    return functools.reduce(reductionOp, map(mapFunc, *iterables))


def mapScan(mapFunc: Callable, reductionOp: Callable, *iterables: Iterable,
            **ignored: Any) -> list:
    """Every intermediate value of ``mapReduce``: the list of
    ``itertools.accumulate(map(mapFunc, *iterables), reductionOp)``."""
    _ignore("mapScan", ignored)
    return list(itertools.accumulate(map(mapFunc, *iterables), reductionOp))


map_reduce = mapReduce
map_scan = mapScan
