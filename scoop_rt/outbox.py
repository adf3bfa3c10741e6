"""What a client sends to the broker, and when: its batching rules.

Tasks (SUBMIT) and a worker's outcomes (RESULT) travel in batches, so that
many short tasks cost the broker one message: an entry ``(tid, flags or
status, frames)`` waits in its batch until

- the batch is full (``tuning.BATCH_MAX`` entries or ``tuning.BATCH_BYTES``
  of payload),
- any other message is sent (it goes after the batches: order is kept),
- the process is about to wait (``flush``), or
- ``tuning.BATCH_DELAY`` has passed since the batch's first entry (the
  heartbeat thread's ticker runs ``job``).

An entry queued ``at_once`` while nothing else waits goes at once, alone.
The origin's RECEIVED (the tids whose outcomes workers sent straight to it)
goes along with whatever is sent next, or ``tuning.RECEIVED_WAIT`` after its
first tid when the ticker next runs: it never wakes anyone by itself.

The outbox owns no socket: it calls ``send(frames)`` with whole messages,
under its lock, which is the one lock any thread takes to send. That is what
the unit tests replace.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Callable

from . import protocol, transport, tuning
from .protocol import Msg
from .ticker import Ticker


class Outbox:
    def __init__(self, send: Callable[[list], None], ticker: Ticker):
        self._send = send
        self._ticker = ticker
        self.lock = threading.Lock()
        # Entries waiting to go as one message, by type (under the lock).
        self._batches: dict[Msg, list] = {Msg.SUBMIT: [], Msg.RESULT: []}
        self._bytes = 0
        self.since: float | None = None  # when the oldest waiting entry came
        self._received: list = []
        self._received_since: float | None = None

    def send(self, msg_type: Msg, *fields, payload: Sequence = ()) -> None:
        """Send one message, after the batches waiting to go (order kept)."""
        self.send_frames(protocol.encode(msg_type, *fields, payload=payload))

    def send_frames(self, frames: list) -> None:
        with self.lock:
            self._flush_locked()
            self._send(frames)

    def queue(self, msg_type: Msg, entry: tuple, at_once: bool = False) -> None:
        """Add ``(tid, flags or status, frames)`` to the batch of ``msg_type``.

        With ``at_once``, a batch that would hold only this entry is sent now.
        """
        deadline = 0.0  # by when the ticker must look, if it must
        self._ticker.active_at = time.monotonic()
        with self.lock:
            if self.since is None:
                if at_once:
                    self._send(protocol.encode_batch(msg_type, [entry]))
                    self._flush_locked()  # (RECEIVED, if any, goes along)
                    return
                self.since = time.monotonic()
                deadline = self.since + tuning.BATCH_DELAY
            batch = self._batches[msg_type]
            batch.append(entry)
            self._bytes += _nbytes(entry[2])
            if len(batch) >= tuning.BATCH_MAX or self._bytes >= tuning.BATCH_BYTES:
                self._flush_locked()
        if deadline:
            self._ticker.wake_by(deadline)

    def received(self, tids: list) -> None:
        """Tell the broker, later, that these DIRECT outcomes arrived."""
        with self.lock:
            if not self._received:
                self._received_since = time.monotonic()
            self._received += tids

    def flush(self) -> None:
        """Send every batch waiting to go."""
        if self.since is not None:
            with self.lock:
                self._flush_locked()

    def _flush_locked(self) -> None:
        if self.since is None and not self._received:
            return
        # Stop signals wait until every batch has gone and is forgotten: one
        # raised in between would lose a batch, or send it again next time.
        with transport.stop_signals_held():
            for msg_type, batch in self._batches.items():
                if batch:
                    self._send(protocol.encode_batch(msg_type, batch))
                    batch.clear()
            self._bytes = 0
            self.since = None
            if self._received:
                self._send(protocol.encode(Msg.RECEIVED, self._received))
                self._received = []
                self._received_since = None

    def job(self, now: float) -> float | None:
        """The ticker's job: send what has waited long enough; seconds until
        the batches must go next (None: none waits)."""
        since = self.since
        if since is not None and now - since >= tuning.BATCH_DELAY:
            self.flush()
        received = self._received_since
        if received is not None and now - received >= tuning.RECEIVED_WAIT:
            with self.lock:
                self._flush_locked()
        since = self.since
        return None if since is None else since + tuning.BATCH_DELAY - now


def _nbytes(frames: Sequence) -> int:
    if len(frames) == 1 and isinstance(frames[0], bytes):
        return len(frames[0])  # a pickle head alone: most tasks
    total = 0
    for frame in frames:
        try:
            total += memoryview(frame).nbytes
        except TypeError:
            total += len(frame)
    return total
