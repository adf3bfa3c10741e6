"""Fixtures and hooks shared by the tests; the helpers live in ``support``.

Every test is checked for processes left behind: after it, any process whose
command line mentions scoop_rt and that descends from this process, or that
was started during the test by one of its runs, must be gone within a few
seconds; if not, it is killed and the test fails naming it.
"""

from __future__ import annotations

import time
import uuid

import psutil
import pytest

from support import runs
from support.runs import LiveRun, is_alive, scoop_argv, write_script

# Real SSH hosts (network namespaces with their own sshd) for the SSH tests.
from support.sshhosts import ssh_hosts, ssh_hosts_factory  # noqa: F401

LEFTOVER_GRACE = 3.0


@pytest.fixture
def live_scoop(tmp_path):
    """Start a run to watch: ``live_scoop(source, *args, n=2)`` -> LiveRun.
    Whatever is still running when the test ends is killed."""
    started = []

    def start(source: str, *args: str, n: int | None = 2,
              launcher_args: tuple = (), prelude: bool = True,
              env: dict | None = None) -> LiveRun:
        script = write_script(tmp_path, source, prelude=prelude)
        run = LiveRun(scoop_argv(script, *args, n=n, launcher_args=launcher_args),
                      tmp_path, env)
        started.append(run)
        return run

    yield start
    for run in started:
        if run.proc.poll() is None:
            run.kill()
        for stream in (run.proc.stdout, run.proc.stderr):
            stream.close()


@pytest.fixture(autouse=True)
def no_process_left_behind():
    before = runs.snapshot()
    token = uuid.uuid4().hex
    runs.set_token(token)
    try:
        yield
    finally:
        runs.set_token(None)
    # Scan again and again: a process that exits may leave children behind,
    # and one caught between fork and exec may be missed by a single scan.
    end = time.monotonic() + LEFTOVER_GRACE
    clean_scans = 0
    while True:
        suspects = [p for p in runs.suspects(before, token) if is_alive(p)]
        clean_scans = 0 if suspects else clean_scans + 1
        if clean_scans == 2:
            return
        if time.monotonic() >= end and suspects:
            break
        time.sleep(0.1)
    names = []
    for p in suspects:
        try:
            names.append(f"pid {p.pid}: {' '.join(p.cmdline())}")
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(suspects, timeout=3)
    pytest.fail(f"{len(names)} process(es) still running {LEFTOVER_GRACE:.0f} s "
                "after the test (now killed):\n  " + "\n  ".join(names))
