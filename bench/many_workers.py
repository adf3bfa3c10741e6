"""128 real workers in one local run: all of them start, and all take work.

    python bench/many_workers.py [--workers 128] [--delay 0.02] [--timeout 600]

Runs ``python -m scoop_rt -n 128`` on this file. Its origin (``--origin``)
keeps 2 x 128 tasks in flight, each sleeping ``delay`` seconds and returning
``scoop_rt.worker``, until every one of the 128 workers has answered at least
once (or the timeout). This side times the whole command, watches the run's
process tree while it lives, and afterwards checks that no process of the
run is left (every process started carries a token in its environment).

Prints, and writes to bench/results/many_workers.json: the time from the
command's start to the first answer and to the 128th distinct worker's, the
total wall time, and the teardown (last worker seen to the command's exit).
On a machine with few cores, start-up is mostly 128 Python interpreters
importing scoop_rt and its dependencies, one or two at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TOKEN_VAR = "BENCH_MANY_WORKERS_TOKEN"


def who(delay: float) -> str:
    """A task: sleep a little, so that the work spreads, and say who ran it."""
    import scoop_rt
    time.sleep(delay)
    return scoop_rt.worker


# -- the origin's side (runs under python -m scoop_rt) --------------------------

def origin(workers: int, timeout: float, delay: float) -> None:
    from concurrent.futures import FIRST_COMPLETED

    from scoop_rt import futures
    started = time.time()
    first_seen: dict = {}
    answers: dict = {}
    inflight: set = set()
    submitted = 0
    deadline = time.monotonic() + timeout
    while len(first_seen) < workers and time.monotonic() < deadline:
        while len(inflight) < 2 * workers:
            inflight.add(futures.submit(who, delay))
            submitted += 1
        done, inflight = futures.wait(inflight, timeout=1.0,
                                      return_when=FIRST_COMPLETED)
        now = time.time()
        for future in done:
            name = future.result()
            first_seen.setdefault(name, now)
            answers[name] = answers.get(name, 0) + 1
    all_seen = time.time()
    futures.wait(inflight, timeout=60)  # let what is in flight finish
    print(json.dumps({
        "origin_started": started, "first_answer": min(first_seen.values(), default=None),
        "all_answered": all_seen if len(first_seen) >= workers else None,
        "distinct_workers": len(first_seen), "submitted": submitted,
        "answers_min": min(answers.values(), default=0),
        "answers_max": max(answers.values(), default=0),
        "drained": time.time()}), flush=True)


# -- the bench's side -----------------------------------------------------------

def run_tree(proc, seen: dict) -> int:
    """Record every process of the run now alive; how many there are."""
    import psutil
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for kid in kids:
        try:
            # The latest name and command line: a child just forked still
            # shows its parent's (a forked worker keeps the command line).
            seen[kid.pid] = (kid.create_time(),
                             f"{kid.name()} {' '.join(kid.cmdline()[-2:])}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return len(kids)


def leftovers(token: str, seen: dict) -> list:
    """Processes of the run still alive: any carrying its token, and any
    that was seen in its tree (same pid, same start time)."""
    import psutil
    left = []
    for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
        try:
            if p.pid == os.getpid():
                continue
            known = seen.get(p.pid)
            mine = known is not None and abs(known[0] - p.info["create_time"]) < 0.01
            if not mine:
                mine = p.environ().get(TOKEN_VAR) == token
            if mine:
                left.append({"pid": p.pid, "cmdline": " ".join(p.info["cmdline"] or [])})
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return left


def machine() -> dict:
    import platform
    return {"cores": os.cpu_count(), "load_average_at_start": os.getloadavg(),
            "python": platform.python_version()}


def main(argv=None) -> int:
    import subprocess
    import tempfile
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=128)
    p.add_argument("--delay", type=float, default=0.02, help="seconds each task sleeps")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds before the run is given up (default 600)")
    p.add_argument("--out", type=Path, default=BENCH / "results")
    args = p.parse_args(argv)

    token = uuid.uuid4().hex
    env = dict(os.environ, **{TOKEN_VAR: token}, PYTHONPATH=os.pathsep.join(
        x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x))
    argv = [sys.executable, "-m", "scoop_rt", "-n", str(args.workers), __file__,
            "--origin", str(args.workers), str(args.timeout), str(args.delay)]
    info = machine()
    print(f"many_workers: {args.workers} workers on {info['cores']} cores "
          f"(load {info['load_average_at_start'][0]:.2f})", flush=True)
    seen: dict = {}
    peak = 0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.time()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env,
                                start_new_session=True)
        deadline = time.monotonic() + args.timeout + 90
        timed_out = False
        while proc.poll() is None:
            if time.monotonic() > deadline:
                timed_out = True
                proc.kill()
                break
            peak = max(peak, run_tree(proc, seen))
            time.sleep(0.2)
        code = proc.wait(timeout=30)
        ended = time.time()
        time.sleep(0.5)  # what exits with the launcher gets a moment to go
        left = leftovers(token, seen)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    report = None
    for line in stdout.splitlines():
        if line.startswith("{"):
            report = json.loads(line)
    result = {"machine": info, "workers": args.workers, "task_delay_s": args.delay,
              "exit_code": code, "timed_out": timed_out, "wall_s": ended - started,
              "peak_processes": peak, "processes_seen": len(seen),
              "worker_processes_seen": sum("scoop_rt.worker" in c for _, c in seen.values()),
              "left_after_exit": left}
    if report:
        rel = {k: (report[k] - started if report.get(k) else None)
               for k in ("origin_started", "first_answer", "all_answered", "drained")}
        result.update({f"to_{k}_s": v for k, v in rel.items()})
        result.update({k: report[k] for k in ("distinct_workers", "submitted",
                                              "answers_min", "answers_max")})
        if report.get("all_answered"):
            result["teardown_s"] = ended - report["all_answered"]
    ok = (report is not None and report["distinct_workers"] >= args.workers
          and not left and code == 0)
    result["ok"] = ok

    print(f"  exit code {code}{' (timed out)' if timed_out else ''}, "
          f"wall time {result['wall_s']:.1f} s, peak {peak} processes in the run's tree "
          f"({result['worker_processes_seen']} worker processes seen)")
    if report:
        print(f"  origin's script started after {result['to_origin_started_s']:.1f} s; "
              f"first answer after {result['to_first_answer_s']:.1f} s")
        if report["all_answered"]:
            print(f"  all {args.workers} workers answered after "
                  f"{result['to_all_answered_s']:.1f} s "
                  f"({report['submitted']} tasks submitted; answers per worker "
                  f"{report['answers_min']}..{report['answers_max']}); teardown "
                  f"{result['teardown_s']:.1f} s")
        else:
            print(f"  only {report['distinct_workers']} of {args.workers} workers "
                  f"answered within {args.timeout:.0f} s")
    else:
        print("  the origin printed no report; the run's stderr ends with:")
        for line in stderr.splitlines()[-15:]:
            print(f"    {line}")
    print(f"  processes left after exit: {len(left)}"
          + "".join(f"\n    {p['pid']} {p['cmdline']}" for p in left))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "many_workers.json").write_text(json.dumps(result, indent=1))
    print(f"  {'OK' if ok else 'FAILED'}; wrote {args.out / 'many_workers.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--origin":
        origin(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(main())
