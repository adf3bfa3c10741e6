"""Timed jobs of a client process, run by its heartbeat thread.

A job is a function ``job(now) -> float | None``: it does what is due at
``now`` (monotonic) and answers how many seconds until it is due next (None
when nothing waits). The jobs are: the outbox's batches and RECEIVED, the
held task's ``tuning.HOLD_LIMIT``, and a worker's long-running task.

The thread sleeps until the soonest job is due, or ``tuning.TICK`` while the
process has lately held or batched a task (``active_at``), so that holding
and batching need not wake it each time. Whoever creates something due
calls ``wake_by(deadline)``; it wakes the thread only if it would sleep past
the deadline, so a busy process seldom wakes it.
"""

from __future__ import annotations

import threading
from typing import Callable

from . import tuning

Job = Callable[[float], "float | None"]


class Ticker:
    def __init__(self) -> None:
        self._jobs: list[Job] = []
        # When the thread's current sleep ends; infinity while it is awake,
        # so that work added after its jobs ran, and before it sleeps, nudges
        # it (the nudge then ends that sleep at once): none is missed.
        self.wakes_at = float("inf")
        self.active_at = 0.0  # when the process last held or batched a task
        self.thread: threading.Thread | None = None  # the thread running jobs
        self.nudge: Callable[[], None] = lambda: None  # wakes that thread

    def add(self, job: Job) -> None:
        self._jobs.append(job)

    def wake_by(self, deadline: float) -> None:
        """Make sure the jobs run by ``deadline`` (monotonic)."""
        if self.wakes_at > deadline and threading.current_thread() is not self.thread:
            self.nudge()  # (the thread itself runs the jobs before it sleeps)

    def run(self, now: float) -> float | None:
        """Run every job, in the order they were added; seconds until the
        next is due, or None. A job that makes work for a later one (the
        held task's SUBMIT, for the outbox) comes first: ``wake_by`` from
        this thread does nothing, since it assumes the jobs run before it
        sleeps."""
        soonest = None
        for job in self._jobs:
            due = job(now)
            if due is not None and (soonest is None or due < soonest):
                soonest = due
        if now - self.active_at < tuning.ACTIVE_SPAN:
            soonest = tuning.TICK if soonest is None else min(soonest, tuning.TICK)
        return soonest
