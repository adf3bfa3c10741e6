"""The client's pieces that need no socket, tested alone: the outbox's
batching rules (with a fake send), the prefetch rule, the ticker and the
held task's policy."""

from __future__ import annotations

import threading
import time

import pytest

from scoop_rt import protocol, tuning
from scoop_rt.holding import Holder
from scoop_rt.outbox import Outbox
from scoop_rt.prefetch import Prefetch
from scoop_rt.protocol import Flags, Msg, TaskState
from scoop_rt.ticker import Ticker


class Sent(list):
    """A fake send: the messages, decoded, in the order they went."""

    def __call__(self, frames):
        self.append(protocol.decode(frames))

    def batches(self):
        return [(m.type, [tid for tid, _, _ in protocol.split_batch(m)])
                for m in self if m.type in protocol.BATCHES]


class Nudges(Ticker):
    def __init__(self):
        super().__init__()
        self.deadlines = []

    def wake_by(self, deadline):
        self.deadlines.append(deadline)


def entry(tid, size=10):
    return (tid, 0, [b"x" * size])


def test_a_lone_entry_goes_at_once_and_others_wait_for_company():
    sent, ticker = Sent(), Nudges()
    box = Outbox(sent, ticker)
    box.queue(Msg.SUBMIT, entry(1), at_once=True)
    assert sent.batches() == [(Msg.SUBMIT, [1])]
    box.queue(Msg.SUBMIT, entry(2))
    box.queue(Msg.SUBMIT, entry(3), at_once=True)  # company waits: it joins
    assert len(sent) == 1 and box.since is not None
    # The ticker is asked to look by BATCH_DELAY after the first entry, once.
    assert len(ticker.deadlines) == 1
    assert ticker.deadlines[0] == pytest.approx(box.since + tuning.BATCH_DELAY)
    box.flush()
    assert sent.batches() == [(Msg.SUBMIT, [1]), (Msg.SUBMIT, [2, 3])]
    assert box.since is None


def test_a_full_batch_goes_by_count_or_by_bytes(monkeypatch):
    monkeypatch.setattr(tuning, "BATCH_MAX", 4)
    monkeypatch.setattr(tuning, "BATCH_BYTES", 1000)
    sent = Sent()
    box = Outbox(sent, Nudges())
    for tid in range(1, 6):
        box.queue(Msg.RESULT, entry(tid))
    assert sent.batches() == [(Msg.RESULT, [1, 2, 3, 4])]
    box.queue(Msg.RESULT, entry(6, size=2000))  # past BATCH_BYTES with 5
    assert sent.batches()[-1] == (Msg.RESULT, [5, 6])


def test_another_message_goes_after_the_batches_and_received_rides_along():
    sent = Sent()
    box = Outbox(sent, Nudges())
    box.queue(Msg.SUBMIT, entry(1))
    box.queue(Msg.RESULT, entry(2))
    box.received([7, 8])
    box.send(Msg.PROBE, 1, 0)
    assert [m.type for m in sent] == [Msg.SUBMIT, Msg.RESULT, Msg.RECEIVED, Msg.PROBE]
    assert sent[2].fields.tids == [7, 8]
    # RECEIVED alone never makes a message by itself before RECEIVED_WAIT...
    box.received([9])
    now = time.monotonic()
    assert box.job(now) is None and len(sent) == 4
    # ...and goes when the ticker runs after it.
    box.job(now + 2 * tuning.RECEIVED_WAIT)
    assert sent[-1].type == Msg.RECEIVED and sent[-1].fields.tids == [9]


def test_the_tickers_job_sends_a_batch_once_it_has_waited_batch_delay():
    sent = Sent()
    box = Outbox(sent, Nudges())
    box.queue(Msg.SUBMIT, entry(1))
    since = box.since
    assert box.job(since) == pytest.approx(tuning.BATCH_DELAY)
    assert not sent
    assert box.job(since + 2 * tuning.BATCH_DELAY) is None
    assert sent.batches() == [(Msg.SUBMIT, [1])]


def observe(rule, took):
    """What a worker does with a task's duration: the credit it sends, or None."""
    credit = rule.observe(took)
    return credit if credit is not None and rule.tell(credit) else None


def test_prefetch_covers_short_tasks_and_stops_for_long_ones():
    rule = Prefetch(most=32)
    # Tasks of 0.1 ms, smoothed from nothing: at first they look shorter,
    # and the most (32) is asked for; then 2 ms (PREFETCH_COVER) is 20 such
    # tasks, 16 as a power of two, within a factor of 4 of 32: no message.
    told = [observe(rule, 0.0001) for _ in range(30)]
    assert [t for t in told if t is not None] == [32] and rule.told == 32
    # Tasks of 1 ms: as the smoothed duration nears it, 4 ahead is the
    # first far enough from 32 to be told; 2 then is near 4.
    told = [observe(rule, 0.001) for _ in range(30)]
    assert [t for t in told if t is not None] == [4]
    # One long task: none ahead at once.
    assert observe(rule, tuning.PREFETCH_STOP_ABOVE * 2) == 0
    assert not rule.tell(0)  # none asked for already: nothing to send
    # Never more than Config.prefetch; 0 turns it off.
    assert max(filter(None, (observe(Prefetch(4), 1e-7) for _ in range(5)))) == 4
    assert all(observe(Prefetch(0), 1e-7) is None for _ in range(5))


def test_a_long_task_tells_zero_once():
    rule = Prefetch(most=32)
    assert observe(rule, 0.0001)
    assert rule.tell(0) and rule.told == 0
    assert not rule.tell(0)
    # Observing reads what was told: the next short task asks again.
    assert observe(rule, 0.0001) == 32


def test_the_ticker_runs_every_job_and_answers_the_soonest():
    ticker = Ticker()
    ran = []
    ticker.add(lambda now: ran.append(("a", now)) or 0.5)
    ticker.add(lambda now: ran.append(("b", now)) or None)
    ticker.add(lambda now: ran.append(("c", now)) or 0.2)
    assert ticker.run(100.0) == 0.2
    assert ran == [("a", 100.0), ("b", 100.0), ("c", 100.0)]
    ticker.active_at = 100.0  # lately active: it looks every TICK
    assert ticker.run(100.0) == tuning.TICK
    nudged = []
    ticker.nudge = lambda: nudged.append(1)
    ticker.wakes_at = 10.0
    ticker.wake_by(20.0)  # it wakes before then anyway
    ticker.wake_by(5.0)
    assert nudged == [1]


def test_a_held_task_sent_by_the_ticker_leaves_within_batch_delay(monkeypatch):
    """The held task's job runs before the outbox's: the SUBMIT it queues
    is timed in the same round, not left to the next tick."""
    monkeypatch.setattr(tuning, "TICK", 10.0)  # no ticking to hide it
    monkeypatch.setattr(tuning, "HOLD_LIMIT", 0.0)  # held long enough at once
    ticker, sent = Ticker(), Sent()
    box = Outbox(sent, ticker)
    holder = Holder(lambda held: box.queue(Msg.SUBMIT, (held.future._tid, 0, held.frames)),
                    lambda held: None, ticker, may_hold=lambda chunk: True)
    ticker.add(holder.job)
    ticker.add(box.job)
    holder.hold(FakeFuture(1), [b"1"], Flags.NONE)
    due = ticker.run(time.monotonic())
    assert holder.held is None and box.since is not None and not sent
    assert due is not None and due <= 2 * tuning.BATCH_DELAY  # not TICK


class FakeFuture:
    def __init__(self, tid):
        self._tid = tid


def test_a_held_task_runs_in_place_only_on_its_own_thread():
    sent, ran = [], []
    holder = Holder(sent.append, ran.append, Nudges(), may_hold=lambda chunk: True)
    first, second = FakeFuture(1), FakeFuture(2)
    holder.hold(first, [b"1"], Flags.NONE)
    holder.hold(second, [b"2"], Flags.NONE)  # the first goes now
    assert [h.future for h in sent] == [first]
    other = threading.Thread(target=holder.run_if_held, args=(second,))
    other.start()
    other.join(timeout=10)
    assert not ran and holder.held is not None  # not that thread's to run
    holder.run_if_held(second)
    assert [h.future for h in ran] == [second] and holder.held is None


def test_a_held_task_is_pending_then_cancelled_here_and_sent_after_hold_limit():
    sent, ran = [], []
    holder = Holder(sent.append, ran.append, Nudges(), may_hold=lambda chunk: True)
    holder.hold(FakeFuture(1), [b"1"], Flags.NONE)
    assert holder.probe(2, cancel=True) is None  # not held: the broker's to say
    assert holder.probe(1, cancel=False) == TaskState.PENDING
    assert holder.probe(1, cancel=True) == TaskState.CANCELLED
    assert holder.held is None and not sent and not ran
    holder.hold(FakeFuture(3), [b"3"], Flags.NONE)
    since = holder.held.since
    assert holder.job(since) == pytest.approx(tuning.HOLD_LIMIT)
    assert holder.job(since + 2 * tuning.HOLD_LIMIT) is None
    assert [h.future._tid for h in sent] == [3]
