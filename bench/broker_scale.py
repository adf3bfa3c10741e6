"""How many tasks a second one broker dispatches, to 1 .. 1,000 workers.

    python bench/broker_scale.py [--quick] [--workers 1,10,100,1000]
                                 [--tasks 10000,100000] [--prefetch 0,32]
                                 [--security on,off] [--drivers D] [--repeat R]

Starts a real broker (``python -m scoop_rt.broker``, with the bootstrap the
launcher gives it) and, instead of worker processes, *simulated workers*:
W clients, each with the three sockets a real worker has (main, ``!tx``
sending, ``!hb`` heartbeat), CURVE-authenticated with the run's client keys,
that say HELLO, wait for WELCOME, ping once a second, optionally ask for one
task ahead (``CREDIT``, as real workers do when tasks are short), and answer
every TASK at once with a RESULT of a few bytes. They run in D driver
processes (one by default), each driving its sockets from one
``zmq.Poller``. An origin-like client in this process submits T tasks on its
``!tx`` socket, keeping a window of them in flight, and counts the RESULTs
that come back on its main socket.

What it measures, for each (security, W, prefetch, T): tasks per second from
the first SUBMIT to the last RESULT, and the CPU time the broker process
spent meanwhile (all its threads, and its Python thread alone). The
simulated side costs about as much CPU per task as the broker (it sends and
receives as many messages), so on a small machine the rate can be limited by
the simulation rather than by the broker: the table shows both sides' CPU,
and "broker ceiling" = T / broker Python-thread CPU seconds, the rate the
broker's loop would reach with a core of its own at the same cost per task.

Writes bench/results/broker_scale.json and broker_scale.png (tasks/s and
broker CPU per task against workers; the chart needs matplotlib).
"""

from __future__ import annotations

import argparse
import re
import json
import multiprocessing
import os
import platform
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import zmq

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this tree's scoop_rt, not an installed one

from scoop_rt import __version__, protocol, transport  # noqa: E402
from scoop_rt.config import Config  # noqa: E402
from scoop_rt.protocol import Msg, Status  # noqa: E402

PYTHON = "%d.%d" % sys.version_info[:2]
TARGET = 100_000            # tasks/s the issue asks for, with 1,000 workers
PING_EVERY = 1.0            # seconds, as Config().heartbeat_interval
BROKER_START_TIMEOUT = 30.0
TASK_PAYLOAD = b"task"      # a few opaque bytes: the broker never looks inside
RESULT_PAYLOAD = b"done"    # as long as TASK_PAYLOAD: see driver()

BATCH = 64                  # tasks per SUBMIT, as a real client's BATCH_MAX

# Message headers, spelled by the protocol module once.
TASK_HEAD = protocol.encode_batch(Msg.TASK, [], [])[0]
RESULT_HEAD = protocol.encode_batch(Msg.RESULT, [])[0]

PING = protocol.encode(Msg.PING)


class BenchError(Exception):
    """A step of the benchmark did not finish in time; the message says which."""


def raise_fd_limit() -> int:
    """Lift this process's open-file limit to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def hello(role: str, name: str) -> list:
    return protocol.encode(Msg.HELLO, role, name, socket.gethostname(),
                           os.getpid(), __version__, PYTHON)


class Pinger:
    """Heartbeats for many clients: one PING a second from each ``!hb``
    socket, and the PONGs read off, so the broker never declares one silent."""

    def __init__(self, sockets: list):
        self.sockets = sockets
        self.next = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + PING_EVERY
        for sock in self.sockets:
            while sock.poll(0):
                sock.recv_multipart()
            sock.send_multipart(PING)


# -- the simulated workers (one driver process each) --------------------------

def driver(conn, endpoint: str, keys: dict | None, index: int, names: list,
           timeout: float) -> None:
    """Run the simulated workers ``names``; obey commands from ``conn``.

    Commands: ("credit", n) asks every worker's prefetch; ("stats",) returns
    tasks answered and this process's CPU seconds; ("stop",) ends it.
    """
    raise_fd_limit()
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, 3 * len(names) + 64)
    started = time.monotonic()
    mains, txs, hbs = [], [], []
    pinger = Pinger(hbs)  # pings from every worker that has said HELLO so far
    for name in names:
        identity = f"{name}:{index}:sim".encode()
        main = transport.connect_dealer(ctx, endpoint, keys, identity)
        mains.append(main)
        txs.append(transport.connect_dealer(
            ctx, endpoint, keys, protocol.sending_identity(identity)))
        hbs.append(transport.connect_heartbeat(ctx, endpoint, keys, identity))
        main.send_multipart(hello("worker", name))
        pinger.tick()
    created = time.monotonic() - started
    poller = zmq.Poller()
    for main in mains:
        poller.register(main, zmq.POLLIN)
    waiting = set(mains)
    deadline = time.monotonic() + timeout
    while waiting:
        if time.monotonic() > deadline:
            conn.send(("error", f"driver {index}: {len(waiting)} of {len(names)} "
                                f"workers got no WELCOME within {timeout:.0f} s"))
            return
        pinger.tick()
        for sock, _ in poller.poll(200):
            msg = protocol.decode(sock.recv_multipart())
            if msg.type == Msg.WELCOME:
                waiting.discard(sock)
            elif msg.type == Msg.REFUSED:
                conn.send(("error", msg.fields.reason))
                return
    conn.send(("ready", len(names), time.monotonic() - started, created))

    tx_of = dict(zip(mains, txs))
    control = conn.fileno()
    poller.register(control, zmq.POLLIN)
    answered = 0
    me = psutil.Process()
    while True:
        for sock, _ in poller.poll(100):
            if sock == control:
                command = conn.recv()
                if command[0] == "credit":
                    credit = protocol.encode(Msg.CREDIT, command[1])
                    for tx in txs:
                        tx.send_multipart(credit)
                    conn.send(("ok",))
                elif command[0] == "stats":
                    cpu = me.cpu_times()
                    conn.send(("stats", answered, cpu.user + cpu.system))
                elif command[0] == "stop":
                    for s in mains + txs + hbs:
                        s.close(linger=0)
                    ctx.term()
                    conn.send(("stopped",))
                    return
                continue
            frames = sock.recv_multipart()
            if frames[0] == TASK_HEAD:
                # Every task here has flags 0 and a payload of one frame of
                # 4 bytes, and every outcome status OK (0) and one frame of 4
                # bytes: the RESULT's index is the TASK's, byte for byte (its
                # reply_to, frames[3], is all -1: the tasks are not DIRECT).
                count = len(frames[1]) // 32  # 4 integers of 8 bytes a task
                tx_of[sock].send_multipart(
                    [RESULT_HEAD, frames[1], RESULT_PAYLOAD * count])
                answered += count
            # CONST, SHUTDOWN: nothing to do; the broker's end is ours to see.
        pinger.tick()


# -- the origin-like client (in this process) ---------------------------------

class Origin:
    """Submits tasks and counts their results, as an origin's client would."""

    def __init__(self, ctx: zmq.Context, endpoint: str, keys: dict | None,
                 timeout: float):
        identity = f"origin:{os.getpid()}:sim".encode()
        self.main = transport.connect_dealer(ctx, endpoint, keys, identity)
        self.tx = transport.connect_dealer(ctx, endpoint, keys,
                                           protocol.sending_identity(identity))
        self.pinger = Pinger([transport.connect_heartbeat(ctx, endpoint, keys, identity)])
        self.main.send_multipart(hello("origin", "origin"))
        deadline = time.monotonic() + timeout
        while True:
            self.pinger.tick()
            if time.monotonic() > deadline:
                raise BenchError(f"the origin got no WELCOME within {timeout:.0f} s")
            if self.main.poll(200):
                msg = protocol.decode(self.main.recv_multipart())
                if msg.type == Msg.WELCOME:
                    break
                if msg.type == Msg.REFUSED:
                    raise BenchError(msg.fields.reason)
        self.next_tid = 1

    def run(self, tasks: int, window: int, timeout: float) -> dict:
        """Submit ``tasks`` tasks, at most ``window`` unanswered; time them."""
        first = self.next_tid
        self.next_tid += tasks
        submits = [protocol.encode_batch(
            Msg.SUBMIT, [(tid, 0, [TASK_PAYLOAD])
                         for tid in range(start, min(start + BATCH, first + tasks))])
            for start in range(first, first + tasks, BATCH)]
        seen = bytearray(tasks)
        main, tx, pinger = self.main, self.tx, self.pinger
        sent = done = 0
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        while done < tasks:
            while sent < tasks and sent - done < window:
                tx.send_multipart(submits[sent // BATCH])
                sent = min(tasks, sent + BATCH)
            if main.poll(100):
                for _ in range(window):
                    try:
                        frames = main.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    msg = protocol.decode(frames)
                    if msg.type != Msg.RESULT:
                        continue
                    index = msg.fields.index
                    if any(status != Status.OK for status in index[1::4]):
                        raise BenchError(f"a task failed: {msg.payload!r}")
                    for tid in index[0::4]:
                        tid -= first
                        if 0 <= tid < tasks and not seen[tid]:
                            seen[tid] = 1
                            done += 1
            pinger.tick()
            if time.monotonic() > deadline:
                raise BenchError(f"{tasks - done} of {tasks} tasks unanswered "
                                 f"after {timeout:.0f} s")
        return {"seconds": time.perf_counter() - t0}

    def tick_while(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.pinger.tick()
            time.sleep(0.05)

    def bye(self) -> None:
        self.tx.send_multipart(protocol.encode(Msg.BYE, 0))

    def close(self) -> None:
        for sock in (self.main, self.tx, *self.pinger.sockets):
            sock.close(linger=0)


# -- the broker process -------------------------------------------------------

def start_broker(size: int, secure: bool) -> tuple:
    """A real broker, started as the launcher starts one; and its endpoint."""
    config = Config(secure=secure)
    keys = transport.make_keys() if secure else None
    boot = {"config": config.to_dict(), "keys": keys, "version": __version__,
            "size": size, "bind": "127.0.0.1", "port_range": None,
            "parent_pid": os.getpid()}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    log = tempfile.TemporaryFile()  # its warnings, counted and shown after
    proc = subprocess.Popen([sys.executable, "-m", "scoop_rt.broker"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=log, env=env)
    proc.log = log
    proc.stdin.write(json.dumps(boot).encode())
    proc.stdin.close()
    ready, _, _ = select.select([proc.stdout], [], [], BROKER_START_TIMEOUT)
    line = proc.stdout.readline() if ready else b""
    proc.stdout.close()
    try:
        endpoint = json.loads(line)["endpoint"]
    except (ValueError, KeyError, TypeError):
        stop_process(proc)
        raise BenchError(f"the broker did not report its endpoint within "
                         f"{BROKER_START_TIMEOUT:.0f} s (exit code {proc.poll()})") from None
    return proc, endpoint, (transport.client_keys(keys) if keys else None)


def stop_process(proc, grace: float = 5.0) -> None:
    """Wait for ``proc`` to leave; terminate, then kill it if it does not."""
    try:
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        proc.terminate()
    try:
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5.0)


def listen_overflows() -> int | None:
    """This machine's count of connections its listen queues dropped (Linux),
    or None. A connect that overflows waits for the kernel to retry its SYN
    (1 s, then 3 s, 7 s, ...), which is what makes a crowd of clients slow
    to join."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:]))
            return int(row.get("ListenOverflows", 0))
    return None


def broker_cpu(proc: psutil.Process) -> tuple[float, float]:
    """(all threads, the Python main thread) CPU seconds of the broker."""
    total = proc.cpu_times()
    main = next((t.user_time + t.system_time for t in proc.threads()
                 if t.id == proc.pid), 0.0)
    return total.user + total.system, main


# -- one broker, several measurements ------------------------------------------

class Drivers:
    """The driver processes of the simulated workers, and their control pipes."""

    def __init__(self, endpoint: str, keys: dict | None, workers: int, count: int,
                 timeout: float):
        mp = multiprocessing.get_context("spawn")
        count = max(1, min(count, workers))
        names = [f"w{i}" for i in range(workers)]
        self.timeout = timeout
        self.procs, self.conns = [], []
        for index in range(count):
            ours, theirs = mp.Pipe()
            proc = mp.Process(target=driver, name=f"sim-driver-{index}",
                              args=(theirs, endpoint, keys, index,
                                    names[index::count], timeout), daemon=True)
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.conns.append(ours)

    def ask(self, command: tuple, tick, timeout: float | None = None) -> list:
        """Send ``command`` to every driver; their replies (ticking meanwhile)."""
        for conn in self.conns:
            if command:
                conn.send(command)
        replies = []
        deadline = time.monotonic() + (timeout or self.timeout)
        for conn, proc in zip(self.conns, self.procs):
            while not conn.poll(0.05):
                tick()
                if time.monotonic() > deadline or not proc.is_alive():
                    raise BenchError(f"{proc.name} did not answer {command or 'ready'} "
                                     f"(alive: {proc.is_alive()})")
            reply = conn.recv()
            if reply[0] == "error":
                raise BenchError(reply[1])
            replies.append(reply)
        return replies

    def cpu(self) -> float:
        total = 0.0
        for proc in self.procs:
            try:
                t = psutil.Process(proc.pid).cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        for conn, proc in zip(self.conns, self.procs):
            try:
                if proc.is_alive():
                    conn.send(("stop",))
                    conn.poll(5.0)
            except (OSError, EOFError):
                pass
            proc.join(timeout=5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5.0)


def measure_broker(secure: bool, workers: int, prefetches: list, tasks: list,
                   args) -> list:
    """Start a broker and W simulated workers; time every (prefetch, T)."""
    rows = []
    proc, endpoint, keys = start_broker(workers, secure)
    broker = psutil.Process(proc.pid)
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, 256)
    drivers = origin = None
    label = f"security {'on' if secure else 'off'}, {workers} workers"
    spy = None
    try:
        setup = time.monotonic()
        overflows = listen_overflows()
        if args.profile:
            spy = start_profiler(proc.pid, args.profile /
                                 f"broker_{'secure' if secure else 'plain'}_{workers}.txt")
        drivers = Drivers(endpoint, keys, workers, args.drivers, args.timeout)
        ready = drivers.ask((), lambda: time.sleep(0.01))
        joined = time.monotonic() - setup
        if overflows is not None:
            overflows = listen_overflows() - overflows
        origin = Origin(ctx, endpoint, keys, args.timeout)
        print(f"  {label}: all joined in {joined:.1f} s (drivers: "
              + ", ".join(f"sockets made in {r[3]:.1f} s, welcomed after {r[2]:.1f} s"
                          for r in ready) + ")"
              + (f"; {overflows} connections overflowed a listen queue meanwhile"
                 if overflows else ""), flush=True)
        window = args.window or max(1000, 64 * workers)
        for prefetch in prefetches:
            drivers.ask(("credit", prefetch), origin.pinger.tick)
            origin.tick_while(0.2)  # the CREDITs reach the broker first
            origin.run(max(1000, 4 * workers), window, args.timeout)  # warm-up
            for size in tasks:
                for _ in range(args.repeat):
                    cpu0, main0 = broker_cpu(broker)
                    sim0, me0 = drivers.cpu(), psutil.Process().cpu_times()
                    done0 = sum(r[1] for r in drivers.ask(("stats",), origin.pinger.tick))
                    out = origin.run(size, window, args.timeout)
                    cpu1, main1 = broker_cpu(broker)
                    sim1, me1 = drivers.cpu(), psutil.Process().cpu_times()
                    done1 = sum(r[1] for r in drivers.ask(("stats",), origin.pinger.tick))
                    sec = out["seconds"]
                    row = {
                        "secure": secure, "workers": workers, "prefetch": prefetch,
                        "tasks": size, "window": window, "seconds": sec,
                        "tasks_per_s": size / sec,
                        "broker_cpu_s": cpu1 - cpu0,
                        "broker_main_cpu_s": main1 - main0,
                        "broker_cpu_pct": 100 * (cpu1 - cpu0) / sec,
                        "broker_us_per_task": 1e6 * (cpu1 - cpu0) / size,
                        "broker_main_us_per_task": 1e6 * (main1 - main0) / size,
                        "broker_ceiling_tasks_per_s":
                            size / (main1 - main0) if main1 > main0 else None,
                        "sim_workers_cpu_s": sim1 - sim0,
                        "origin_cpu_s": (me1.user + me1.system) - (me0.user + me0.system),
                        "answered_by_workers": done1 - done0,
                        "join_seconds": joined,
                        "join_listen_overflows": overflows,
                    }
                    rows.append(row)
                    print("  " + table_line(row), flush=True)
        origin.bye()
    except BenchError as exc:
        print(f"  {label}: {exc}", file=sys.stderr, flush=True)
        rows.append({"secure": secure, "workers": workers, "error": str(exc)})
    finally:
        stop_process(proc)
        proc.log.seek(0)
        said = proc.log.read().decode(errors="replace").splitlines()
        proc.log.close()
        lost = sum(" lost: " in line for line in said)
        for row in rows:
            row["broker_log_lines"] = len(said)
            row["workers_lost"] = lost
        for line in said[:10]:
            print(f"  broker: {line}", file=sys.stderr)
        if len(said) > 10:
            print(f"  broker: ... {len(said) - 10} more lines", file=sys.stderr)
        if spy is not None:
            report_profile(*spy)
        if drivers is not None:
            drivers.stop()
        if origin is not None:
            origin.close()
        ctx.term()
    return rows


# -- profile (optional) ----------------------------------------------------------

def start_profiler(pid: int, path: Path) -> tuple:
    """py-spy sampling the broker until it exits, lines aggregated (raw format)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw",
                             "--rate", "250", "--nonblocking", "--output", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, path


def report_profile(proc: subprocess.Popen, path: Path, top: int = 15) -> None:
    """Print where the broker's busy samples were: own time per line, and
    time per function with its callees."""
    stop_process(proc, grace=10.0)
    if not path.exists():
        print(f"  profile: py-spy wrote nothing (exit code {proc.returncode}); "
              "is it installed, and may it ptrace?", file=sys.stderr)
        return
    own: dict = {}
    inclusive: dict = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for func in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            inclusive[func] = inclusive.get(func, 0) + n
    if not total:
        print("  profile: no busy samples", flush=True)
        return
    print(f"  profile ({total} busy samples, {path}):")
    print("    own time per line:")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"      {100 * n / total:5.1f}%  {frame}")
    print("    with callees, per function:")
    for func, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        print(f"      {100 * n / total:5.1f}%  {func}")
    sys.stdout.flush()


# -- output -------------------------------------------------------------------

HEADER = ("security  workers  prefetch    tasks   seconds   tasks/s  "
          "broker CPU%  broker us/task  py-thread us/task  ceiling/s  sim CPU%")


def table_line(r: dict) -> str:
    if "error" in r:
        return (f"{'on' if r['secure'] else 'off':>8}  {r['workers']:>7}  "
                f"error: {r['error']}")
    ceiling = r["broker_ceiling_tasks_per_s"]
    sim = 100 * (r["sim_workers_cpu_s"] + r["origin_cpu_s"]) / r["seconds"]
    return (f"{'on' if r['secure'] else 'off':>8}  {r['workers']:>7}  "
            f"{r['prefetch']:>8}  {r['tasks']:>7}  {r['seconds']:>8.2f}  "
            f"{r['tasks_per_s']:>8.0f}  {r['broker_cpu_pct']:>11.0f}  "
            f"{r['broker_us_per_task']:>14.1f}  {r['broker_main_us_per_task']:>17.1f}  "
            f"{ceiling or 0:>9.0f}  {sim:>8.0f}")


def summarize(rows: list) -> list:
    """One row per (security, W, prefetch, T): the median of its repeats."""
    groups: dict = {}
    for r in rows:
        if "error" not in r:
            groups.setdefault((r["secure"], r["workers"], r["prefetch"], r["tasks"]),
                              []).append(r)
    out = []
    for key, runs in sorted(groups.items(), key=lambda kv: (not kv[0][0], *kv[0][1:])):
        best = dict(sorted(runs, key=lambda r: r["tasks_per_s"])[len(runs) // 2])
        best["repeats"] = len(runs)
        best["tasks_per_s_all"] = [r["tasks_per_s"] for r in runs]
        out.append(best)
    return out


def machine() -> dict:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        rev = ""
    return {"cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "memory_gb": psutil.virtual_memory().total / 2**30,
            "load_average_at_start": os.getloadavg(), "python": platform.python_version(),
            "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
            "scoop_rt": __version__, "git": rev, "host": socket.gethostname()}


def plot(summary: list, path: Path) -> str | None:
    """Tasks/s and broker CPU per task against workers; None if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ("no chart: matplotlib is not installed in this Python "
                f"({sys.executable} -m pip install matplotlib)")
    fig, (rate_ax, cost_ax, join_ax) = plt.subplots(
        1, 3, figsize=(17, 5), gridspec_kw={"width_ratios": [3, 3, 2]})
    lines: dict = {}
    for r in summary:
        lines.setdefault((r["secure"], r["prefetch"], r["tasks"]), []).append(r)
    colors = {key: f"C{i}" for i, key in enumerate(sorted({k[1:] for k in lines}))}
    for (secure, prefetch, size), rs in sorted(lines.items(), key=lambda kv: (not kv[0][0], *kv[0][1:])):
        rs.sort(key=lambda r: r["workers"])
        ws = [r["workers"] for r in rs]
        label = f"T={size:,}, prefetch {prefetch}, security {'on' if secure else 'off'}"
        style = dict(marker="o", linestyle="-" if secure else "--", label=label,
                     color=colors[prefetch, size])
        rate_ax.plot(ws, [r["tasks_per_s"] for r in rs], **style)
        cost_ax.plot(ws, [r["broker_us_per_task"] for r in rs], **style)
    joins: dict = {}
    for r in summary:
        joins.setdefault(r["secure"], {})[r["workers"]] = r["join_seconds"]
    for secure, by_w in sorted(joins.items(), reverse=True):
        ws = sorted(by_w)
        join_ax.plot(ws, [by_w[w] for w in ws], marker="o", color="k",
                     linestyle="-" if secure else "--",
                     label=f"security {'on' if secure else 'off'}")
    rate_ax.axhline(TARGET, color="grey", linewidth=0.8, linestyle=":")
    rate_ax.text(1, TARGET, " target 100,000/s", va="bottom", fontsize=8, color="grey")
    for ax in (rate_ax, cost_ax, join_ax):
        ax.set_xscale("log")
        ax.set_xlabel("simulated workers")
        ax.grid(True, which="both", alpha=0.3)
    rate_ax.set_yscale("log")
    rate_ax.set_ylabel("tasks dispatched per second")
    rate_ax.set_title("broker throughput")
    cost_ax.set_ylabel("broker CPU µs per task (all threads)")
    cost_ax.set_ylim(bottom=0)
    cost_ax.set_title("broker cost per task")
    join_ax.set_ylabel("seconds until every worker is welcomed")
    join_ax.set_ylim(bottom=0)
    join_ax.set_title("joining (3 sockets per worker)")
    join_ax.legend(fontsize=7)
    rate_ax.legend(fontsize=7)
    fig.suptitle(f"scoop_rt broker, simulated workers, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _ints(text: str) -> list:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tasks 2,000 and 10,000 instead of 10,000 and 100,000")
    p.add_argument("--workers", type=_ints, default=[1, 10, 100, 1000],
                   help="simulated workers, comma-separated (default 1,10,100,1000)")
    p.add_argument("--tasks", type=_ints,
                   help="tasks per measurement (default 10000,100000)")
    p.add_argument("--prefetch", type=_ints, default=[0, 32],
                   help="CREDIT the workers ask for (default 0,32)")
    p.add_argument("--security", default="on,off",
                   help="on, off, or on,off (default): CURVE on the broker's socket")
    p.add_argument("--drivers", type=int, default=1,
                   help="processes that run the simulated workers (default 1)")
    p.add_argument("--window", type=int, default=0,
                   help="tasks in flight (default max(1000, 64 x workers))")
    p.add_argument("--repeat", type=int, default=1, help="runs per measurement")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds any one step may take (default 300)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="sample the broker with py-spy; raw profiles go to DIR "
                        "and the top lines are printed")
    p.add_argument("--out", type=Path, default=BENCH / "results")
    args = p.parse_args(argv)
    args.tasks = args.tasks or ([2_000, 10_000] if args.quick else [10_000, 100_000])
    modes = {"on": True, "off": False}
    try:
        args.security = [modes[m.strip()] for m in args.security.split(",")]
    except KeyError:
        p.error("--security takes on, off, or on,off")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    fds = raise_fd_limit()
    info = machine()
    print(f"broker_scale: {info['cores']} cores, load {info['load_average_at_start'][0]:.2f}, "
          f"Python {info['python']}, libzmq {info['libzmq']}, open files {fds}", flush=True)
    rows = []
    for secure in args.security:
        for workers in args.workers:
            rows += measure_broker(secure, workers, args.prefetch, args.tasks, args)
    summary = summarize(rows)
    print()
    print(HEADER)
    for r in summary:
        print(table_line(r))
    for r in rows:
        if "error" in r:
            print(table_line(r))
    best = [r for r in summary if r["workers"] == max(args.workers)]
    if best:
        top = max(best, key=lambda r: r["tasks_per_s"])
        verdict = "meets" if top["tasks_per_s"] >= TARGET else "misses"
        print(f"\nwith {top['workers']} workers the best is {top['tasks_per_s']:,.0f} tasks/s "
              f"(security {'on' if top['secure'] else 'off'}, prefetch {top['prefetch']}, "
              f"{top['tasks']:,} tasks): {verdict} the {TARGET:,}/s target")
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"machine": info, "options": {k: (str(v) if isinstance(v, Path) else v)
                                        for k, v in vars(args).items()},
           "note": "sim CPU = simulated workers' and origin's CPU; the broker's "
                   "ceiling = tasks / CPU seconds of its Python thread",
           "summary": summary, "runs": rows}
    (args.out / "broker_scale.json").write_text(json.dumps(out, indent=1))
    problem = plot(summary, args.out / "broker_scale.png")
    print(f"wrote {args.out / 'broker_scale.json'}"
          + (f"; {problem}" if problem else f" and {args.out / 'broker_scale.png'}"))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
