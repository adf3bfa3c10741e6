"""What an idle run costs: CPU of each worker, the broker, the origin and
the launcher while the script does nothing.

    python bench/idle_cpu.py [--workers 4] [--seconds 10]

Runs ``python -m scoop_rt -n 4`` on this file. Its origin (``--origin``) does
one warm-up map, says so on stdout, then sleeps. Once it has said so, this
side waits a moment for the warm-up to settle, samples the CPU times and the
voluntary context switches (wake-ups) of every process of the run over
``seconds``, and prints CPU % per process: an idle worker must stay under 1 %
(no busy polling; what remains is the heartbeat, one ping a second). Writes
bench/results/idle_cpu.json, then checks that the run ended and left no
process behind.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TOKEN_VAR = "BENCH_IDLE_CPU_TOKEN"
LIMIT_PCT = 1.0
SETTLE = 1.0  # seconds between the warm-up's end and the first sample


def noop(x):
    return x


def origin(idle: float) -> None:
    from scoop_rt import futures
    assert list(futures.map(noop, range(1000))) == list(range(1000))
    print(json.dumps({"warm": True, "origin_pid": os.getpid()}), flush=True)
    time.sleep(idle)
    print(json.dumps({"done": True}), flush=True)


def role_of(p) -> str:
    """A forked broker or worker has its role in its name, a started
    process in its command line."""
    text = f"{p.name()} {' '.join(p.cmdline())}"
    for role in ("broker", "worker", "origin"):
        if f"scoop_rt.{role}" in text:
            return role
    return "other"


def wakeups(p) -> int:
    """Voluntary context switches of all the process's threads (psutil
    counts its main thread only); a thread that sleeps in poll and wakes
    adds one each time."""
    total = 0
    try:
        for task in Path(f"/proc/{p.pid}/task").iterdir():
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    except OSError:  # not Linux, or a thread left meanwhile
        return p.num_ctx_switches().voluntary
    return total


def sample(procs: dict) -> dict:
    """Per pid: CPU seconds, voluntary context switches, threads."""
    import psutil
    out = {}
    for pid, p in procs.items():
        try:
            with p.oneshot():
                t = p.cpu_times()
                out[pid] = (t.user + t.system, wakeups(p),
                            p.num_threads())
        except psutil.Error:  # it left meanwhile
            pass
    return out


def measure(proc, seconds: float, result: dict) -> None:
    """Sample every process of the run over ``seconds``; fill ``result``."""
    import psutil
    time.sleep(SETTLE)
    launcher = psutil.Process(proc.pid)
    procs = {launcher.pid: launcher}
    roles = {launcher.pid: "launcher"}
    for kid in launcher.children(recursive=True):
        procs[kid.pid] = kid
        roles[kid.pid] = role_of(kid)
    before = sample(procs)
    t0 = time.monotonic()
    time.sleep(seconds)
    after = sample(procs)
    span = time.monotonic() - t0
    rows = []
    for pid in sorted(before, key=lambda x: (roles[x], x)):
        if pid not in after:
            continue
        cpu = after[pid][0] - before[pid][0]
        rows.append({"pid": pid, "role": roles[pid], "cpu_s": cpu,
                     "cpu_pct": 100 * cpu / span,
                     "wakeups_per_s": (after[pid][1] - before[pid][1]) / span,
                     "threads": after[pid][2]})
    result["processes"] = rows
    workers = [r for r in rows if r["role"] == "worker"]
    result["worker_max_pct"] = max((r["cpu_pct"] for r in workers), default=None)
    result["broker_pct"] = next((r["cpu_pct"] for r in rows if r["role"] == "broker"), None)
    result["ok"] = bool(workers) and result["worker_max_pct"] < LIMIT_PCT
    print(f"  {'process':<10} {'pid':>7} {'CPU %':>7} {'wake-ups/s':>11} {'threads':>8}")
    for r in rows:
        print(f"  {r['role']:<10} {r['pid']:>7} {r['cpu_pct']:>7.2f} "
              f"{r['wakeups_per_s']:>11.1f} {r['threads']:>8}")
    print(f"  busiest worker {result['worker_max_pct']:.2f} % "
          f"({'under' if result['ok'] else 'NOT under'} {LIMIT_PCT:g} %), "
          f"broker {result['broker_pct'] or 0:.2f} %")


def main(argv=None) -> int:
    import platform
    import subprocess

    import psutil
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10.0, help="sampling period")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for the warm-up (default 120)")
    p.add_argument("--out", type=Path, default=BENCH / "results")
    args = p.parse_args(argv)
    idle = args.seconds + SETTLE + 1.0  # the origin sleeps past the sampling

    token = uuid.uuid4().hex
    env = dict(os.environ, **{TOKEN_VAR: token}, PYTHONPATH=os.pathsep.join(
        x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x))
    argv = [sys.executable, "-m", "scoop_rt", "-n", str(args.workers), __file__,
            "--origin", str(idle)]
    print(f"idle_cpu: {args.workers} workers, {args.seconds:.0f} s sampled, "
          f"{os.cpu_count()} cores (load {os.getloadavg()[0]:.2f})", flush=True)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env,
                            start_new_session=True)
    result = {"machine": {"cores": os.cpu_count(), "load_average_at_start": os.getloadavg(),
                          "python": platform.python_version()},
              "workers": args.workers, "seconds": args.seconds, "limit_pct": LIMIT_PCT}
    try:
        warm = None
        deadline = time.monotonic() + args.timeout
        while warm is None and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break
                if line.startswith(b"{") and b"warm" in line:
                    warm = json.loads(line)
        if warm is None:
            result["error"] = f"the run did not finish its warm-up within {args.timeout:.0f} s"
            print(f"  {result['error']}", file=sys.stderr)
            proc.terminate()
        else:
            measure(proc, args.seconds, result)
    finally:
        try:
            code = proc.wait(timeout=idle + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(timeout=10)
        proc.stdout.close()
        time.sleep(0.5)
        left = []
        for q in psutil.process_iter(["pid", "cmdline"]):
            try:
                if q.pid != os.getpid() and q.environ().get(TOKEN_VAR) == token:
                    left.append({"pid": q.pid, "cmdline": " ".join(q.info["cmdline"] or [])})
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        result["exit_code"] = code
        result["left_after_exit"] = left
        print(f"  run exit code {code}; processes left after exit: {len(left)}")
    result["ok"] = result.get("ok", False) and code == 0 and not left
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "idle_cpu.json").write_text(json.dumps(result, indent=1))
    print(f"  {'OK' if result['ok'] else 'FAILED'}; wrote {args.out / 'idle_cpu.json'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--origin":
        origin(float(sys.argv[2]))
    else:
        sys.exit(main())
