"""The worker role: import the user's script, then run the tasks the broker
hands out and send back their outcomes.

Started by the launcher as ``python -m scoop_rt.worker``, with the bootstrap
on stdin. The script is imported as a module that is not ``__main__`` to its
own code, so its functions and globals exist and its
``if __name__ == "__main__":`` block does not run.

A task that waits on futures of its own keeps this worker serving: the wait
reads the broker's messages, and a new task that arrives meanwhile runs right
there, on top of the waiting one (see ``client.Client.block_until``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque

from . import bootstrap, protocol, runtime, serialization, transport
from .client import Client, log
from .config import Config
from .exits import exit_now
from .protocol import Flags, Msg, Role, Status

# Nested tasks run on the stack of the tasks that wait under them: give the
# serving thread a deep stack and Python a matching recursion limit.
STACK_BYTES = 512 * 1024 * 1024
RECURSION_LIMIT = 100_000
# A worker whose tasks are short asks for enough tasks ahead to cover
# PREFETCH_COVER seconds of work (at most Config.prefetch), so it never idles
# waiting for the broker; it stops asking once a task has run longer than
# PREFETCH_STOP_ABOVE (the heartbeat thread says so while the task still
# runs), so no more tasks go ahead to wait behind a long one.
PREFETCH_COVER = 0.002
PREFETCH_STOP_ABOVE = 0.01
# Longest an outcome waits for the next ones of its batch before it goes.
RESULT_WAIT = 0.0005


class WorkerClient(Client):
    """A worker's connection. Work-first for nested futures: the newest child
    a task submits is held back; if the task then waits (it usually waits on
    that very child), the worker runs the child itself, right there, instead
    of sending it away and waiting for a reply. A child is sent to the broker
    as soon as another is submitted, when the task ends, or after
    ``HOLD_LIMIT`` seconds (by the heartbeat thread), so siblings still run
    in parallel on other workers."""

    role = Role.WORKER

    def __init__(self, boot: dict):
        super().__init__(boot)
        self._handlers[Msg.TASK] = self.on_task
        self.importing = False
        self._prefetch = 0
        self._prefetch_lock = threading.Lock()
        self._took = 0.0  # recent task durations, smoothed
        self._running_since: float | None = None  # the running task's start
        self._waits: list = []  # _running_since of each wait under way
        self._serving = threading.get_ident()
        # (tid, flags, frames, reply_to) handed to this worker and not
        # started yet (reply_to: the origin's tid for a DIRECT task).
        # The serving thread takes them and the heartbeat thread may give
        # them back (send_due), each with popleft(), which is thread-safe:
        # every task goes one way.
        self._inbox: deque = deque()

    def check_may_submit(self) -> None:
        if self.importing:
            raise RuntimeError(
                "futures were used at the top level of the script, which every "
                "worker runs when it imports the script; put that code under "
                "'if __name__ == \"__main__\":'")

    def may_hold(self, chunk: bool) -> bool:
        return bool(self._depth) and threading.get_ident() == self._serving

    def before_block(self) -> None:
        # About to wait: rather than idle, run the held child here (only the
        # thread that submitted it may: it runs on that thread's stack).
        me = threading.get_ident()
        held = self._take_held(lambda held: held.thread == me)
        if held is not None:
            self.run_held(held)

    def serve(self) -> None:
        """Handle messages until the broker ends the run."""
        self._serving = threading.get_ident()
        self.start()
        self.block_until(lambda: False, None)

    def blocking(self, starts: bool) -> None:
        if threading.get_ident() != self._serving:
            return  # the serving thread is busy: no task can run meanwhile
        # A task waiting on its children frees this worker for one more task
        # (send() sends the outcomes and children waiting to go first).
        if self._depth:
            self.send(Msg.WAITING if starts else Msg.RESUMED)
        # Waiting is not running: a task that waits on its children does not
        # count as long (the tasks that run meanwhile count alone).
        if starts:
            self._waits.append(self._running_since)
            self._running_since = None
        elif self._waits.pop() is not None:
            self._running_from(time.monotonic())

    def on_task(self, msg) -> None:
        replies = msg.fields.reply_to
        if self._outcomes_out is None and self.outcomes_endpoint and max(replies, default=-1) >= 0:
            self._outcomes_out = transport.OutcomesOutbox(self.outcomes_endpoint, self.keys)
        self._inbox.extend(
            (tid, flags, frames, reply_to) for (tid, flags, frames), reply_to
            in zip(protocol.split_batch(msg), replies))
        while self.run_queued():
            pass

    def run_queued(self) -> bool:
        """Run the next task handed to this worker; whether there was one.

        Also called while a task waits on its children: tasks that came in
        the same batch then run meanwhile, as new ones would."""
        if threading.get_ident() != self._serving:
            return False
        try:
            tid, flags, frames, reply_to = self._inbox.popleft()
        except IndexError:
            return False
        started = time.monotonic()
        outer = self._running_since
        self._running_from(started)
        try:
            status, outcome = self._run(frames)
        finally:
            self._running_since = outer
        # A new prefetch is told first: the outcome follows right behind it,
        # and the two cost one wake-up of the socket's thread, not two.
        self._tune_prefetch(time.monotonic() - started)
        # The last outcome of a batch goes at once, with those before it; so
        # do a map's chunk (its values are awaited in order, and are many)
        # and outcomes that have waited RESULT_WAIT for company. A DIRECT
        # chunk's goes straight to the origin if it can, and the broker is
        # told it went (DELIVERED) as other outcomes are.
        if reply_to >= 0 and self._outcomes_out is not None and self._outcomes_out.send(
                protocol.encode_batch(Msg.RESULT, [(reply_to, status, outcome)])):
            status, outcome, at_once = Status.DELIVERED, [], not self._inbox
        else:
            at_once = not self._inbox or flags & Flags.CHUNK
        self.queue(Msg.RESULT, (tid, int(status), outcome), at_once=at_once)
        since = self._batch_since
        if since is not None and (at_once or time.monotonic() - since >= RESULT_WAIT):
            self.flush()
        return True

    def _tune_prefetch(self, took: float) -> None:
        """Ask for tasks ahead while tasks are short, so none waits for the
        broker's round trip; stop when they are long, so a queued task is not
        kept from an idle worker behind a long one."""
        self._took = took if took > PREFETCH_STOP_ABOVE else 0.8 * self._took + 0.2 * took
        if self._took > PREFETCH_STOP_ABOVE:
            wanted = 0
        else:
            wanted = min(self.config.prefetch,
                         _power_of_two(PREFETCH_COVER / max(self._took, 1e-6)))
        asked = self._prefetch
        if wanted and asked and max(wanted, asked) < 4 * min(wanted, asked):
            return  # twice or half as many ahead is not worth a message
        self._ask_ahead(wanted)

    def _ask_ahead(self, wanted: int) -> None:
        with self._prefetch_lock:
            if wanted != self._prefetch:
                self._prefetch = wanted
                self.send(Msg.CREDIT, wanted)

    def _has_ahead(self) -> bool:
        """Whether this worker has something to take back should its task
        run long: tasks ahead it asks for, or tasks it holds unstarted."""
        return bool(self._prefetch or self._inbox)

    def _running_from(self, since: float) -> None:
        """The running task counts from ``since``: the heartbeat thread
        looks when it turns long, if there is anything to take back then."""
        self._running_since = since
        if self._has_ahead():
            self.heartbeat.wake_by(since + PREFETCH_STOP_ABOVE)

    def _running_long(self, now: float) -> float | None:
        """Seconds until the running task counts as long (negative: it does
        already), while this worker has something to take back; else None."""
        since = self._running_since
        if since is None or not self._has_ahead():
            return None
        return since + PREFETCH_STOP_ABOVE - now

    def due_in(self) -> float | None:
        due = super().due_in()
        left = self._running_long(time.monotonic())
        if left is None:
            return due
        return left if due is None else min(due, left)

    def send_due(self) -> None:
        """Also, from the heartbeat thread: a task that has run long
        withdraws the prefetch that was judged from shorter ones, so the
        broker sends no more tasks ahead to wait behind it, and gives back
        those it holds but has not started, for whoever is free."""
        super().send_due()
        left = self._running_long(time.monotonic())
        if left is not None and left <= 0:
            self._ask_ahead(0)
            waiting = []
            while True:
                try:
                    waiting.append(self._inbox.popleft()[0])
                except IndexError:  # none left (the serving thread may take the last)
                    break
            if waiting:
                self.send(Msg.RETURN, waiting)



def _power_of_two(x: float) -> int:
    """The largest power of two at most ``x`` (0 below 1): few distinct
    values, so a worker seldom needs to tell the broker a new one."""
    return 0 if x < 1 else 1 << (int(x).bit_length() - 1)


def main() -> None:
    boot = bootstrap.read(sys.stdin)
    sys.stdin = open("/dev/null")
    bootstrap.setup_logging(Config.from_dict(boot["config"]), boot["name"])
    bootstrap.publish(boot, is_origin=False)
    # Whole lines reach the launcher as soon as they are printed.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    client = WorkerClient(boot)
    runtime.current = client
    load_script(client, boot)
    threading.stack_size(STACK_BYTES)
    sys.setrecursionlimit(RECURSION_LIMIT)
    server = threading.Thread(target=_serve, args=(client,), name="scoop_rt-serve")
    server.start()
    server.join()


def _serve(client: WorkerClient) -> None:
    try:
        client.serve()
    except BaseException as exc:  # the serving loop itself failed: say so
        log.error("%s stopped: %r", client.name, exc)
        exit_now(1)


def load_script(client: WorkerClient, boot: dict) -> None:
    """Import the user's script; a failure is kept to explain task errors."""
    script = boot.get("script")
    if not script:
        return
    module = bootstrap.script_module(script, serialization.SCRIPT_MODULE)
    client.importing = True
    try:
        code = bootstrap.prepare_script(script, boot.get("argv", []))
        exec(code, module.__dict__)
    except BaseException as exc:  # the origin reports the script's own errors
        client.script_error = f"{type(exc).__name__}: {exc}"
        log.debug("could not import %s: %s", script, client.script_error)
    finally:
        client.importing = False


if __name__ == "__main__":
    main()
