"""Forwarding what workers print to the launcher's own stdout and stderr.

One thread reads every worker's pipes and writes whole lines only, so lines
from different workers never tear into each other. A last line without a
newline is written when its pipe closes.
"""

from __future__ import annotations

import os
import selectors
import sys
import threading
from typing import BinaryIO


class Forwarder(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="scoop_rt-output", daemon=True)
        self._selector = selectors.DefaultSelector()
        self._partial: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = _pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._closing = False

    def add(self, pipe: BinaryIO, target: BinaryIO) -> None:
        """Forward ``pipe``'s lines to ``target`` until the pipe closes."""
        with self._lock:
            self._selector.register(pipe, selectors.EVENT_READ, target)
        _write_all(self._wake_w, b"x")

    def close(self, timeout: float) -> None:
        """Stop once every pipe has closed, or after ``timeout``."""
        self._closing = True
        _write_all(self._wake_w, b"x")
        self.join(timeout)

    def run(self) -> None:
        while True:
            with self._lock:
                pipes = len(self._selector.get_map()) - 1
            if self._closing and pipes == 0:
                break
            for key, _ in self._selector.select(timeout=0.5):
                if key.data is None:
                    os.read(self._wake_r, 4096)
                    continue
                self._pump(key.fileobj, key.data)
        self._selector.close()

    def _pump(self, pipe: BinaryIO, target: BinaryIO) -> None:
        fd = pipe.fileno()
        chunk = os.read(fd, 65536)
        data = self._partial.pop(fd, b"") + chunk
        if not chunk:  # closed: write what is left, even without a newline
            with self._lock:
                self._selector.unregister(pipe)
            pipe.close()
            if data:
                _emit(target, data if data.endswith(b"\n") else data + b"\n")
            return
        cut = data.rfind(b"\n") + 1
        if cut:
            _emit(target, data[:cut])
        if cut < len(data):
            self._partial[fd] = data[cut:]


def _emit(target: BinaryIO, data: bytes) -> None:
    try:
        target.write(data)
        target.flush()
    except (OSError, ValueError):
        pass  # the terminal went away; keep draining so workers never block


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(w, False)
    return r, w


def _write_all(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except BlockingIOError:
        pass  # the wake-up pipe is full: the thread is awake anyway


def stdout() -> BinaryIO:
    return sys.stdout.buffer


def stderr() -> BinaryIO:
    return sys.stderr.buffer
