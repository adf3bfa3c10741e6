"""The workloads: which script, at which size, and which of its numbers to show.

Each workload is one script in bench/workloads/ that prints one JSON line of
measurements. A Metric names one key of that line (or "wall_s", the harness's own
timing of the whole command) and how to show it. Adding a workload is adding a
script and one entry here.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

LOWER, HIGHER = "lower", "higher"


@dataclass(frozen=True)
class Metric:
    """One number a workload reports, shown as one row of the table."""

    key: str
    title: str     # row title; {n} is the size, {workers} the worker count
    unit: str
    better: str    # LOWER or HIGHER


@dataclass(frozen=True)
class Workload:
    """A script in bench/workloads/, its size argument, the rows it fills."""

    name: str
    script: str
    size: Optional[int]          # the script's argument; None: it takes none
    quick_size: Optional[int]    # the same with --quick
    metrics: Tuple[Metric, ...]


WORKLOADS = {workload.name: workload for workload in (
    Workload("map", "map_noop.py", 20_000, 2_000, (
        Metric("tasks_per_s", "map of {n:,} no-op tasks", "tasks/s", HIGHER),
    )),
    Workload("map_large", "map_noop.py", 100_000, 10_000, (
        Metric("tasks_per_s", "map of {n:,} no-op tasks", "tasks/s", HIGHER),
    )),
    Workload("roundtrip", "roundtrip.py", 500, 100, (
        Metric("median_us", "{n:,} sequential submit(f).result()",
               "µs per round trip, median", LOWER),
    )),
    Workload("as_completed", "as_completed.py", 20_000, 2_000, (
        Metric("futures_per_s", "{n:,} submit calls, as_completed", "futures/s",
               HIGHER),
    )),
    Workload("arrays", "arrays.py", 64, 8, (
        Metric("sum_mib_s", "map(sum) over {n} arrays of 8 MiB", "MiB/s", HIGHER),
        Metric("echo_mib_s", "map(identity) over {n} arrays of 8 MiB, round trip",
               "MiB/s", HIGHER),
    )),
    Workload("cpu", "cpu.py", 200, 20, (
        Metric("efficiency", "{n} × 20 ms CPU-bound tasks, ideal ÷ measured",
               "efficiency, 1 is ideal", HIGHER),
    )),
    Workload("fib", "fib.py", 18, 13, (
        Metric("seconds", "fib({n}) by recursive submit", "s", LOWER),
        Metric("futures_per_s", "fib({n}) by recursive submit", "futures/s", HIGHER),
    )),
    Workload("startup", "startup.py", None, None, (
        Metric("wall_s", "-n {workers} start-up to first result", "s, whole command",
               LOWER),
    )),
)}
