"""Running a task and settling its future: the two ends of a task's life,
shared by the workers, the origin and the sequential runtime, so that a task
behaves the same wherever it runs.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import pickle
from collections.abc import Sequence

from . import serialization
from .errors import NoWorkersError, WorkerLostError
from .protocol import LostReason, ProtocolError, Status, read_lost


def execute(payload: Sequence, where: str, script_error: str | None = None
            ) -> tuple[Status, list]:
    """Run the task in ``payload``; its outcome as (status, frames).

    Never raises: the task's own exception (SystemExit included) becomes an
    ERROR outcome carrying it and its traceback, headed by ``where``.
    """
    fn = None
    values: list = []
    try:
        kind, fn, args, kwargs = serialization.loads(payload)
        if kind == serialization.CHUNK:
            # extend() keeps what it got before an error: the values up to
            # the failing item.
            values.extend(map(fn, args))
            result = values
        elif kind == serialization.STAR_CHUNK:
            values.extend(itertools.starmap(fn, args))
            result = values
        else:
            result = fn(*args, **kwargs)
    except BaseException as exc:  # the task's error, whatever it is
        if fn is None:
            exc = _explain_unpickling(exc, script_error)
        text = serialization.format_remote_traceback(exc, where, skip=1)
        return Status.ERROR, serialization.dump_error(exc, text, values)
    try:
        return Status.OK, serialization.dumps(result)
    except Exception as exc:
        error = pickle.PicklingError(
            f"the result of {serialization.describe(fn)}() cannot be sent "
            f"back from {where}: {exc}")
        return Status.ERROR, serialization.dump_error(error, "")


def _explain_unpickling(exc: BaseException, script_error: str | None) -> BaseException:
    """A clearer error for a task that could not even be unpickled here."""
    if script_error:
        return RuntimeError(f"{exc} (this worker could not import the script: "
                            f"{script_error})")
    text = str(exc)
    if isinstance(exc, AttributeError) and any(
            f"module '{name}'" in text for name in serialization.SCRIPT_MODULES):
        return AttributeError(
            f"{text}: it exists in the script only when the script runs as "
            "__main__ (inside 'if __name__ == \"__main__\":'?); define it at "
            "the top level of the script so workers have it too")
    return exc


def settle(future: cf.Future, chunk: bool, status: int, payload: Sequence) -> None:
    """Give ``future`` the outcome of its task.

    A chunk's future gets ``(values, error)``: the values up to the first
    error, and that error or None. The outcome's shared memory files are
    removed once read: an outcome is delivered once.
    """
    try:
        _settle(future, chunk, status, payload)
    finally:
        serialization.release(payload)


def _settle(future: cf.Future, chunk: bool, status: int, payload: Sequence) -> None:
    try:
        if status == Status.OK:
            value = serialization.loads(payload)
            future.set_result((value, None) if chunk else value)
            return
        if status == Status.ERROR:
            exc, partial = serialization.load_error(payload)
        elif status == Status.LOST:
            exc, partial = lost_error(payload), []
        else:
            raise ProtocolError(f"unknown task status {status}")
    except Exception as err:  # an outcome that cannot be read is the task's error
        exc, partial = err, []
    if chunk:
        future.set_result((partial or [], exc))
    else:
        future.set_exception(exc)


def lost_error(payload: Sequence) -> Exception:
    """The error of a task the broker gave up on: its class from the
    outcome's ``LostReason``, its message the broker's text."""
    reason, text = read_lost(payload)
    if reason == LostReason.NO_WORKERS:
        return NoWorkersError(text)
    return WorkerLostError(text)
