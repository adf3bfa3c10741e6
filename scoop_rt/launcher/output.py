"""Forwarding what workers print to the launcher's own stdout and stderr.

One thread reads every worker's output, from local pipes or SSH channels, and
writes whole lines only, so lines from different workers never tear into each
other. A last line without a newline is written when its source closes.
"""

from __future__ import annotations

import os
import selectors
import sys
import threading
from typing import BinaryIO

_CHUNK = 65536


class PipeSource:
    """A local process's pipe. ``end_line``: end a last line that has no
    newline with one (for workers, whose lines must not run into others).
    ``after_others``: of what is ready at once, read this last (the
    origin's: a task prints before its result reaches the origin, so the
    script's later lines must not overtake what its tasks printed)."""

    def __init__(self, pipe: BinaryIO, target: BinaryIO, end_line: bool = True,
                 after_others: bool = False):
        self.pipe = pipe
        self.target = target
        self.targets = [target]
        self.end_line = end_line
        self.after_others = after_others

    def fileno(self) -> int:
        return self.pipe.fileno()

    def read(self) -> tuple[list, bool]:
        """[(target, bytes)] read now, and whether the source is finished."""
        data = os.read(self.pipe.fileno(), _CHUNK)
        if not data:
            self.pipe.close()
            return [], True
        return [(self.target, data)], False


class ChannelSource:
    """An SSH channel's stdout and stderr (a paramiko ``Channel``)."""

    def __init__(self, channel, out: BinaryIO, err: BinaryIO):
        self.channel = channel
        self.out = out
        self.err = err
        self.targets = [out, err]
        self.end_line = True

    def fileno(self) -> int:
        return self.channel.fileno()

    def read(self) -> tuple[list, bool]:
        ch = self.channel
        chunks = []
        while ch.recv_ready():
            chunks.append((self.out, ch.recv(_CHUNK)))
        while ch.recv_stderr_ready():
            chunks.append((self.err, ch.recv_stderr(_CHUNK)))
        finished = (ch.closed or ch.eof_received) and not (
            ch.recv_ready() or ch.recv_stderr_ready())
        return [(t, d) for t, d in chunks if d], finished


class Forwarder(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="scoop_rt-output", daemon=True)
        self._selector = selectors.DefaultSelector()
        self._partial: dict[tuple[int, int], bytes] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._closing = False

    def add(self, source) -> None:
        """Forward ``source``'s lines until it is finished."""
        with self._lock:
            self._selector.register(source, selectors.EVENT_READ, source)
        self._wake()

    def add_pipe(self, pipe: BinaryIO, target: BinaryIO, end_line: bool = True,
                 after_others: bool = False) -> None:
        self.add(PipeSource(pipe, target, end_line, after_others))

    def close(self, timeout: float) -> None:
        """Stop once every source is finished, or after ``timeout``."""
        self._closing = True
        self._wake()
        if self.is_alive():
            self.join(timeout)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the wake-up pipe is full: the thread is awake anyway

    def run(self) -> None:
        while True:
            with self._lock:
                sources = len(self._selector.get_map()) - 1
            if self._closing and sources == 0:
                break
            ready = self._selector.select(timeout=0.5)
            ready.sort(key=_read_last)
            for key, _ in ready:
                if key.data is None:
                    os.read(self._wake_r, 4096)
                else:
                    self._pump(key.data)
        self._selector.close()

    def _pump(self, source) -> None:
        try:
            chunks, finished = source.read()
        except OSError:
            chunks, finished = [], True
        for target, data in chunks:
            key = (id(source), id(target))
            data = self._partial.pop(key, b"") + data
            cut = data.rfind(b"\n") + 1
            if cut:
                _emit(target, data[:cut])
            if cut < len(data):
                self._partial[key] = data[cut:]
        if finished:
            with self._lock:
                self._selector.unregister(source)
            for key in [k for k in self._partial if k[0] == id(source)]:
                rest = self._partial.pop(key)
                target = next(t for t in source.targets if id(t) == key[1])
                _emit(target, rest + b"\n" if source.end_line else rest)


def _read_last(event: tuple) -> bool:
    return bool(getattr(event[0].data, "after_others", False))


def _emit(target: BinaryIO, data: bytes) -> None:
    try:
        target.write(data)
        target.flush()
    except (OSError, ValueError):
        pass  # the terminal went away; keep draining so workers never block


def stdout() -> BinaryIO:
    return sys.stdout.buffer


def stderr() -> BinaryIO:
    return sys.stderr.buffer
