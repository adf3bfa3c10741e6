"""Benchmark scoop_rt side by side with the runtimes a user would pick instead.

    python bench/run.py [--quick] [--repeat R] [--peers scoop_rt,mp,loky,...|all]
                        [--workloads map,map_large,roundtrip,...]

Every (workload, peer) measurement is its own command, timed from outside and
repeated R times (interleaved across peers, so that drift of the machine hits
all of them alike); the tables show medians and ratios. A peer that cannot be
set up (pip failed, mpiexec missing) shows "n/a" with the reason; a command that
fails shows "error" and the run goes on; the failing command's stderr tail goes
to stderr. The tables are printed and written to bench/results/latest.md and
latest.json, with a chart in latest.png when matplotlib is installed.
See bench/README.md for what each workload measures.
"""

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import benchvenv
import chart
import command
import report
from peers import DESCRIPTIONS, PEERS, SUBJECT
from suite import WORKLOADS

BENCH = Path(__file__).resolve().parent
SCRIPTS = BENCH / "workloads"
STDERR_TAIL = 15


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and 2 repeats, for a smoke test")
    parser.add_argument("--repeat", type=int,
                        help="runs per measurement (default 5, or 2 with --quick)")
    default_peers = ",".join(name for name, peer in PEERS.items() if peer.default)
    parser.add_argument("--peers", default=default_peers,
                        help=f"comma-separated, from {','.join(PEERS)}, or all "
                             f"(default {default_peers})")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated, from {','.join(WORKLOADS)}")
    parser.add_argument("--workers", type=int, default=2,
                        help="workers per runtime (-n), default 2")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds before one command is killed, default 600 "
                             "(dask's map of 100,000 tasks takes about 200 s on 2 cores)")
    parser.add_argument("--out", type=Path, default=BENCH / "results",
                        help="folder for latest.md, latest.json and latest.png")
    args = parser.parse_args(argv)
    if args.peers.strip() == "all":
        args.peers = ",".join(PEERS)
    args.peers = _pick(parser, "peer", args.peers, PEERS)
    args.workloads = _pick(parser, "workload", args.workloads, WORKLOADS)
    if args.quick:
        args.workloads = [dataclasses.replace(w, size=w.quick_size)
                          for w in args.workloads]
    args.repeat = args.repeat or (2 if args.quick else 5)
    return args


def _pick(parser, kind, names, known):
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        parser.error(f"unknown {kind} {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(known)}")
    return [known[name] for name in chosen]


def launchers(peers, workers):
    """Each peer's argv prefix, or the error that kept it from being set up;
    and what setting each one up cost. The steps that every peer in bench/.venv
    shares (making the venv, installing numpy) are not charged to whichever peer
    happened to come first: they are in benchvenv.SETUPS, and in the results."""
    prepared, setups = {}, {}
    for peer in peers:
        print(f"setting up {peer.label} ...", file=sys.stderr, flush=True)
        before = set(benchvenv.SETUPS)
        start = time.perf_counter()
        try:
            prepared[peer.name] = peer.launcher(workers)
            status, error = "ok", None
        except Exception as failure:   # whatever it is, the other peers still run
            prepared[peer.name] = failure
            status, error = "n/a", str(failure)
            print(f"{peer.name}: cannot be set up: {failure}", file=sys.stderr)
        steps = [benchvenv.SETUPS[key] for key in set(benchvenv.SETUPS) - before]
        shared = sum(step["seconds"] for step in steps if step["shared"])
        setups[peer.name] = {
            "status": status, "error": error,
            "seconds": time.perf_counter() - start - shared,
            "pip_ran": any(step["pip_ran"] for step in steps if not step["shared"]),
        }
    return prepared, setups


def compile_tree():
    """Compile the tree's scoop_rt to bytecode, as installing it would.

    scoop_rt runs from this tree (first on PYTHONPATH). Its .pyc files go
    stale with every edit, and where PYTHONDONTWRITEBYTECODE is set nothing
    rewrites them, so each of a run's processes would compile every module
    again at start-up, which no installed peer does."""
    import compileall
    compileall.compile_dir(str(BENCH.parent / "scoop_rt"), quiet=1)


def environment(peer, workers):
    """The environment of every command: the runtime's name and where scripts live."""
    path = [str(SCRIPTS), str(BENCH.parent), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, BENCH_RUNTIME=peer.name, BENCH_WORKERS=str(workers),
                PYTHONPATH=os.pathsep.join(p for p in path if p))


def measure(workload, peers, prepared, args):
    """Run `workload` under every peer, args.repeat times each; return its cells."""
    cells = {}
    for peer in peers:
        cell = {"workload": workload.name, "peer": peer.name, "status": "ok",
                "runs": [], "median": {}, "error": None, "leftovers": 0,
                "notes": {}}   # note -> in how many runs a script reported it
        if isinstance(prepared[peer.name], Exception):
            first_line = str(prepared[peer.name]).splitlines()[0]
            cell.update(status="n/a", error=f"not set up: {first_line}")
        cells[workload.name, peer.name] = cell
    size = [] if workload.size is None else [str(workload.size)]
    for round_ in range(1, args.repeat + 1):
        for peer in peers:
            cell = cells[workload.name, peer.name]
            if cell["status"] != "ok":
                continue
            argv = prepared[peer.name] + [str(SCRIPTS / workload.script)] + size
            outcome = command.run(argv, environment(peer, args.workers), args.timeout)
            record(cell, outcome, args.timeout)
            progress(cell, round_, args.repeat)
    for cell in cells.values():
        if cell["status"] == "ok":
            keys = set().union(*cell["runs"])
            cell["median"] = {key: statistics.median(run[key] for run in cell["runs"])
                              for key in keys
                              if all(isinstance(run.get(key), (int, float))
                                     for run in cell["runs"])}
    return cells


def record(cell, outcome, timeout):
    """Add one run's measurements to `cell`, or mark it n/a or error."""
    cell["leftovers"] += outcome.leftovers
    metrics = _last_json_line(outcome.stdout)
    if outcome.returncode is None:
        error = f"timed out after {timeout:g} s"
    elif outcome.returncode != 0:
        error = f"exit status {outcome.returncode}"
    elif metrics is None:
        error = "printed no JSON line on stdout"
    elif "unsupported" in metrics:
        cell.update(status="n/a", error=metrics["unsupported"])
        return
    else:
        for note in metrics.pop("notes", None) or []:
            cell["notes"][note] = cell["notes"].get(note, 0) + 1
        cell["runs"].append(dict(metrics, wall_s=outcome.wall_s))
        return
    tail = outcome.stderr.splitlines()[-STDERR_TAIL:]
    last = next((line.strip() for line in reversed(tail) if line.strip()), "")
    if outcome.returncode not in (None, 0) and last:
        error = f"{error}: {last[:200]}"   # a timeout's last line is just chatter
    cell.update(status="error", error=error)
    print(f"{cell['workload']} / {cell['peer']}: {error}\n"
          f"  $ {shlex.join(outcome.argv)}\n"
          + "".join(f"  | {line}\n" for line in tail), end="", file=sys.stderr)


def _last_json_line(stdout):
    for line in reversed(stdout.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def progress(cell, round_, repeat):
    """One line on stderr per run, so that a long bench shows it is alive."""
    if cell["status"] == "ok":
        run = cell["runs"][-1]
        shown = " ".join(f"{key}={value:.4g}" for key, value in run.items()
                         if isinstance(value, float))
    else:
        shown = f"{cell['status']} ({cell['error']})"
    print(f"[{round_}/{repeat}] {cell['workload']:<12} {cell['peer']:<15} {shown}",
          file=sys.stderr, flush=True)


def main(argv=None):
    args = parse_args(argv)
    info = report.machine()
    print(report.machine_line(info), flush=True)
    prepared, setups = launchers(args.peers, args.workers)
    compile_tree()
    cells = {}
    for workload in args.workloads:
        cells.update(measure(workload, args.peers, prepared, args))
    for cell in cells.values():
        if cell["leftovers"]:
            print(f"note: {cell['peer']} left {cell['leftovers']} process(es) running "
                  f"after {cell['workload']} commands exited; they were killed",
                  file=sys.stderr)

    tables = report.tables(cells, args.workloads, args.peers, SUBJECT, args.workers)
    title = (f"{args.workers} workers each, median of {args.repeat} runs"
             f"{' (--quick sizes)' if args.quick else ''}")
    notes = {
        "peers": report.peer_notes(args.peers, DESCRIPTIONS, setups, benchvenv.SETUPS),
        "why": report.why_notes(cells, args.workloads, args.peers),
        "spread": report.spread_notes(cells, args.workloads, args.peers),
        "workloads": report.workload_notes(cells, args.workloads, args.peers),
    }
    print(f"\n{title}\n")
    print(report.text_report(tables, notes, SUBJECT))
    write_results(args, info, title, tables, notes, cells, setups)


def write_results(args, info, title, tables, notes, cells, setups):
    """bench/results/latest.md for people, latest.json for tools, latest.png to look at."""
    args.out.mkdir(parents=True, exist_ok=True)
    markdown = (f"# scoop_rt benchmark\n\n{report.machine_line(info)}\n\n{title}.\n\n"
                + report.markdown_report(tables, notes, SUBJECT))
    (args.out / "latest.md").write_text(markdown)
    results = {
        "machine": info,
        "options": {"repeat": args.repeat, "quick": args.quick,
                    "workers": args.workers, "timeout": args.timeout},
        "subject": SUBJECT,
        "peers": {peer.name: peer.label for peer in args.peers},
        "setup": {"peers": setups, "bench_venv": benchvenv.SETUPS},
        "workloads": [dataclasses.asdict(w) for w in args.workloads],
        "rows": tables["rows"],
        "notes": notes,
        "cells": list(cells.values()),
    }
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    written = [args.out / "latest.md", args.out / "latest.json"]
    png = args.out / "latest.png"
    try:
        chart.draw(results, f"{report.machine_line(info)}\n{title}", png)
        written.append(png)
    except chart.Unavailable as why:
        print(f"\nno chart: {why}", file=sys.stderr)
    except Exception as failure:   # a chart is not worth losing the run's report over
        print(f"\nno chart: drawing it failed: {failure!r}", file=sys.stderr)
    print(f"\nwritten: {', '.join(str(path) for path in written)}")


if __name__ == "__main__":
    main()
