"""Running scoop_rt the way a user does, and watching what it leaves behind.

- ``run_scoop`` writes a small script into the test's folder and runs it with
  ``python -m scoop_rt -n N``; ``run_python`` runs one with plain ``python``.
- ``LiveRun`` is a started run whose output a test reads as it comes (each
  line with the time it arrived) and whose processes it can watch.
- ``PRELUDE`` is code a launched script may start with: ``warm_up(n)`` returns
  once ``n`` distinct workers have each run a task, so a test that needs the
  workers to run side by side does not race their start-up.
- ``suspects`` finds the scoop_rt processes a test left behind: descendants of
  this process, or processes started during the test that carry its token.
  Every run started through these helpers carries the current test's token
  (``set_token``) in its environment, inherited by every process of the run,
  even one whose parent died, so other people's runs are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

TOKEN_VAR = "SCOOPRT_TESTS_TOKEN"

_token: str | None = None


def set_token(token: str | None) -> None:
    """The token the runs started from now on carry (None: no token)."""
    global _token
    _token = token


# -- environment and scripts ----------------------------------------------------


def scoop_env(extra: dict | None = None) -> dict:
    """The environment for a run: this one, without SCOOP_RT_* settings that
    would change the runtime's defaults, plus the current test's token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOOP_RT_")}
    # Python's defaults, as a user's shell has them (this sandbox sets some).
    for name in ("PYTHONWARNINGS", "PYTHONUNBUFFERED"):
        env.pop(name, None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if _token is not None:
        env[TOKEN_VAR] = _token
    env.update(extra or {})
    return env


PRELUDE = '''\
import json, os, sys, time
import scoop_rt
from scoop_rt import futures


def whoami(delay=0.0):
    time.sleep(delay)
    return os.getpid(), scoop_rt.worker


def warm_up(n, timeout=30.0):
    """{pid: worker name} of n distinct workers, each seen running a task."""
    seen = {}
    end = time.monotonic() + timeout
    while len(seen) < n:
        if time.monotonic() > end:
            raise RuntimeError(f"only {len(seen)} of {n} workers answered: {seen}")
        for pid, name in futures.map(whoami, [0.05] * (2 * n)):
            seen[pid] = name
    return seen

'''


def write_script(tmp_path: Path, source: str, name: str = "script.py",
                 prelude: bool = False) -> Path:
    path = Path(tmp_path) / name
    text = textwrap.dedent(source)
    path.write_text((PRELUDE if prelude else "") + text)
    return path


def scoop_argv(script: Path | str, *args: str, n: int | None = 2,
               launcher_args: tuple = ()) -> list:
    argv = [sys.executable, "-m", "scoop_rt"]
    if n is not None:
        argv += ["-n", str(n)]
    return [*argv, *launcher_args, str(script), *map(str, args)]


def descendants(pid: int) -> list:
    """Every live process below ``pid``, found by parent pid alone.

    (psutil's own ``children`` also compares wall-clock start times, which
    drop processes when the kernel's boot time estimate moves by a second.)
    """
    below: dict = {}
    for p in psutil.process_iter(["ppid"]):
        below.setdefault(p.info["ppid"], []).append(p)
    found, todo = [], [pid]
    while todo:
        for child in below.get(todo.pop(), []):
            if child.pid != pid:
                found.append(child)
                todo.append(child.pid)
    return found


def kill_family(proc: subprocess.Popen) -> None:
    """Kill a process and whatever it started (collected before the kill)."""
    family = descendants(proc.pid)
    for p in [*family]:
        try:
            p.kill()
        except psutil.Error:
            pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    psutil.wait_procs(family, timeout=3)


def run_argv(argv: list, cwd: Path, timeout: float,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` to its end; a run that outlives ``timeout`` is killed with
    all its processes and fails the test with what it printed so far."""
    proc = subprocess.Popen(argv, cwd=cwd, env=scoop_env(env), text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_family(proc)
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"{' '.join(argv)} did not finish within {timeout} s\n"
                    f"--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def run_scoop(tmp_path: Path, source: str, *args: str, n: int | None = 2,
              timeout: float = 60, launcher_args: tuple = (),
              env: dict | None = None, prelude: bool = False,
              name: str = "script.py") -> subprocess.CompletedProcess:
    """Write ``source`` as a script and run it with ``python -m scoop_rt``
    (``n=None`` leaves the worker count to its default)."""
    script = write_script(tmp_path, source, name, prelude)
    argv = scoop_argv(script, *args, n=n, launcher_args=launcher_args)
    return run_argv(argv, tmp_path, timeout, env)


def run_python(tmp_path: Path, source: str, *args: str, timeout: float = 60,
               prelude: bool = False,
               name: str = "script.py") -> subprocess.CompletedProcess:
    """Write ``source`` as a script and run it with plain ``python``."""
    script = write_script(tmp_path, source, name, prelude)
    return run_argv([sys.executable, str(script), *map(str, args)], tmp_path,
                    timeout)


def explain(proc: subprocess.CompletedProcess) -> str:
    """What a finished run printed, for assertion messages."""
    return (f"exit code {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}"
            f"\n--- stderr ---\n{proc.stderr[-3000:]}")


# -- watching a run while it runs -------------------------------------------------


class LiveRun:
    """A launched run whose output the test reads as it comes."""

    def __init__(self, argv: list, cwd: Path, env: dict | None = None):
        self.argv = argv
        self.proc = subprocess.Popen(argv, cwd=cwd, env=scoop_env(env), text=True,
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=1)
        self.pid = self.proc.pid
        self.stdout_lines: list = []
        self.stderr_lines: list = []
        self._lines: queue.Queue = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, True),
                             daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, False),
                             daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, is_stdout: bool) -> None:
        for line in stream:
            if is_stdout:
                self.stdout_lines.append(line)
                self._lines.put((time.monotonic(), line))
            else:
                self.stderr_lines.append(line)

    def expect(self, prefix: str, timeout: float = 30) -> tuple:
        """Wait for a stdout line starting with ``prefix``; (arrival time, line)."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            try:
                when, line = self._lines.get(timeout=max(0.0, min(left, 0.2)))
            except queue.Empty:
                if left <= 0:
                    pytest.fail(f"no line starting with {prefix!r} within "
                                f"{timeout} s\n{self.describe()}")
                continue
            if line.startswith(prefix):
                return when, line.rstrip("\n")

    def tree(self) -> list:
        """The launcher and every process it started, alive now."""
        try:
            return [psutil.Process(self.pid), *descendants(self.pid)]
        except psutil.Error:
            return []

    def finish(self, timeout: float = 30) -> int:
        """Wait for the launcher to exit and its output to be read; its code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the run did not end within {timeout} s\n{self.describe()}")
        for reader in self._readers:
            reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            kill_family(self.proc)
        self.proc.wait(10)

    def describe(self) -> str:
        return ("--- stdout ---\n" + "".join(self.stdout_lines)[-3000:]
                + "\n--- stderr ---\n" + "".join(self.stderr_lines)[-3000:])


# -- nothing left behind ------------------------------------------------------------


def snapshot() -> set:
    return set(psutil.process_iter())  # Process equality: pid + start time


def suspects(before: set, token: str) -> list:
    """scoop_rt processes that belong to this test: descendants of this
    process, or processes started during the test that carry its token."""
    me = os.getpid()
    procs = list(psutil.process_iter(["ppid", "cmdline", "status"]))
    parent = {p.pid: p.info["ppid"] for p in procs}
    found = []
    for p in procs:
        try:
            if p.pid == me or p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if "scoop_rt" not in " ".join(p.info["cmdline"] or []):
                continue
            ancestor, hops = parent.get(p.pid), 0
            while ancestor not in (None, 0, me) and hops < 100:
                ancestor, hops = parent.get(ancestor), hops + 1
            if ancestor == me:
                found.append(p)
            elif p not in before and p.environ().get(TOKEN_VAR) == token:
                found.append(p)
        except psutil.Error:
            continue
    return found


@contextlib.contextmanager
def real_broker(config=None, size=1):
    """A broker process on its own, bootstrapped as the launcher does for a
    run of ``size`` workers over TCP; yields (its endpoint, the run's keys),
    and stops it at the end."""
    from scoop_rt import __version__, transport
    from scoop_rt.bootstrap import BrokerBoot
    from scoop_rt.config import Config
    keys = transport.make_keys()
    boot = BrokerBoot(config=config or Config(), keys=keys, version=__version__,
                      size=size, bind="127.0.0.1")
    broker = subprocess.Popen([sys.executable, "-m", "scoop_rt.broker"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    try:
        broker.stdin.write(boot.to_json().encode())
        broker.stdin.close()
        assert select.select([broker.stdout], [], [], 30)[0], "the broker said nothing"
        yield json.loads(broker.stdout.readline())["endpoint"], keys
    finally:
        broker.terminate()
        broker.wait(timeout=30)


def role_of(p: psutil.Process) -> str | None:
    """"broker", "worker" or "origin" for a process of a run, else None.

    A forked broker or worker keeps its parent's command line and has its
    role in its name; a started one has it in its command line.
    """
    try:
        text = f"{p.name()} {' '.join(p.cmdline())}"
    except psutil.Error:
        return None
    return next((role for role in ("broker", "worker", "origin")
                 if f"scoop_rt.{role}" in text), None)


def is_alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
