"""The broker's task table: every task it holds and where each stands.

Plain data, no sockets: the broker's handlers tell it what happened (a
submit, an outcome, a worker lost) and send whatever it answers; the
dispatch policy (``scheduling.assign``) takes tasks out of its queue. A task
is known by the broker's own id for it (``btid``), and by its submitter's
``(identity, tid)``.

Where a task stands:

    queued     in ``queue`` (FIFO; a task put back goes to the front), no worker
    held       a worker has it (``Task.worker``, and that worker's
               ``WorkerSlots.running``, which ``scheduling`` keeps)
    delivered  its worker sent the outcome straight to the origin (DIRECT) and
               is free again, but the origin has not said it has it: the
               task is still that worker's (``delivered``), run again if that
               worker is lost
    gone       answered, failed or cancelled: not in the table

The queue may keep entries of tasks dropped while queued (cancelled, their
submitter gone): they are skipped when reached, which keeps a drop constant
time. ``queued`` and ``queued_alone`` count only live entries; they are what
the prefetch rule reads (``Slots.ahead_now``).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

from ..protocol import Flags, LostReason, TaskState

# Plain ints, not Flags members: ``int & Flags.X`` runs IntFlag's __rand__
# in Python (about 0.7 us, fifty times ``int & int``), and these tests run
# for every task the broker queues and hands out.
_CHUNK = int(Flags.CHUNK)
_NO_RETRY = int(Flags.NO_RETRY)
_DIRECT = int(Flags.DIRECT)


@dataclass
class Task:
    btid: int         # the broker's id for it
    submitter: bytes
    tid: int          # the submitter's own id for it
    flags: int
    payload: list
    worker: bytes | None = None
    attempts: int = 0     # how many of its workers were lost
    queued: bool = False  # has a live entry in the table's queue


class TaskTable:
    """Every task the broker holds: the queue, who holds what, and counts."""

    def __init__(self) -> None:
        self.tasks: dict[int, Task] = {}
        self.by_client: dict[tuple[bytes, int], int] = {}
        # Tasks each worker sent straight to the origin (DIRECT) that the
        # origin has not said it has (RECEIVED): run again if it is lost.
        self.delivered: dict[bytes, set[int]] = {}
        self.queue: deque[int] = deque()  # may hold entries of dropped tasks
        self.queued = 0  # live entries in ``queue``
        # Those that stay at the broker while the queue is short: all but
        # the chunks of maps that no worker has lost yet.
        self.queued_alone = 0
        self._btids = itertools.count(1)

    # -- a task's life ----------------------------------------------------------

    def add(self, submitter: bytes, tid: int, flags: int, payload: list,
            queue: bool = True) -> int:
        """Take a submitted task; its broker id. It is queued at the back
        unless ``queue`` is false (it is about to fail)."""
        btid = next(self._btids)
        task = self.tasks[btid] = Task(btid, submitter, tid, flags, payload)
        self.by_client[submitter, tid] = btid
        if queue:
            self.queue.append(btid)
            task.queued = True
            self.queued += 1
            if not flags & _CHUNK:
                self.queued_alone += 1
        return btid

    def enqueue(self, btid: int, front: bool = False) -> None:
        """Queue a task held by nobody, at the back or (put back) the front."""
        task = self.tasks[btid]
        if front:
            self.queue.appendleft(btid)
        else:
            self.queue.append(btid)
        task.queued = True
        self.queued += 1
        if task.attempts or not task.flags & _CHUNK:
            # (a retried chunk goes alone into a slot of its own, not ahead)
            self.queued_alone += 1

    def next_queued(self) -> Task | None:
        """Take the first live task out of the queue; None if it is empty.
        The caller gives it to a worker or puts it back (``enqueue``)."""
        queue, tasks = self.queue, self.tasks
        while queue:
            task = tasks.get(queue.popleft())
            if task is not None and task.queued:
                self._unqueued(task)
                return task
        return None

    def _unqueued(self, task: Task) -> None:
        task.queued = False
        self.queued -= 1
        if task.attempts or not task.flags & _CHUNK:
            self.queued_alone -= 1

    def drop(self, btid: int) -> Task | None:
        """Forget a task (its queue entry, if any, is skipped from now on);
        its submitter's index entry stays (see ``finish``)."""
        task = self.tasks.pop(btid, None)
        if task is not None and task.queued:
            self._unqueued(task)
        return task

    def finish(self, btid: int) -> Task | None:
        """Forget a task whose outcome goes to its submitter now; None if
        it is gone already (cancelled, or answered by another attempt)."""
        task = self.tasks.pop(btid, None)
        if task is None:
            return None
        if task.queued:
            self._unqueued(task)
        self.by_client.pop((task.submitter, task.tid), None)
        return task

    def deliver(self, worker: bytes, btid: int) -> None:
        """``worker`` sent this task's outcome straight to the origin: the
        task stays the worker's until the origin says it has it."""
        if btid in self.tasks:
            self.delivered.setdefault(worker, set()).add(btid)

    def received(self, submitter: bytes, tid: int) -> None:
        """The origin has this DIRECT task's outcome: the task is done. (Its
        worker's slot was freed by the worker's DELIVERED, not here: one
        running it again, its first worker lost, is still busy with it.)"""
        btid = self.by_client.get((submitter, tid))
        task = None if btid is None else self.tasks.get(btid)
        if btid is None or task is None or not task.flags & _DIRECT:
            return  # done already (another attempt's), or not such a task
        del self.by_client[submitter, tid]
        self.drop(btid)
        if task.worker is not None:
            self.delivered.get(task.worker, set()).discard(btid)

    def give_back(self, btid: int) -> None:
        """A worker returns a task it held but never started: it goes back
        to the front of the queue, for whoever is free."""
        task = self.tasks.get(btid)
        if task is None:
            return  # dropped meanwhile: its submitter is gone
        task.worker = None
        self.enqueue(btid, front=True)

    def probe(self, submitter: bytes, tid: int, cancel: bool) -> TaskState:
        """Where a submitter's task stands; with ``cancel``, drop it if it
        is still queued."""
        btid = self.by_client.get((submitter, tid))
        task = self.tasks.get(btid) if btid is not None else None
        if btid is None or task is None:
            return TaskState.UNKNOWN
        if task.worker is not None:
            return TaskState.RUNNING
        if cancel:
            self.drop(btid)  # its queue entry is skipped at dispatch
            del self.by_client[submitter, tid]
            return TaskState.CANCELLED
        return TaskState.PENDING

    # -- a worker or a submitter lost ---------------------------------------------

    def held_by(self, worker: bytes, running: set[int]) -> list[int]:
        """The tasks a lost worker held (``running``, its slots') and those it
        delivered that the origin has not said it has, in submission order;
        forgets the latter as the worker's."""
        return sorted(running | self.delivered.pop(worker, set()))

    def lose(self, btid: int, max_attempts: int) -> LostReason | None:
        """A worker holding this task was lost. The task goes back to the
        front of the queue for another attempt, and None is returned; or, if
        it may not be tried again, the reason, and the caller fails it."""
        task = self.tasks.get(btid)
        if task is None:
            return None
        task.attempts += 1
        task.worker = None
        if task.flags & _NO_RETRY:
            return LostReason.NO_RETRY_LOST
        if task.attempts >= max_attempts:
            return LostReason.TOO_MANY_ATTEMPTS
        self.enqueue(btid, front=True)
        return None

    def forget_submitter(self, submitter: bytes) -> None:
        """A submitter is gone: drop every task it is still waiting on."""
        for key in [k for k in self.by_client if k[0] == submitter]:
            self.drop(self.by_client.pop(key))
