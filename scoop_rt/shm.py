"""Large buffers through shared memory when every process of a run is on one
machine.

Over the socket, an 8 MiB numpy array is copied into ZeroMQ, encrypted by
CURVE, sent to the broker, decrypted, encrypted again, sent to the worker,
decrypted and copied into the array the worker gets. On one machine none of
that is needed: the sender writes the buffer once into a file under
``/dev/shm`` (memory, not disk), the message carries only a small reference
to it, and the receiver maps the file. mpi4py and Ray do the same on one host.

When it is used: the launcher gives every client of a run a random *token*
in its bootstrap when all the workers run on its own host (no remote
hosts); ``setup`` switches sharing on with it. Without a token (a run over
SSH, the sequential runtime), or when ``/dev/shm`` is missing or full (a
container's small one), buffers travel as frames, as they always did.

The reference: an out-of-band buffer frame is either the buffer's bytes, at
least ``serialization.OUT_OF_BAND_MIN`` (64 KiB) long, or a reference of
under ``REFERENCE_MAX`` (1 KiB) bytes: ``MAGIC``, the buffer's size (8 bytes,
little-endian), the file's name. Either kind can stand at any buffer's place
in a payload; ``loads`` tells them apart by length and ``MAGIC`` alone, so
the broker and the protocol see nothing new: a payload is still a pickle
head and its buffer frames.

Files: ``/dev/shm/scoop_rt-<token>-<random>``, created with ``O_EXCL`` and
mode 0600, written once, never changed. The receiver maps a file
``MAP_PRIVATE`` with read and write access: reading shares the memory pages
(no copy), and writing to the array it gets copies only the pages written,
in the receiver's memory, so the file and the sender's copy do not change
(an array received over the socket was writable too).

Who removes a file:

- a task's arguments: the submitter, when the task's future settles
  (``unlink_when_done``). Until then the task may be sent again to another
  worker (its worker died), so a worker never removes what it reads;
- a result: whoever reads it, right after mapping it (``release``); a result
  is delivered once, and a stale copy is released unread;
- a shared constant: nobody while the run lasts, since the broker sends it to
  every worker, even one that joins late;
- a buffer sent on unchanged (``identity`` returns the array it got): the
  sender gives the file it mapped a second name (a hard link) instead of
  writing a copy, if no page of its mapping was written to (Linux's
  ``/proc/self/pagemap`` tells whether each page is still the file's); each
  name then has its own owner, as above;
- whatever is left (a process killed between writing and sending, a result
  the broker dropped because its submitter was gone): the launcher removes
  every file of the run's token when the run ends (``remove_run``), or,
  when the launcher was killed, the broker as it ends the run.

Security: the run's guarantee is that a peer without its keys cannot read
its data or inject work. The files are created by the run's user with mode
0600 and ``O_EXCL | O_NOFOLLOW``, so another user can neither read them nor
make the sender write through a planted file or link; ``/dev/shm`` is
sticky, so another user cannot remove or replace them either. Their names
hold 128 random bits of the run's token and 64 of their own, so they cannot
be guessed ahead of creation. A reference is only ever read from a message
that arrived over one of the run's authenticated sockets, and the
receiver maps only a regular file of this run's token that is owned by its
own user, has no access for others and has the expected size: a file
someone else put there (after its rightful owner removed it) is refused, not
read. Only root, which can read any process's memory anyway, could see the
data.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import stat
import struct
import weakref
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import TypeVar

log = logging.getLogger("scoop_rt")

DIRECTORY = "/dev/shm"
PREFIX = "scoop_rt-"
SHM_MIN = 1024 * 1024  # smaller buffers travel as frames: a file costs more
MAGIC = b"\x00scoop_rt-shm\x00"
REFERENCE_MAX = 1024  # a buffer frame is 64 KiB or more, a reference far less
_SIZE = struct.Struct("<Q")
# Linux's MADV_POPULATE_READ (5.14): map every page of the file at once,
# sharing them, rather than fault them in one by one while the array is read.
# (MAP_POPULATE would copy every page of a private writable mapping.)
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)

_token: str | None = None
_sending = True  # off for good once /dev/shm turns out to be missing
# The files this process has mapped, by the address of their mapping, while
# the mapping lives: a buffer sent on unchanged gets a new name, not a copy.
_mapped: dict[int, tuple[str, int]] = {}
_PAGE = mmap.PAGESIZE
_PRESENT, _SWAPPED, _FILE_PAGE = 1 << 63, 1 << 62, 1 << 61


def new_token() -> str:
    """A run's token: 128 random bits, in hex."""
    return os.urandom(16).hex()


def setup(token: str | None) -> None:
    """Share buffers through files of ``token`` (None: never share)."""
    global _token, _sending
    _token = token
    _sending = True


def token() -> str | None:
    """The run's token, when its buffers may travel through files."""
    return _token


def enabled() -> bool:
    """Whether this process writes large buffers into files."""
    return _token is not None and _sending


def _path(name: str) -> str:
    return os.path.join(DIRECTORY, name)


def _disable(why: str) -> None:
    """Stop trying for the rest of this process: buffers go as frames."""
    global _sending
    if _sending:
        log.info("large buffers go over the socket from now on: %s", why)
    _sending = False


# -- sending --------------------------------------------------------------------


def share(view: memoryview) -> bytes | None:
    """Write ``view`` into a new file; the reference frame to send in its
    place, or None when it should travel as a frame (small, sharing is off,
    or ``/dev/shm`` is missing or full)."""
    if not enabled() or view.nbytes < SHM_MIN:
        return None
    name = f"{PREFIX}{_token}-{os.urandom(8).hex()}"
    if _relink(view, name):
        return _reference(view.nbytes, name)
    path = _path(name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        _disable(f"{DIRECTORY} does not exist")
        return None
    except OSError as exc:
        log.debug("could not create %s: %s", path, exc)
        return None
    try:
        _write(fd, view)
    except OSError as exc:
        _unlink(name)
        if exc.errno not in (errno.ENOSPC, errno.ENOMEM, errno.EDQUOT):
            log.debug("could not write %s: %s", path, exc)
        return None
    finally:
        os.close(fd)
    return _reference(view.nbytes, name)


def _reference(size: int, name: str) -> bytes:
    return MAGIC + _SIZE.pack(size) + name.encode("ascii")


def _relink(view: memoryview, name: str) -> bool:
    """Give the file behind ``view`` the new name ``name``, if ``view`` is the
    whole of a mapping opened here and none of its pages was written to;
    whether it did."""
    address = _address(view)
    if address is None or address not in _mapped:
        return False
    old, size = _mapped[address]
    if size != view.nbytes or not _unwritten(address, size):
        return False
    try:
        os.link(_path(old), _path(name))
    except OSError:  # its owner removed it (a stale run of a retried task)
        return False
    return True


def _address(view: memoryview) -> int | None:
    """Where ``view``'s memory starts (None for a read-only view)."""
    import ctypes  # here: every process imports this module, few need it
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):
        return None


def _unwritten(address: int, size: int) -> bool:
    """Whether every page of a private file mapping still holds the file's
    own contents: none was copied on write (nor swapped out, which only
    copied pages can be)."""
    first, count = address // _PAGE, -(-size // _PAGE)
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            entries = os.pread(f.fileno(), count * 8, first * 8)
    except OSError:
        return False
    if len(entries) != count * 8:
        return False
    for entry in memoryview(entries).cast("Q"):
        if entry & _SWAPPED or (entry & _PRESENT and not entry & _FILE_PAGE):
            return False
    return True


def _write(fd: int, view: memoryview) -> None:
    """The whole of ``view`` into ``fd``. Allocating the file's memory first
    finds a full ``/dev/shm`` before copying, and is faster than letting each
    write allocate its pages."""
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    try:
        os.posix_fallocate(fd, 0, view.nbytes)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    done = 0
    while done < view.nbytes:
        done += os.write(fd, view[done:])


def names(frames: Sequence) -> list[str]:
    """The files that the references among ``frames`` name."""
    return [name for _, name in _references(frames)]


F = TypeVar("F", bound=Future)


def unlink_when_done(future: F, names: list[str]) -> F:
    """Remove the files ``names`` (a task's arguments) once ``future`` has
    settled, however it settles: nothing can run the task any more."""
    if names:
        future.add_done_callback(lambda _: _unlink_all(names))
    return future


# -- receiving ------------------------------------------------------------------


def reference(frame: memoryview) -> tuple[int, str] | None:
    """``(size, file name)`` if ``frame`` is a reference, else None."""
    if frame.nbytes >= REFERENCE_MAX or bytes(frame[:len(MAGIC)]) != MAGIC:
        return None
    size = _SIZE.unpack_from(frame, len(MAGIC))[0]
    name = bytes(frame[len(MAGIC) + _SIZE.size:]).decode("ascii", "replace")
    return size, name


def open_view(size: int, name: str) -> memoryview:
    """The buffer in file ``name``: a private, writable mapping of it.

    The memoryview keeps the mapping alive; so does whatever is built on it
    (a numpy array), however long it lives. Raises OSError (with a clear
    message) for a name or file that is not one this run wrote.
    """
    if _token is None or not name.startswith(f"{PREFIX}{_token}-") or "/" in name:
        raise OSError(errno.EACCES, f"not a shared buffer of this run: {name!r}")
    path = _path(name)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if (not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid()
                or info.st_mode & 0o077 or info.st_size != size):
            raise OSError(errno.EACCES, f"refused {path}: not a private file "
                          f"of this user of {size} bytes")
        buf = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE,
                        prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    try:
        buf.madvise(_MADV_POPULATE_READ)
    except (OSError, ValueError):
        pass  # an older kernel: pages come in as they are read
    address = _address(memoryview(buf))
    if address is not None:
        _mapped[address] = (name, size)
        weakref.finalize(buf, _mapped.pop, address, None)
    return memoryview(buf)


def release(frames: Sequence) -> None:
    """Remove the files a received result refers to: it is read (or dropped)
    once, and what was mapped stays readable after the file is gone."""
    _unlink_all(name for _, name in _references(frames))


# -- cleaning up ----------------------------------------------------------------


def remove_run(token: str | None) -> int:
    """Remove every file of the run ``token`` left in ``/dev/shm``; how many."""
    if not token:
        return 0
    import glob
    removed = 0
    for path in glob.glob(os.path.join(DIRECTORY, f"{PREFIX}{token}-*")):
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove %s: %s", path, exc)
    return removed


def _references(frames: Sequence) -> Iterable[tuple[int, str]]:
    if len(frames) < 2:
        return ()  # a pickle head alone: nothing to look at, and most are
    return _references_in(frames)


def _references_in(frames: Sequence) -> Iterable[tuple[int, str]]:
    for frame in list(frames)[1:]:
        ref = reference(view_of(frame))
        if ref is not None:
            yield ref


def view_of(frame) -> memoryview:
    """A memoryview of a frame: ``bytes``, a ``zmq.Frame``, a PickleBuffer."""
    buffer = getattr(frame, "buffer", None)
    if buffer is not None:  # zmq.Frame
        return buffer
    raw = getattr(frame, "raw", None)
    return raw() if raw is not None else memoryview(frame)


def _unlink(name: str) -> None:
    if "/" in name or not name.startswith(f"{PREFIX}{_token}-"):
        return  # not a file of this run's: never removed from here
    try:
        os.unlink(_path(name))
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.debug("could not remove %s: %s", name, exc)


def _unlink_all(names: Iterable[str]) -> None:
    for name in names:
        _unlink(name)
