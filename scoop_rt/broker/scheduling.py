"""Scheduling policy: plain data and small functions, no sockets.

A worker offers slots: one, plus one for each of its tasks that is blocked
waiting on futures of its own, plus tasks ahead (prefetch) while its tasks
are short: a worker whose tasks are short asks for enough tasks ahead to
cover a few milliseconds, so it never waits for the broker between two.
Queued tasks go first in, first out, to the workers with free slots in turn
(round robin), each kept at most once in a ready line, so handing out a task
costs the same with 2 workers or 1,000.

How many tasks may go ahead depends on the queue (``Slots.ahead_now``),
as it stands when the broker starts handing out (a worker that comes back
for more in the same pass is bounded by the queue as it is then):

- a deep queue: as many as each worker asked for, an even share of the
  queue at a time. A map's first window (``tuning.MAP_CHUNKS_PER_WORKER``
  chunks a worker, sent in one message) is
  such a queue from 2 workers on, so each worker gets its share of the map
  at once; the chunks it holds ahead run even if the map stops early;
- a short queue of nothing but first tries of chunks of maps: one per
  worker, so that a worker starts its next chunk the moment it ends one, not
  a round trip to the broker later. Nobody cancels a chunk alone (a map that
  stops early cancels its chunks, but one already ahead at a worker runs
  anyway). A worker whose prefetch was judged from shorter tasks before may
  take chunks ahead that turn out to wait behind a long one: once its task
  has run past ``tuning.PREFETCH_STOP_ABOVE``, it withdraws its prefetch while the task still runs,
  so no chunk that comes later goes ahead behind it, and gives back those it
  holds but has not started, for whoever is free. A chunk that lost its
  worker goes alone into a slot of its own, like any retried task;
- any other short queue: none. A task sent ahead can no longer be cancelled
  (as with ProcessPoolExecutor's call queue), so a task queued behind busy
  workers stays at the broker, where ``cancel()`` can still take it back;
  and a short queue of long tasks does not pile up on one worker while
  another idles.

A worker with free slots gets its share of the queue in one message, so many
short tasks cost the broker one send: an even share, counted from the queue
as it stood before the first worker of the pass took its own (8 chunks, 2
workers: 4 each).

Two kinds of task travel alone, in a batch of their own: one that lost its
worker (so a task that kills workers takes no innocent batch-mates down
twice), and one submitted not to run twice (``Flags.NO_RETRY``), which
besides needs a slot of its own: held ahead in a worker's batch, it could
die with that worker before it ever ran, and could not be tried again. When
the next worker in line has no such slot, the pass ends there (the queue
stalls) until a worker that has one is next in line: the task keeps its
place at the front, and nothing behind it overtakes it.

``assign`` is that policy: it reads the task table and the workers' slots
and yields what to send to whom; the broker only sends it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from .. import tuning
from ..protocol import Flags
from .tasktable import TaskTable

# Plain ints, not Flags members: ``int & Flags.X`` runs IntFlag's __rand__
# in Python (about 0.7 us, fifty times ``int & int``), and these tests run
# for every task the broker queues and hands out.
_NO_RETRY = int(Flags.NO_RETRY)
_DIRECT = int(Flags.DIRECT)


@dataclass
class WorkerSlots:
    """What the broker knows of one worker's capacity."""

    blocked: int = 0                           # its tasks waiting on children
    prefetch: int = 0                          # tasks it asked to get ahead
    running: set = field(default_factory=set)  # broker task ids it holds
    ready: bool = False                        # whether it is in the ready line

    def free(self, ahead: int) -> int:
        """Free slots, with at most ``ahead`` tasks taken ahead."""
        return 1 + self.blocked + min(self.prefetch, ahead) - len(self.running)


class Slots:
    """Every worker's slots, and the line of those with a free one."""

    ALL = 1 << 30  # no bound on the tasks ahead: a deep queue

    def __init__(self) -> None:
        self.workers: dict[bytes, WorkerSlots] = {}
        self._ready: deque[bytes] = deque()
        self._ahead = 0
        self._prefetching: set[bytes] = set()  # workers that asked for some

    @property
    def ahead(self) -> int:
        """How many tasks each worker may have ahead now, at most."""
        return self._ahead

    @ahead.setter
    def ahead(self, value: int) -> None:
        if value > self._ahead:
            self._ahead = value
            # Prefetch slots open now: the workers that have them join the line.
            for wid in self._prefetching:
                self.changed(wid)
        self._ahead = value

    def deep_queue(self) -> int:
        """The queue length from which the queue counts as deep."""
        return max(tuning.DEEP_MIN, tuning.DEEP_PER_WORKER * len(self.workers))

    def ahead_now(self, queued: int, queued_alone: int) -> int:
        """The bound on tasks ahead for a queue of ``queued`` tasks, of which
        ``queued_alone`` are not first tries of chunks of maps (see the
        module's text)."""
        if queued >= self.deep_queue():
            return self.ALL
        return 0 if queued_alone else 1

    def free(self, slots: WorkerSlots) -> int:
        return slots.free(self._ahead)

    def share(self, queued: int) -> int:
        """How many of ``queued`` tasks one worker may take at once: an even
        share, so that the first worker in line does not take all of them."""
        return max(1, queued // max(1, len(self.workers)))

    def __len__(self) -> int:
        return len(self.workers)

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
        if slots is not None and not slots.ready and slots.free(self._ahead) > 0:
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
            if slots.free(self._ahead) > 0:
                return wid
        return None


class Assignment(NamedTuple):
    """Tasks for one worker, as one TASK message carries them."""

    worker: bytes
    entries: list   # (btid, flags, payload frames) per task, in queue order
    reply_to: list  # per task: its submitter's tid if DIRECT, else -1


def assign(table: TaskTable, workers: Slots) -> Iterator[Assignment]:
    """Hand queued tasks to workers with free slots: the dispatch policy.

    Yields one ``Assignment`` per worker served, in the order the ready line
    serves them (round robin); ``list(assign(...))`` is a whole pass. It
    yields lazily so the broker sends each batch as soon as it is decided,
    as it did when this was inline; a pass left unfinished leaves the table
    and the slots consistent (the tasks not yet yielded stay queued).

    It sends nothing. It records what it decides, and only that, as it goes
    (a worker that comes back in the same pass is judged by what it was
    just given):

    - ``table``: tasks handed out leave the queue (``queue``, ``queued``,
      ``queued_alone``, ``Task.queued``) and get ``Task.worker``; a task
      that must wait (alone, or stalled) goes back to the front of the
      queue; entries of dropped tasks met on the way are discarded;
    - ``workers``: each task handed out joins its worker's
      ``WorkerSlots.running``; workers leave the ready line and rejoin it
      while they have free slots (``take``, ``changed``); ``ahead`` is set
      from the queue (``ahead_now``).
    """
    queue = table.queue
    next_queued, enqueue = table.next_queued, table.enqueue
    # Shares and tasks ahead count from the queue as it stands before any
    # worker takes its own: the first worker's share does not make the
    # queue look short to the next, so a map's chunks are split evenly.
    # A worker that comes back for more in the same pass is bounded by
    # the queue as it is then: the end of a queue does not pile up ahead
    # at one worker.
    workers.ahead = workers.ahead_now(table.queued, table.queued_alone)
    even_share = workers.share(table.queued)
    served = set()
    while queue:
        wid = workers.take()
        if wid is None:
            return
        slots = workers.workers[wid]
        if wid in served:
            workers.ahead = workers.ahead_now(table.queued, table.queued_alone)
            if workers.free(slots) <= 0:
                workers.changed(wid)  # stays out of line
                continue
        served.add(wid)
        share = min(workers.free(slots), even_share)
        running = slots.running
        entries: list = []
        reply_to: list = []
        stalled = False
        while len(entries) < share:
            task = next_queued()
            if task is None:
                break
            flags = task.flags
            # A task that lost a worker travels alone, and so does one that
            # must not run twice, into a slot of its own (see the module's
            # text).
            once = flags & _NO_RETRY
            alone = task.attempts or once
            if alone and entries:
                enqueue(task.btid, front=True)
                break
            if once and slots.free(0) <= 0:
                enqueue(task.btid, front=True)
                stalled = True  # until a worker has a slot of its own
                break
            task.worker = wid
            running.add(task.btid)
            entries.append((task.btid, flags, task.payload))
            reply_to.append(task.tid if flags & _DIRECT else -1)
            if alone:
                break
        workers.changed(wid)
        if entries:
            yield Assignment(wid, entries, reply_to)
        if stalled:
            return
