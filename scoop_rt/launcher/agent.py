"""The host agent: what the launcher starts on each remote host over SSH.

    python -m scoop_rt.launcher.agent      (bootstrap on stdin, one JSON line)

One SSH channel per host, whatever the number of workers: the agent starts
the host's workers as local processes, hands each its bootstrap, and sends
their output back as whole lines on its own stdout and stderr. It then keeps
reading stdin: when the launcher closes the channel, or its SSH connection
drops because the launcher died, stdin ends and the agent kills its workers
and leaves, so nothing of the run stays on the host.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from .. import tuning
from ..bootstrap import AgentBoot, BootError
from . import output, spawn
from .watch import WorkerWatch


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    line = sys.stdin.buffer.readline()
    try:
        boot = AgentBoot.from_json(line)
    except BootError as exc:
        sys.exit(f"scoop_rt agent: started by the launcher only ({exc})")
    forwarder = output.Forwarder()
    first = boot.workers[0] if boot.workers else None
    spawner = spawn.LocalSpawner(fork=bool(first and first.config.fork))
    workers = []
    for worker_boot in boot.workers:
        proc = spawner.start_worker("scoop_rt.worker")
        forwarder.add_pipe(proc.stdout, output.stdout())
        forwarder.add_pipe(proc.stderr, output.stderr())
        spawn.write_close(proc.stdin, worker_boot.to_json().encode())
        workers.append(proc)
    forwarder.start()
    watch = None
    if first:
        watch = WorkerWatch(first.endpoint, first.keys,
                            [([b.name], p) for b, p in zip(boot.workers, workers)])
        watch.start()
    launcher_gone = threading.Event()
    threading.Thread(target=_watch_stdin, args=(launcher_gone,), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: launcher_gone.set())
    while not launcher_gone.is_set() and any(p.poll() is None for p in workers):
        launcher_gone.wait(tuning.AGENT_POLL)
    if watch is not None:
        watch.stop(report_exited=not launcher_gone.is_set())
    if launcher_gone.is_set():
        grace = time.monotonic() + 1.0
        while any(p.poll() is None for p in workers) and time.monotonic() < grace:
            time.sleep(0.05)
    for proc in workers:
        spawn.kill_tree(proc)
    forwarder.close(timeout=2.0)
    codes = [p.wait() for p in workers]
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: the stdin watcher may still sit in a read, which would make
    # an ordinary exit abort at interpreter shutdown.
    os._exit(0 if all(c == 0 for c in codes) else 1)


def _watch_stdin(gone: threading.Event) -> None:
    while sys.stdin.buffer.read(4096):
        pass
    gone.set()


if __name__ == "__main__":
    main()
