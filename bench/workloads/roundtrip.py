"""Latency of one future: `submit(f).result()` in a loop, one task in flight at a time.

The task returns the pid that ran it, so that a runtime whose origin runs the task
itself while it waits (SCOOP's does), moving nothing, is named in the notes.
"""

import os
import statistics
import time

import benchkit


def noop(x):
    """Costs nothing but its transport."""
    return x


def noop_where(x):
    """The same, and where it ran."""
    return x, os.getpid()


if __name__ == "__main__":
    n = benchkit.size(500)
    with benchkit.executor() as pool:
        benchkit.warm_up(pool, noop)
        times, local = [], 0
        for i in range(n):
            start = time.perf_counter()
            value, pid = pool.submit(noop_where, i).result()
            times.append(time.perf_counter() - start)
            assert value == i
            local += pid == os.getpid()
    notes = [f"{local} of {n} round trips ran in the origin itself, "
             f"where nothing travels"] if local else []
    benchkit.report(round_trips=n, median_us=statistics.median(times) * 1e6,
                    mean_us=statistics.fmean(times) * 1e6, local=local, notes=notes)
