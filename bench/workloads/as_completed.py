"""Many separate futures collected as they finish: submit N no-op calls, then
as_completed over all of them → futures/s.

Unlike map, every task is its own submit call, so a runtime cannot batch them
behind the user's back unless it does so per call; unlike the round-trip
workload, all N are in flight at once.
"""

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
        futures = [pool.submit(noop, i) for i in range(n)]
        submitted = time.perf_counter()
        total = count = 0
        for future in pool.as_completed(futures):
            total += future.result()
            count += 1
        seconds = time.perf_counter() - start
    assert count == n and total == n * (n - 1) // 2, "as_completed lost results"
    benchkit.report(futures=n, seconds=seconds, submit_s=submitted - start,
                    futures_per_s=n / seconds)
