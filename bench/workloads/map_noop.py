"""Throughput of `map` over many no-op tasks: the per-task cost of the runtime."""

import time

import benchkit


def noop(x):
    """Costs nothing but its transport."""
    return x


if __name__ == "__main__":
    n = benchkit.size(20_000)
    with benchkit.executor() as pool:
        benchkit.warm_up(pool, noop)
        start = time.perf_counter()
        results = pool.map(noop, range(n))
        seconds = time.perf_counter() - start
    assert results == list(range(n)), "map returned wrong results"
    benchkit.report(tasks=n, seconds=seconds, tasks_per_s=n / seconds)
