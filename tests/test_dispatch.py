"""The broker's dispatch policy and task table, in process, over plain data:
who gets which task (``scheduling.assign``) from the queue
(``tasktable.TaskTable``) and the workers' slots (``scheduling.Slots``).
No sockets: what the broker would send is what ``assign`` yields."""

from __future__ import annotations

import pytest

from scoop_rt import tuning
from scoop_rt.broker.scheduling import Assignment, Slots, assign
from scoop_rt.broker.tasktable import TaskTable
from scoop_rt.protocol import Flags, LostReason, TaskState

ORIGIN = b"origin"

# A policy that never ends its pass hangs rather than fails: make it fail soon.
pytestmark = pytest.mark.timeout(20)


def workers(*credits: int) -> Slots:
    """Workers w0, w1, ... that joined in that order, each having asked for
    its ``credits`` tasks ahead (CREDIT)."""
    slots = Slots()
    for i, credit in enumerate(credits):
        slots.add(b"w%d" % i)
        slots.set_prefetch(b"w%d" % i, credit)
    return slots


def submit(table: TaskTable, count: int, flags: Flags = Flags.NONE,
           first_tid: int = 0) -> list[int]:
    """The origin submits ``count`` tasks; their broker ids."""
    return [table.add(ORIGIN, tid, int(flags), [b"call %d" % tid])
            for tid in range(first_tid, first_tid + count)]


def dispatch(table: TaskTable, slots: Slots) -> list[tuple[bytes, list[int]]]:
    """One pass of the policy: (worker, broker task ids) per TASK message."""
    return [(a.worker, [btid for btid, _, _ in a.entries]) for a in assign(table, slots)]


def finish(table: TaskTable, slots: Slots, wid: bytes, btid: int) -> None:
    """The worker's outcome for the task arrives (as Broker.on_result)."""
    slots.get(wid).running.discard(btid)
    assert table.finish(btid) is not None
    slots.changed(wid)


def lose(table: TaskTable, slots: Slots, wid: bytes, max_attempts: int = 3
         ) -> dict[int, LostReason | None]:
    """The worker is lost (as Broker.lost): what it held is queued again at
    the front, in its order, or fails; {btid: why it failed, or None}."""
    removed = slots.remove(wid)
    held = table.held_by(wid, removed.running)
    outcome = {}
    for btid in reversed(held):
        outcome[btid] = table.lose(btid, max_attempts)
        if outcome[btid] is not None:
            table.finish(btid)
    return outcome


# -- the slots ------------------------------------------------------------------

def test_slots_hand_out_free_workers_in_turn():
    slots = Slots()
    for wid in (b"a", b"b", b"c"):
        slots.add(wid)
    slots.get(b"c").running.add(1)
    taken = []
    while (wid := slots.take()) is not None:
        slots.get(wid).running.add(len(taken) + 10)
        slots.changed(wid)
        taken.append(wid)
    assert taken == [b"a", b"b"]


def test_blocked_and_prefetch_slots_count():
    slots = Slots()
    slots.add(b"a")
    slots.get(b"a").running.add(1)
    assert slots.take() is None
    slots.get(b"a").blocked += 1        # its task waits on children
    slots.changed(b"a")
    assert slots.take() == b"a"
    slots.get(b"a").running.add(2)
    slots.set_prefetch(b"a", 1)         # it asked for one ahead...
    assert slots.take() is None         # ...which counts only in a deep queue
    slots.ahead = Slots.ALL
    assert slots.take() == b"a"
    slots.get(b"a").running.add(3)
    slots.changed(b"a")
    assert slots.take() is None
    slots.remove(b"a")
    assert slots.take() is None and len(slots) == 0


def test_deep_queue_and_even_shares():
    slots = Slots()
    for wid in (b"a", b"b"):
        slots.add(wid)
    assert slots.deep_queue() == tuning.DEEP_MIN
    assert slots.share(100) == 50 and slots.share(1) == 1
    slots.set_prefetch(b"a", 32)
    assert slots.free(slots.get(b"a")) == 1
    slots.ahead = slots.ahead_now(queued=tuning.DEEP_MIN, queued_alone=tuning.DEEP_MIN)
    assert slots.free(slots.get(b"a")) == 33 and slots.free(slots.get(b"b")) == 1
    # A short queue: one ahead if it holds only chunks of maps, else none.
    slots.ahead = slots.ahead_now(queued=3, queued_alone=0)
    assert slots.free(slots.get(b"a")) == 2 and slots.free(slots.get(b"b")) == 1
    slots.ahead = slots.ahead_now(queued=3, queued_alone=1)
    assert slots.free(slots.get(b"a")) == 1


@pytest.mark.parametrize("workers_, deep", [(1, 8), (4, 8), (5, 10), (1000, 2000)])
def test_a_queue_is_deep_at_two_tasks_a_worker_and_eight_at_least(workers_, deep):
    slots = workers(*[0] * workers_)
    assert slots.ahead_now(queued=deep, queued_alone=deep) == Slots.ALL
    assert slots.ahead_now(queued=deep - 1, queued_alone=0) == 1
    assert slots.ahead_now(queued=deep - 1, queued_alone=1) == 0


# -- the table's counts -------------------------------------------------------

def test_the_counts_the_prefetch_rule_reads_follow_the_queue():
    """Chunks that no worker lost do not count as alone; other tasks do,
    and so does a chunk once it has lost a worker. A task dropped while
    queued (cancelled) leaves the counts at once and is skipped."""
    table = TaskTable()
    chunks = submit(table, 3, Flags.CHUNK)
    calls = submit(table, 2, first_tid=3)
    assert (table.queued, table.queued_alone) == (5, 2)
    assert table.probe(ORIGIN, 3, cancel=True) == TaskState.CANCELLED
    assert (table.queued, table.queued_alone) == (4, 1)
    assert table.probe(ORIGIN, 3, cancel=False) == TaskState.UNKNOWN
    slots = workers(0)
    assert dispatch(table, slots) == [(b"w0", [chunks[0]])]
    assert table.probe(ORIGIN, 0, cancel=True) == TaskState.RUNNING
    assert table.probe(ORIGIN, 1, cancel=False) == TaskState.PENDING
    lose(table, slots, b"w0")
    assert (table.queued, table.queued_alone) == (4, 2)  # the lost chunk is alone now
    assert [table.next_queued().btid for _ in range(4)] == [chunks[0], chunks[1],
                                                            chunks[2], calls[1]]
    assert table.next_queued() is None and (table.queued, table.queued_alone) == (0, 0)


# -- the rules ----------------------------------------------------------------

def test_tasks_go_round_robin_to_workers_with_a_free_slot():
    """Each task goes to the next worker in line; a worker whose slot is
    taken waits for its outcome, then joins the line at the back; a task no
    worker has room for stays queued."""
    table, slots = TaskTable(), workers(0, 0, 0)
    first = submit(table, 4)
    assert dispatch(table, slots) == [(b"w0", [first[0]]), (b"w1", [first[1]]),
                                      (b"w2", [first[2]])]
    assert table.queued == 1 and table.tasks[first[3]].worker is None
    finish(table, slots, b"w1", first[1])
    finish(table, slots, b"w0", first[0])
    assert dispatch(table, slots) == [(b"w1", [first[3]])]
    more = submit(table, 2, first_tid=4)
    assert dispatch(table, slots) == [(b"w0", [more[0]])]
    assert table.queued == 1
    assert table.tasks[first[3]].worker == b"w1"
    assert slots.get(b"w1").running == {first[3]}


def test_a_short_queue_goes_one_task_at_a_time():
    """Three tasks are a short queue. They go one at a time, the others
    staying at the broker, where cancel() can still take them back, and from
    where they go to whichever worker is free first: taken ahead, long tasks
    would pile up on one worker."""
    table, slots = TaskTable(), workers(8)
    btids = submit(table, 3)
    for btid in btids:
        assert dispatch(table, slots) == [(b"w0", [btid])]
        assert dispatch(table, slots) == []
        finish(table, slots, b"w0", btid)
    assert dispatch(table, slots) == [] and len(table.tasks) == 0


@pytest.mark.parametrize("credit, sizes", [(8, [2, 1, 1]), (0, [1, 1, 1, 1])])
def test_a_short_queue_of_chunks_keeps_one_ahead(credit, sizes):
    """Four chunks of a map are a short queue too, but a worker whose tasks
    are short (it asked for tasks ahead) gets one more than it runs, so it
    starts the next the moment it ends one; never more than one, so a map's
    long chunks cannot pile up on it. A worker that asked for none gets them
    one at a time."""
    table, slots = TaskTable(), workers(credit)
    btids = submit(table, 4, Flags.CHUNK)
    held: list[int] = []
    got = []
    for _ in sizes:
        (wid, batch), = dispatch(table, slots)
        got.append(len(batch))
        held += batch
        finish(table, slots, wid, held.pop(0))
    assert got == sizes
    assert dispatch(table, slots) == []
    assert sorted(held + [b for b in btids if b not in table.tasks]) == btids


def test_a_short_queue_holding_a_retried_chunk_keeps_none_ahead():
    """A chunk that lost its worker goes alone into a slot of its own, not
    ahead: with it in a short queue, no chunk goes ahead."""
    table, slots = TaskTable(), workers(8, 8)
    btids = submit(table, 4, Flags.CHUNK)
    assert dispatch(table, slots) == [(b"w0", [btids[0], btids[1]]),
                                      (b"w1", [btids[2], btids[3]])]
    lose(table, slots, b"w1")
    finish(table, slots, b"w0", btids[0])
    assert dispatch(table, slots) == []  # w0 holds one ahead already
    finish(table, slots, b"w0", btids[1])
    assert dispatch(table, slots) == [(b"w0", [btids[2]])]
    assert dispatch(table, slots) == []  # not btids[3] ahead: it is alone too


def test_a_map_is_split_evenly_in_one_message_each():
    """Eight chunks, two workers that asked for tasks ahead: each gets four,
    in one message. (The queue was deep when they came; handing the first
    worker its share does not make it look short to the second.)"""
    table, slots = TaskTable(), workers(8, 8)
    btids = submit(table, 8, Flags.CHUNK)
    assert dispatch(table, slots) == [(b"w0", btids[:4]), (b"w1", btids[4:])]
    assert table.queued == 0


def test_a_deep_queue_gives_each_worker_what_it_asked_for_a_share_at_a_time():
    """A deep queue of 100 tasks, two workers asking for 32 ahead: each gets
    its even share (50) bounded by its slots (33); the rest stays queued."""
    table, slots = TaskTable(), workers(32, 32)
    btids = submit(table, 100)
    got = dispatch(table, slots)
    assert got == [(b"w0", btids[:33]), (b"w1", btids[33:66])]
    assert table.queued == 34


def test_the_end_of_a_queue_does_not_pile_up_ahead_at_one_worker():
    """Eight chunks, a worker that asked for tasks ahead and one that asked
    for none: the first gets its even share, the second one chunk, and the
    three left stay at the broker, as a short queue's do, rather than going
    ahead to the first worker when it comes back for more."""
    table, slots = TaskTable(), workers(8, 0)
    btids = submit(table, 8, Flags.CHUNK)
    assert dispatch(table, slots) == [(b"w0", btids[:4]), (b"w1", [btids[4]])]
    assert table.queued == 3


def test_a_worker_that_comes_back_in_the_same_pass_gets_more_while_the_queue_is_deep():
    """Three workers, the third with no room: the two others' even shares
    (a third of 30, counted from the queue at the start of the pass) leave
    a deep queue, so the first in line comes back for more in the same
    pass, and takes the rest."""
    table, slots = TaskTable(), workers(32, 32, 0)
    slots.get(b"w2").running.add(999)  # busy with a task of another run
    btids = submit(table, 30)
    got = dispatch(table, slots)
    assert got == [(b"w0", btids[:10]), (b"w1", btids[10:20]),
                   (b"w0", btids[20:30])]
    assert table.queued == 0


def test_a_retried_task_travels_alone():
    """Tasks that lost their worker are queued again at the front, in their
    order, and each goes in a message of its own, even in a deep queue to a
    worker with room for many; a batch being filled stops before one, which
    goes first to the next worker."""
    table, slots = TaskTable(), workers(8, 8)
    btids = submit(table, 16, Flags.CHUNK)
    assert dispatch(table, slots) == [(b"w0", btids[:8]), (b"w1", btids[8:])]
    assert lose(table, slots, b"w0") == dict.fromkeys(btids[:8])
    assert [table.tasks[b].attempts for b in btids[:8]] == [1] * 8
    # w1 gives back (RETURN) one it had not started: ahead of the retried ones.
    slots.get(b"w1").running.discard(btids[15])
    table.give_back(btids[15])
    slots.changed(b"w1")
    fresh = submit(table, 8, Flags.CHUNK, first_tid=16)
    slots.add(b"w2")
    slots.set_prefetch(b"w2", 32)
    got = dispatch(table, slots)
    # w1 has room for two: it takes the given-back chunk, and its batch
    # stops before the first retried one, which goes to w2 alone; w1, back
    # in the same pass with one slot, gets the next retried one; w2 the
    # others, one message each, then the fresh ones in one batch.
    assert got == ([(b"w1", [btids[15]]), (b"w2", [btids[0]]), (b"w1", [btids[1]])]
                   + [(b"w2", [b]) for b in btids[2:8]] + [(b"w2", fresh)])
    assert table.queued == 0


def test_a_task_lost_too_often_fails_with_its_reason():
    table, slots = TaskTable(), workers()
    btid, = submit(table, 1)
    for attempt in range(2):
        slots.add(b"v%d" % attempt)
        assert dispatch(table, slots) == [(b"v%d" % attempt, [btid])]
        assert lose(table, slots, b"v%d" % attempt, max_attempts=3) == {btid: None}
    slots.add(b"last")
    assert dispatch(table, slots) == [(b"last", [btid])]
    assert lose(table, slots, b"last", max_attempts=3) == {
        btid: LostReason.TOO_MANY_ATTEMPTS}
    assert len(table.tasks) == 0 and (ORIGIN, 0) not in table.by_client


def test_a_task_not_to_run_twice_fails_when_its_worker_is_lost():
    table, slots = TaskTable(), workers(0, 0)
    once, = submit(table, 1, Flags.NO_RETRY)
    other, = submit(table, 1, first_tid=1)
    assert dispatch(table, slots) == [(b"w0", [once]), (b"w1", [other])]
    assert lose(table, slots, b"w0") == {once: LostReason.NO_RETRY_LOST}
    assert lose(table, slots, b"w1") == {other: None}
    assert table.queued == 1


def test_a_task_not_to_run_twice_goes_alone_into_a_slot_of_its_own():
    """In a deep queue, to workers that asked for many ahead, each NO_RETRY
    task goes in a message of its own, and only to a worker with nothing
    else: held in a batch, it could die unrun with its worker."""
    table, slots = TaskTable(), workers(32, 32)
    first = submit(table, 4)
    once = submit(table, 2, Flags.NO_RETRY, first_tid=4)
    rest = submit(table, 10, first_tid=6)
    got = dispatch(table, slots)
    # w0 takes its share up to the first NO_RETRY task; w1, with nothing
    # yet, takes that one alone; w0 comes back, but holds tasks: the queue
    # stalls there, the second NO_RETRY task first in it.
    assert got == [(b"w0", first), (b"w1", [once[0]])]
    assert [table.next_queued().btid for _ in range(2)] == [once[1], rest[0]]


def test_a_task_not_to_run_twice_stalls_the_queue_until_a_worker_has_a_slot_of_its_own():
    """The next worker in line has only slots for tasks ahead: the NO_RETRY
    task keeps its place at the front, and nothing behind it goes either,
    until a worker with a slot of its own comes."""
    table, slots = TaskTable(), workers(8, 0)
    busy = submit(table, 2)  # one each: w0 then has prefetch slots only
    assert dispatch(table, slots) == [(b"w0", [busy[0]]), (b"w1", [busy[1]])]
    once, = submit(table, 1, Flags.NO_RETRY, first_tid=2)
    rest = submit(table, 9, Flags.CHUNK, first_tid=3)
    assert dispatch(table, slots) == []  # w0 first in line: the queue stalls
    assert (table.queued, table.tasks[once].worker) == (10, None)
    finish(table, slots, b"w1", busy[1])
    # w1 joins the line after w0, which stalls the queue again.
    assert dispatch(table, slots) == []
    # Next pass: w1 is first in line (w0 went back behind it).
    got = dispatch(table, slots)
    assert got == [(b"w1", [once]), (b"w0", rest[:5])]
    assert table.tasks[once].worker == b"w1"


def test_each_task_names_where_its_outcome_goes():
    """A DIRECT task's outcome goes straight to its submitter: its TASK
    names the submitter's tid; the others' -1."""
    table, slots = TaskTable(), workers(8)
    submit(table, 4, Flags.CHUNK | Flags.DIRECT)
    submit(table, 4, Flags.CHUNK, first_tid=4)
    assignment, = assign(table, slots)
    assert isinstance(assignment, Assignment)
    assert assignment.reply_to == [0, 1, 2, 3, -1, -1, -1, -1]
    assert [flags for _, flags, _ in assignment.entries] == (
        [int(Flags.CHUNK | Flags.DIRECT)] * 4 + [int(Flags.CHUNK)] * 4)
    assert [payload for _, _, payload in assignment.entries] == [
        [b"call %d" % tid] for tid in range(8)]


def test_a_direct_task_stays_its_workers_until_the_origin_has_its_outcome():
    """A worker that sent a DIRECT task's outcome to the origin is free
    again, but the task is still its own: lost before the origin says it has
    the outcome, the task runs again elsewhere; after, nothing is left."""
    table, slots = TaskTable(), workers(0, 0)
    btid, = submit(table, 1, Flags.CHUNK | Flags.DIRECT)
    assert dispatch(table, slots) == [(b"w0", [btid])]
    slots.get(b"w0").running.discard(btid)  # its DELIVERED
    table.deliver(b"w0", btid)
    slots.changed(b"w0")
    assert lose(table, slots, b"w0") == {btid: None}
    assert dispatch(table, slots) == [(b"w1", [btid])]
    slots.get(b"w1").running.discard(btid)
    table.deliver(b"w1", btid)
    table.received(ORIGIN, 0)
    assert len(table.tasks) == 0 and table.delivered == {b"w1": set()}
    assert lose(table, slots, b"w1") == {}


def test_a_lost_submitters_tasks_are_dropped_and_skipped():
    table, slots = TaskTable(), workers(0)
    theirs = [table.add(b"w9", tid, 0, [b"x"]) for tid in range(3)]
    ours = submit(table, 1)
    table.forget_submitter(b"w9")
    assert (len(table.tasks), table.queued) == (1, 1)
    assert dispatch(table, slots) == [(b"w0", ours)]
    assert not set(theirs) & set(table.tasks)
