"""Run one measured command, and leave nothing of it behind.

Each command starts in a session of its own, with a unique BENCH_TOKEN in its
environment. When it exits, or times out, whatever is left of its process group,
and any process that still carries the token (a broker that started a session of
its own, say), is killed. Output goes to files rather than pipes, so that a stray
child holding stdout open cannot delay the end of the timing.

Each command also gets a temporary folder of its own as TMPDIR, removed after it:
Ray's session folders, dask's scratch space and Open MPI's session directories
go there instead of piling up in /tmp run after run.
"""

import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

GRACE_S = 1.0   # how long leftovers get to exit on their own before being killed


@dataclass
class Outcome:
    argv: List[str]
    returncode: Optional[int]   # None: timed out
    wall_s: float
    stdout: str
    stderr: str
    leftovers: int              # processes still alive after the command, killed


def run(argv: List[str], env: Dict[str, str], timeout: float) -> Outcome:
    """Run `argv`, timing it from launch to exit; never longer than `timeout`."""
    token = uuid.uuid4().hex
    scratch = tempfile.mkdtemp(prefix="bench-")
    env = dict(env, BENCH_TOKEN=token, TMPDIR=scratch)
    try:
        return _run(argv, env, timeout, token)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(argv: List[str], env: Dict[str, str], timeout: float, token: str) -> Outcome:
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, env=env, start_new_session=True)
        try:
            returncode = _wait(proc, timeout)
        except subprocess.TimeoutExpired:
            returncode = None
            _kill(proc.pid, token)
            proc.wait()
        wall_s = time.perf_counter() - start
        leftovers = _reap(proc.pid, token)
        out.seek(0)
        err.seek(0)
        return Outcome(argv, returncode, wall_s, out.read(), err.read(), leftovers)


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    """`proc.wait(timeout)`, noticing the exit at once. Popen.wait polls under a
    timeout, with sleeps growing to 50 ms: a 0.2 s command was timed up to 50 ms
    long, in steps, whichever peer it was. A pidfd wakes up at the exit."""
    if not hasattr(os, "pidfd_open"):
        return proc.wait(timeout=timeout)
    fd = os.pidfd_open(proc.pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return proc.wait()


def _reap(pgid: int, token: str) -> int:
    """Give the command's leftovers a moment to exit, then kill them; count them."""
    deadline = time.monotonic() + GRACE_S
    while _survivors(pgid, token) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = _survivors(pgid, token)
    _kill(pgid, token)
    return len(survivors)


def _kill(pgid: int, token: str) -> None:
    """SIGKILL the process group and every process that carries the token."""
    for pid in _survivors(pgid, token):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _survivors(pgid: int, token: str) -> List[int]:
    """Live processes in group `pgid` or with BENCH_TOKEN=`token` (Linux /proc)."""
    needle = f"BENCH_TOKEN={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            # Fields after the command name, which may hold spaces: state, ppid, pgrp.
            state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
            if state == "Z":
                continue
            if int(pgrp) == pgid or needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue   # gone meanwhile, or not ours to read
    return found
