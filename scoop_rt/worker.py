"""The worker role: import the user's script, then run the tasks the broker
hands out and send back their outcomes.

Started by the launcher as ``python -m scoop_rt.worker``, with the bootstrap
on stdin. The script is imported as a module that is not ``__main__`` to its
own code, so its functions and globals exist and its
``if __name__ == "__main__":`` block does not run.

A task that waits on futures of its own keeps this worker serving: the wait
reads the broker's messages, and a new task that arrives meanwhile runs right
there, on top of the waiting one (see ``connection.Connection.block_until``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque

from . import bootstrap, protocol, runtime, serialization, transport, tuning
from .bootstrap import ClientBoot
from .client import Client, log
from .exits import exit_now
from .prefetch import Prefetch
from .protocol import Flags, Msg, Role, Status


class Serving:
    """A worker's tasks: those handed to it (its inbox), run one after the
    other on its serving thread, and how many it asks for ahead.

    Work-first for nested futures: the newest child a task submits is held
    back; if the task then waits (it usually waits on that very child), the
    worker runs the child itself, right there, instead of sending it away
    and waiting for a reply. A task that waits frees this worker for one
    more task (WAITING, RESUMED), which runs right there, on top of it.
    """

    def __init__(self, client: Client, outcomes: str | None = None):
        self.client = client
        self.outcomes_endpoint = outcomes  # the origin's socket (DIRECT)
        self.thread = threading.get_ident()  # the serving thread
        self.importing = False
        self.prefetch = Prefetch(client.config.prefetch)
        self._prefetch_lock = threading.Lock()
        self._running_since: float | None = None  # the running task's start
        self._waits: list = []  # _running_since of each wait under way
        # (tid, flags, frames, reply_to) handed to this worker and not
        # started yet (reply_to: the origin's tid for a DIRECT task).
        # The serving thread takes them and the ticker's job may give them
        # back, each with popleft(), which is thread-safe: every task goes
        # one way.
        self.inbox: deque = deque()
        self._outcomes: transport.OutcomesOutbox | None = None
        conn = client.conn
        conn.handlers[Msg.TASK] = self.on_task
        conn.before_block = client.holder.run_mine  # rather than idle
        conn.on_wait = self.on_wait
        conn.run_queued = self.run_queued
        client.holder.may_hold = self.may_hold
        client.check_may_submit = self.check_may_submit
        client.ticker.add(self.job)

    def check_may_submit(self) -> None:
        if self.importing:
            raise RuntimeError(
                "futures were used at the top level of the script, which every "
                "worker runs when it imports the script; put that code under "
                "'if __name__ == \"__main__\":'")

    def may_hold(self, chunk: bool) -> bool:
        return bool(self.client.depth) and threading.get_ident() == self.thread

    def serve(self) -> None:
        """Handle messages until the broker ends the run."""
        self.thread = threading.get_ident()
        self.client.start()
        self.client.block_until(lambda: False, None)

    def on_wait(self, starts: bool) -> None:
        if threading.get_ident() != self.thread:
            return  # the serving thread is busy: no task can run meanwhile
        # A task waiting on its children frees this worker for one more task
        # (send() sends the outcomes and children waiting to go first).
        if self.client.depth:
            self.client.send(Msg.WAITING if starts else Msg.RESUMED)
        # Waiting is not running: a task that waits on its children does not
        # count as long (the tasks that run meanwhile count alone).
        if starts:
            self._waits.append(self._running_since)
            self._running_since = None
        elif self._waits.pop() is not None:
            self._running_from(time.monotonic())

    def on_task(self, msg: protocol.Message) -> None:
        replies = msg.fields.reply_to
        endpoint = self.outcomes_endpoint
        if self._outcomes is None and endpoint and max(replies, default=-1) >= 0:
            self._outcomes = transport.OutcomesOutbox(endpoint, self.client.keys)
            self.client.closing.append(self._outcomes.close)
        self.inbox.extend(
            (tid, flags, frames, reply_to) for (tid, flags, frames), reply_to
            in zip(protocol.split_batch(msg), replies))
        while self.run_queued():
            pass

    def run_queued(self) -> bool:
        """Run the next task handed to this worker; whether there was one.

        Also called while a task waits on its children: tasks that came in
        the same batch then run meanwhile, as new ones would."""
        if threading.get_ident() != self.thread:
            return False
        try:
            tid, flags, frames, reply_to = self.inbox.popleft()
        except IndexError:
            return False
        started = time.monotonic()
        outer = self._running_since
        self._running_from(started)
        try:
            status, outcome = self.client.run_here(frames)
        finally:
            self._running_since = outer
        # A new prefetch is told first: the outcome follows right behind it,
        # and the two cost one wake-up of the socket's thread, not two.
        credit = self.prefetch.observe(time.monotonic() - started)
        if credit is not None:
            self._tell(credit)
        # The last outcome of a batch goes at once, with those before it; so
        # do a map's chunk (its values are awaited in order, and are many)
        # and outcomes that have waited RESULT_WAIT for company. A DIRECT
        # chunk's goes straight to the origin if it can, and the broker is
        # told it went (DELIVERED) as other outcomes are.
        if reply_to >= 0 and self._outcomes is not None and self._outcomes.send(
                protocol.encode_batch(Msg.RESULT, [(reply_to, status, outcome)])):
            status, outcome, at_once = Status.DELIVERED, [], not self.inbox
        else:
            at_once = not self.inbox or flags & Flags.CHUNK
        outbox = self.client.outbox
        outbox.queue(Msg.RESULT, (tid, int(status), outcome), at_once=at_once)
        since = outbox.since
        if since is not None and (at_once or time.monotonic() - since >= tuning.RESULT_WAIT):
            outbox.flush()
        return True

    def _tell(self, credit: int) -> None:
        """Tell the broker how many tasks to send ahead, unless told."""
        with self._prefetch_lock:
            if self.prefetch.tell(credit):
                self.client.send(Msg.CREDIT, credit)

    def _has_ahead(self) -> bool:
        """Whether this worker has something to take back should its task
        run long: tasks ahead it asks for, or tasks it holds unstarted."""
        return bool(self.prefetch.told or self.inbox)

    def _running_from(self, since: float) -> None:
        """The running task counts from ``since``: the ticker looks when it
        turns long, if there is anything to take back then."""
        self._running_since = since
        if self._has_ahead():
            self.client.ticker.wake_by(since + tuning.PREFETCH_STOP_ABOVE)

    def _running_long(self, now: float) -> float | None:
        """Seconds until the running task counts as long (negative: it does
        already), while this worker has something to take back; else None."""
        since = self._running_since
        if since is None or not self._has_ahead():
            return None
        return since + tuning.PREFETCH_STOP_ABOVE - now

    def job(self, now: float) -> float | None:
        """The ticker's job: a task that has run long withdraws the prefetch
        that was judged from shorter ones, so the broker sends no more tasks
        ahead to wait behind it, and gives back those it holds but has not
        started, for whoever is free."""
        left = self._running_long(now)
        if left is None or left > 0:
            return left
        self._tell(0)
        waiting = []
        while True:
            try:
                waiting.append(self.inbox.popleft()[0])
            except IndexError:  # none left (the serving thread may take the last)
                break
        if waiting:
            self.client.send(Msg.RETURN, waiting)
        return self._running_long(now)


def main() -> None:
    boot = bootstrap.read(sys.stdin, ClientBoot)
    sys.stdin = open("/dev/null")
    bootstrap.setup_logging(boot.config, boot.name)
    bootstrap.publish(boot, is_origin=False)
    # Whole lines reach the launcher as soon as they are printed.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    client = Client(boot, Role.WORKER, "worker {name} (host {host}, pid {pid})")
    serving = Serving(client, boot.outcomes)
    runtime.current = client
    load_script(client, serving, boot)
    threading.stack_size(tuning.STACK_BYTES)
    sys.setrecursionlimit(tuning.RECURSION_LIMIT)
    server = threading.Thread(target=_serve, args=(serving,), name="scoop_rt-serve")
    server.start()
    server.join()


def _serve(serving: Serving) -> None:
    try:
        serving.serve()
    except BaseException as exc:  # the serving loop itself failed: say so
        log.error("%s stopped: %r", serving.client.name, exc)
        exit_now(1)


def load_script(client: Client, serving: Serving, boot: ClientBoot) -> None:
    """Import the user's script; a failure is kept to explain task errors."""
    script = boot.script
    if not script:
        return
    module = bootstrap.script_module(script, serialization.SCRIPT_MODULE)
    serving.importing = True
    try:
        code = bootstrap.prepare_script(script, boot.argv)
        exec(code, module.__dict__)
    except BaseException as exc:  # the origin reports the script's own errors
        client.script_error = f"{type(exc).__name__}: {exc}"
        log.debug("could not import %s: %s", script, client.script_error)
    finally:
        serving.importing = False


if __name__ == "__main__":
    main()
