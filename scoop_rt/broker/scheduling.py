"""Scheduling policy: plain data and small functions, no sockets.

A worker offers slots: one, plus one for each of its tasks that is blocked
waiting on futures of its own, plus, while the queue is deep, the prefetch it
asked for (a worker whose tasks are short asks for enough tasks ahead to
cover a few milliseconds, so it never waits for the broker between two).
Queued tasks go first in, first out, to the workers with free slots in turn
(round robin), each kept at most once in a ready line, so handing out a task
costs the same with 2 workers or 1,000.

Prefetch only while the queue is deep: a task sent ahead to a worker can no
longer be cancelled (as with ProcessPoolExecutor's call queue), so a task
queued behind busy workers, in a short queue, stays at the broker where
``cancel()`` can still take it back. A short queue of long tasks keeps its
balance that way too: a worker's prefetch is judged from the tasks it ran
last, and after short ones it would take long ones ahead, several to one
worker while another idles. A worker with free slots gets its share
of the queue in one message, so many short tasks cost the broker one send.
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

    def free(self, deep: bool) -> int:
        ahead = self.prefetch if deep else 0
        return 1 + self.blocked + ahead - len(self.running)


class Slots:
    """Every worker's slots, and the line of those with a free one."""

    # The queue is deep at this many queued tasks per worker (and at least
    # DEEP_MIN): then prefetch slots count.
    DEEP_PER_WORKER = 2
    DEEP_MIN = 8

    def __init__(self) -> None:
        self.workers: dict[bytes, WorkerSlots] = {}
        self._ready: deque[bytes] = deque()
        self._deep = False
        self._prefetching: set[bytes] = set()  # workers that asked for some

    @property
    def deep(self) -> bool:
        return self._deep

    @deep.setter
    def deep(self, value: bool) -> None:
        if value and not self._deep:
            self._deep = True
            # Prefetch slots open now: the workers that have them join the line.
            for wid in self._prefetching:
                self.changed(wid)
        self._deep = value

    def deep_queue(self) -> int:
        """The queue length from which the queue counts as deep."""
        return max(self.DEEP_MIN, self.DEEP_PER_WORKER * len(self.workers))

    def free(self, slots: WorkerSlots) -> int:
        return slots.free(self._deep)

    def share(self, queued: int) -> int:
        """How many of ``queued`` tasks one worker may take at once: an even
        share, so that the first worker in line does not take all of them."""
        return max(1, queued // max(1, len(self.workers)))

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
        self._prefetching.discard(wid)
        return self.workers.pop(wid, None)  # its line entry is skipped later

    def set_prefetch(self, wid: bytes, count: int) -> None:
        slots = self.workers.get(wid)
        if slots is None:
            return
        slots.prefetch = count
        if count:
            self._prefetching.add(wid)
        else:
            self._prefetching.discard(wid)
        self.changed(wid)

    def changed(self, wid: bytes) -> None:
        """Call after a worker's slots changed: it joins the line if free."""
        slots = self.workers.get(wid)
        if slots is not None and not slots.ready and slots.free(self._deep) > 0:
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
            if slots.free(self._deep) > 0:
                return wid
        return None
