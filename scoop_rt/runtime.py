"""Which runtime this process uses: a launched run's client, or the
sequential stand-in that runs every call in-process when there is no run
(``python script.py``, a test, a notebook).
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
from collections.abc import Sequence
from typing import Any, Callable

from . import serialization, tasks

current: Any = None  # the Client of a launched run, set by its role


class Sequential:
    """The futures API without a run: each call runs when it is submitted.

    Results, their order and error types are those of a launched run.
    """

    size = 1
    _warned = False

    def __init__(self) -> None:
        self.constants: dict[str, Any] = {}

    @classmethod
    def warn_once(cls) -> None:
        if not cls._warned:
            cls._warned = True
            print("scoop_rt: no run was launched (start the script with "
                  "'python -m scoop_rt script.py' to use workers); running "
                  "futures sequentially in this process", file=sys.stderr)

    def submit_call(self, fn: Callable, args: Sequence, kwargs: dict,
                    flags: Any = None) -> cf.Future:
        return self._run(serialization.dump_call(fn, args, kwargs), False)

    def submit_chunk(self, fn: Callable, calls: Sequence,
                     star: bool = False) -> cf.Future:
        return self._run(serialization.dump_chunk(fn, calls, star), True)

    def submit_chunks(self, fn: Callable, chunks: Sequence,
                      star: bool = False) -> list:
        return [serialization.claim_task_files(self.submit_chunk(fn, calls, star))
                for calls in chunks]

    def _run(self, frames: list, chunk: bool) -> cf.Future:
        """Run a task as a worker would: from its pickled form, its outcome
        pickled back, so arguments are copies and errors are the same."""
        future: cf.Future = cf.Future()
        future.set_running_or_notify_cancel()
        status, outcome = tasks.execute(frames, "this process (no run launched)")
        tasks.settle(future, chunk, status, outcome)
        return future

    def set_const(self, name: str, value: Any) -> None:
        self.constants[name] = value

    def has_const(self, name: str) -> bool:
        return name in self.constants

    def get_const(self, name: str, timeout: float | None) -> Any:
        return self.constants.get(name)

    def block_until(self, condition: Callable[[], bool],
                    timeout: float | None) -> bool:
        return condition()


_sequential: Sequential | None = None


def get() -> Any:
    """The runtime of this process (a launched client or the sequential one)."""
    global _sequential
    if current is not None:
        return current
    if _sequential is None:
        _sequential = Sequential()
    _sequential.warn_once()
    return _sequential


def client() -> Any:
    """The launched client, or None when running sequentially."""
    return current
