"""Turning tasks, results and errors into frames, and back.

- cloudpickle with pickle protocol 5; buffers of 64 KiB and more (numpy
  arrays, ``PickleBuffer``) travel as separate frames, not copied into the
  pickle. On a run confined to one machine, a buffer of 1 MiB or more is
  written once into a file in ``/dev/shm`` and its frame carries only a
  reference to it, which the receiver maps (``shm.py`` says how, who removes
  the files, and why that is safe).
- Functions and classes defined at the top level of the user's script travel
  by name: every worker has the script imported (see ``SCRIPT_MODULES``).
  Lambdas, closures and nested functions travel by value.
- Exceptions travel with the text of their remote traceback; the receiving side
  attaches it as ``__cause__``. One that cannot be pickled arrives as a
  ``RemoteError`` carrying its type name, message and traceback.
"""

from __future__ import annotations

import io
import pickle
import sys
import threading
import traceback
import types
from collections.abc import Sequence
from typing import Any, Callable

from . import shm
from .errors import RemoteError, RemoteTraceback

# The user's script is the module ``__main__`` in the origin. Workers import it
# as ``__scoop_rt_main__`` and also register it as ``__main__``; the origin
# registers the alias too, so a reference under either name resolves anywhere.
SCRIPT_MODULE = "__scoop_rt_main__"
SCRIPT_MODULES = ("__main__", SCRIPT_MODULE)

OUT_OF_BAND_MIN = 64 * 1024
PROTOCOL = 5

# What a task payload carries: one call, or a chunk of calls of one function,
# each on one item (``fn(item)``, a map over one iterable) or on a tuple of
# arguments (``fn(*call)``, a map over several).
CALL = 0
CHUNK = 1
STAR_CHUNK = 2


def _is_script_global(obj: Any) -> bool:
    """True for a function or class reachable by name in the user's script."""
    module = getattr(obj, "__module__", None)
    if module not in SCRIPT_MODULES:
        return False
    target = sys.modules.get(module)
    if target is None:
        return False
    found: Any = target
    for part in getattr(obj, "__qualname__", "<>").split("."):
        found = getattr(found, part, None)
        if found is None:
            return False
    return found is obj


_pickler_class = None


def _by_value_pickler() -> type:
    """cloudpickle's pickler, except that the script's own top-level names go
    by name. cloudpickle is imported on first use: most tasks never need it,
    and every process of a run would pay for its import at start-up (its
    pickles import it by themselves where they are loaded)."""
    global _pickler_class
    if _pickler_class is None:
        import cloudpickle

        class _Pickler(cloudpickle.Pickler):
            def reducer_override(self, obj: Any) -> Any:
                if isinstance(obj, (types.FunctionType, type)) and _is_script_global(obj):
                    return NotImplemented  # pickle's own save_global: module + name
                return super().reducer_override(obj)

        _pickler_class = _Pickler
    return _pickler_class


def dumps(obj: Any, share: bool = True) -> list:
    """Frames for ``obj``: the pickle, then its out-of-band buffers.

    With ``share`` (and a run on one machine), large buffers go into shared
    memory files and their frames are references to them (``shm.py``).
    """
    buffers: list = []

    def keep_large(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < OUT_OF_BAND_MIN:
            return True  # small: in-band is cheaper than a frame
        buffers.append(buf)
        return False

    try:
        # The standard pickler is several times faster, and handles most
        # tasks: module-level functions go by name either way.
        head = pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=keep_large)
    except Exception:  # lambdas, closures, nested functions: by value
        buffers.clear()
        out = io.BytesIO()
        _by_value_pickler()(out, protocol=PROTOCOL, buffer_callback=keep_large).dump(obj)
        head = out.getvalue()
    if not buffers:
        return [head]  # most tasks and results: nothing to share
    frames = [head, *buffers]
    return _shared(frames) if share else frames


def _shared(frames: list) -> list:
    """``frames`` with each large buffer moved into shared memory when it can
    be; a buffer that cannot be (small, no ``/dev/shm``, full) stays a frame."""
    if not shm.enabled():
        return frames
    out = [frames[0]]
    for buf in frames[1:]:
        ref = shm.share(buf.raw()) if isinstance(buf, pickle.PickleBuffer) else None
        out.append(buf if ref is None else ref)
    return out


def loads(frames: Sequence) -> Any:
    """Inverse of ``dumps``; frames may be ``bytes``, ``zmq.Frame``, or the
    ``PickleBuffer`` objects of a task run where it was pickled.

    Out-of-band buffers that came over the socket are copied into writable
    memory, so a received numpy array can be changed in place as it could in
    the sender; those in shared memory are mapped copy-on-write, to the same
    effect without the copy. Files stay where they are: whoever owns them
    removes them (``release`` for a result).
    """
    if not frames:
        raise pickle.UnpicklingError("no frames to unpickle")
    head = frames[0]
    head = head if isinstance(head, bytes) else head.buffer
    if len(frames) == 1:
        return pickle.loads(head)
    return pickle.loads(head, buffers=[_buffer(f) for f in frames[1:]])


def _buffer(frame: Any) -> Any:
    """A writable buffer with the contents of one out-of-band frame: a
    ``zmq.Frame``, ``bytes``, or a ``PickleBuffer`` that never left this
    process (a task run where it was submitted)."""
    view = shm.view_of(frame)
    ref = shm.reference(view)
    if ref is None:
        return bytearray(view)
    try:
        return shm.open_view(*ref)
    except OSError as exc:
        raise pickle.UnpicklingError(
            f"a buffer in shared memory could not be read: {exc}") from exc


def release(frames: Sequence) -> None:
    """Remove the shared memory files of a result that has been read (or will
    never be): a result is delivered once. What was mapped stays valid."""
    if len(frames) > 1:  # a pickle head alone refers to no file
        shm.release(frames)


# The files written for the task last pickled on each thread, until the
# future that runs it claims them (``claim_task_files``).
_task_files = threading.local()


def _note_task_files(frames: list) -> list:
    _task_files.names = shm.names(frames) if len(frames) > 1 else None
    return frames


def take_task_files() -> list:
    """The shared memory files of the task just pickled on this thread (by
    ``dump_call`` or ``dump_chunk``), now the caller's to tie to a future."""
    names = getattr(_task_files, "names", None)
    _task_files.names = None
    return names or []


def claim_task_files(future: Any) -> Any:
    """Tie the shared memory files of the task just pickled on this thread
    to ``future``: they are removed when it settles, since until then the
    task may have to run again on another worker. Returns ``future``."""
    return shm.unlink_when_done(future, take_task_files())


def describe(fn: Any) -> str:
    """A short name for a callable, for messages."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name or type(fn).__name__


def _culprit(fn: Callable, args: Sequence, kwargs: dict) -> str:
    """Which part of a call cannot be pickled, in words."""
    candidates = [("the function itself", fn)]
    candidates += [(f"argument {i} ({type(a).__name__})", a)
                   for i, a in enumerate(args)]
    candidates += [(f"keyword argument {k!r} ({type(v).__name__})", v)
                   for k, v in kwargs.items()]
    for label, value in candidates:
        try:
            dumps(value, share=False)
        except Exception as exc:  # any failure here names the culprit
            return f"{label} cannot be pickled: {exc}"
    return "the call cannot be pickled"


def dump_call(fn: Callable, args: Sequence, kwargs: dict) -> list:
    """Frames of a task that calls ``fn(*args, **kwargs)``.

    An unpicklable part raises ``pickle.PicklingError`` naming the function
    and the argument, in the caller's process, before anything is sent.
    """
    try:
        return _note_task_files(dumps((CALL, fn, tuple(args), kwargs)))
    except Exception as exc:
        raise pickle.PicklingError(
            f"cannot send {describe(fn)}() to a worker: "
            f"{_culprit(fn, args, kwargs)}") from exc


def sliceable(items: Any) -> bool:
    """Whether a map's input is cut into chunks by slicing it, each chunk
    of its own type: a range (three numbers on the wire) or a numpy array
    (one buffer, where a list of its items would pickle item by item)."""
    kind = type(items)
    return kind is range or (kind.__name__ == "ndarray"
                             and kind.__module__ == "numpy" and items.ndim > 0)


def dump_chunk(fn: Callable, calls: Sequence, star: bool = False) -> list:
    """Frames of a task that calls ``fn(item)`` for each item of ``calls``,
    or ``fn(*call)`` for each with ``star``."""
    try:
        if not sliceable(calls):
            calls = list(calls)
        return _note_task_files(dumps((STAR_CHUNK if star else CHUNK, fn,
                                       calls, {})))
    except Exception as exc:
        detail = "the call cannot be pickled"
        for call in calls:
            detail = _culprit(fn, call if star else (call,), {})
            if detail != "the call cannot be pickled":
                break
        raise pickle.PicklingError(
            f"cannot send {describe(fn)}() to a worker: {detail}") from exc


def format_remote_traceback(exc: BaseException, where: str, skip: int = 0) -> str:
    """The traceback of ``exc`` as text, headed by where it was raised.

    ``skip`` leaves out that many outermost frames (the runtime's own).
    """
    tb = exc.__traceback__
    for _ in range(skip):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb)
    return f"\nTraceback on {where}:\n" + "".join(lines[1:]).rstrip("\n")


def dump_error(exc: BaseException, tb_text: str, extra: Any = None) -> list:
    """Frames carrying ``exc`` (or a RemoteError standing for it) and its traceback.

    The exception is pickled and unpickled here first: one that would fail on
    the other side is replaced now, while its type and message can be read.
    """
    try:
        frames = dumps((exc, tb_text, extra), share=False)
        loads(frames)
        return _shared(frames)
    except Exception:
        stand_in = RemoteError(type(exc).__qualname__, str(exc), tb_text)
        try:
            return dumps((stand_in, tb_text, extra))
        except Exception:
            # ``extra`` itself cannot travel: send the error alone.
            return dumps((stand_in, tb_text, None))


def load_error(frames: Sequence) -> tuple[BaseException, Any]:
    """The exception carried by ``dump_error`` frames, with its remote traceback
    attached as ``__cause__``; and the extra value sent with it."""
    try:
        exc, tb_text, extra = loads(frames)
    except Exception as err:
        return RemoteError(type(err).__name__,
                           f"the remote error could not be unpickled: {err}"), None
    if tb_text:
        exc.__cause__ = RemoteTraceback(tb_text)
    return exc, extra
