"""Scheduling policy: plain data and small functions, no sockets.

A worker offers slots: one, plus one for each of its tasks that is blocked
waiting on futures of its own, plus the prefetch it asked for (a worker whose
tasks are short asks for one task ahead, so it never waits for the broker
between two). Queued tasks go first in, first out, to the workers with free
slots in turn (round robin), each kept at most once in a ready line, so
handing out a task costs the same with 2 workers or 1,000.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class WorkerSlots:
    """What the broker knows of one worker's capacity."""

    blocked: int = 0                           # its tasks waiting on children
    prefetch: int = 0                          # tasks it asked to get ahead
    running: set = field(default_factory=set)  # broker task ids it holds
    ready: bool = False                        # whether it is in the ready line

    @property
    def free(self) -> int:
        return 1 + self.blocked + self.prefetch - len(self.running)


class Slots:
    """Every worker's slots, and the line of those with a free one."""

    def __init__(self) -> None:
        self.workers: dict[bytes, WorkerSlots] = {}
        self._ready: deque[bytes] = deque()

    def __len__(self) -> int:
        return len(self.workers)

    def __contains__(self, wid: bytes) -> bool:
        return wid in self.workers

    def get(self, wid: bytes) -> WorkerSlots | None:
        return self.workers.get(wid)

    def add(self, wid: bytes) -> None:
        self.workers[wid] = WorkerSlots()
        self.changed(wid)

    def remove(self, wid: bytes) -> WorkerSlots | None:
        return self.workers.pop(wid, None)  # its line entry is skipped later

    def changed(self, wid: bytes) -> None:
        """Call after a worker's slots changed: it joins the line if free."""
        slots = self.workers.get(wid)
        if slots is not None and not slots.ready and slots.free > 0:
            slots.ready = True
            self._ready.append(wid)

    def take(self) -> bytes | None:
        """The next worker with a free slot, which it now uses; or None.

        The caller adds the task to ``get(wid).running``, then ``changed``
        puts the worker back in line if it has slots left."""
        while self._ready:
            wid = self._ready.popleft()
            slots = self.workers.get(wid)
            if slots is None:
                continue
            slots.ready = False
            if slots.free > 0:
                return wid
        return None
