"""Latency of one future: `submit(f).result()` in a loop, one task in flight at a time."""

import statistics
import time

import benchkit


def noop(x):
    """Costs nothing but its transport."""
    return x


if __name__ == "__main__":
    n = benchkit.size(500)
    with benchkit.executor() as pool:
        benchkit.warm_up(pool, noop)
        times = []
        for i in range(n):
            start = time.perf_counter()
            assert pool.submit(noop, i).result() == i
            times.append(time.perf_counter() - start)
    benchkit.report(round_trips=n, median_us=statistics.median(times) * 1e6,
                    mean_us=statistics.fmean(times) * 1e6)
