"""Parallel efficiency on CPU-bound work: N pure-Python tasks of about 20 ms each.

The task is a busy loop. Its iteration count is calibrated once per run, here in
the origin, after the runtime is up and warmed (so every runtime is idle, as it
is between tasks) and before the timing: it is scaled until one call takes about
TARGET_S, then the fastest of five calls is taken as the task's own time. The
count travels as the task's argument.

    ideal      = tasks × task time ÷ workers     (no overhead, perfect balance)
    efficiency = ideal ÷ measured time of map(spin, [count] * tasks)

1 is perfect; on a loaded machine both runtimes and calibration see the load,
so compare efficiencies side by side, not to 1.
"""

import time

import benchkit

TARGET_S = 0.020


def spin(iterations):
    """Pure-Python busy loop: holds the GIL, touches no memory to speak of."""
    total = 0
    for i in range(iterations):
        total += i
    return total


def _timed(iterations):
    start = time.perf_counter()
    spin(iterations)
    return time.perf_counter() - start


def calibrate(target_s=TARGET_S):
    """The iteration count for one task of about `target_s`, and its time."""
    iterations = 10_000
    while _timed(iterations) < target_s / 4:
        iterations *= 2
    for _ in range(2):
        best = min(_timed(iterations) for _ in range(5))
        iterations = max(1, round(iterations * target_s / best))
    return iterations, min(_timed(iterations) for _ in range(5))


if __name__ == "__main__":
    tasks = benchkit.size(200)
    with benchkit.executor() as pool:
        benchkit.warm_up(pool, spin)
        iterations, task_s = calibrate()
        start = time.perf_counter()
        results = pool.map(spin, [iterations] * tasks)
        seconds = time.perf_counter() - start
    assert results == [iterations * (iterations - 1) // 2] * tasks, "wrong results"
    ideal_s = tasks * task_s / benchkit.WORKERS
    benchkit.report(tasks=tasks, iterations=iterations, task_ms=task_s * 1e3,
                    seconds=seconds, ideal_s=ideal_s, efficiency=ideal_s / seconds)
