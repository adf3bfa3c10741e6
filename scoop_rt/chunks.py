"""A map's chunks, submitted together: the third way a task leaves a client
(after ``Client.submit_call`` and ``submit_chunk``, which may be held).

None is held back: the broker sees the whole map at once and gives each
worker its share in one go. Chunks that are slow to pickle (large arrays)
leave as soon as ``tuning.PICKLING_WAIT`` has passed, so workers start on
them while the rest are pickled. Each future owns its chunk's shared memory
files. A chunk that cannot be pickled raises; those before it that have
left run, the others are dropped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable

from . import protocol, serialization, shm, transport, tuning
from .protocol import Msg

if TYPE_CHECKING:
    from .client import Client


def submit_chunks(client: Client, fn: Callable, chunks: Sequence,
                  star: bool = False) -> list:
    """Futures for the chunks of ``fn``'s map (see ``Client.submit_chunk``)."""
    client.check_may_submit()
    label = serialization.describe(fn)
    futures: list = []
    pickled: list = []
    try:
        since = time.monotonic()
        for calls in chunks:
            frames = serialization.dump_chunk(fn, calls, star)
            pickled.append((frames, serialization.take_task_files()))
            if time.monotonic() - since >= tuning.PICKLING_WAIT:
                futures += _send(client, label, pickled)
                since = time.monotonic()
        if pickled:
            futures += _send(client, label, pickled)
    except BaseException:
        for frames, _ in pickled:
            shm.release(frames)  # not sent: their files go
        raise
    return futures


def _send(client: Client, label: str, pickled: list) -> list:
    """Futures for the pickled chunks ``(frames, files)``, in one SUBMIT."""
    flags = int(client.chunk_flags)
    with transport.stop_signals_held():  # every future made is sent
        futures = [shm.unlink_when_done(client.new_future(label, True), files)
                   for _, files in pickled]
        try:
            client.holder.send_held()  # a task held before them goes first
            client.outbox.send_frames(protocol.encode_batch(Msg.SUBMIT, [
                (future._tid, flags, frames)
                for future, (frames, _) in zip(futures, pickled)]))
        except BaseException:
            for future in futures:
                client.forget(future._tid)  # never sent: nothing to wait for
            raise
        pickled.clear()  # sent: no longer this caller's to release
    client.mark_submitted()
    return futures
