"""Scheduling policy: plain functions over plain data, no sockets.

A worker offers slots: one, plus one for each of its tasks that is blocked
waiting on futures of its own. The broker hands a queued task to a worker
with a free slot, the one with the most free slots first, so work spreads
evenly and a worker whose tasks are all blocked gets new work at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WorkerSlots:
    """What the broker knows of one worker's capacity."""

    offered: int = 1                          # 1 + tasks blocked on children
    running: set = field(default_factory=set)  # broker task ids it holds

    @property
    def free(self) -> int:
        return self.offered - len(self.running)


def pick_workers(count: int, workers: dict) -> list:
    """Which workers get the next ``count`` queued tasks, in order.

    ``workers`` maps a worker's id to its ``WorkerSlots``; the slots are not
    changed. Fewer than ``count`` ids come back when slots run out.
    """
    free = {wid: slots.free for wid, slots in workers.items() if slots.free > 0}
    picks = []
    while free and len(picks) < count:
        wid = max(free, key=free.__getitem__)
        picks.append(wid)
        free[wid] -= 1
        if not free[wid]:
            del free[wid]
    return picks
