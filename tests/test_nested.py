"""Nested futures: tasks that submit, map, wait and iterate as_completed.

A worker whose task waits on its children keeps executing other tasks, so a
recursive program never deadlocks and never leaves a core idle.
"""

import json

import pytest

from support import explain, run_scoop

FIB = """
    import sys
    from scoop_rt import futures

    def fib(n):
        if n < 2:
            return n
        a = futures.submit(fib, n - 1)
        b = futures.submit(fib, n - 2)
        return a.result() + b.result()

    if __name__ == "__main__":
        print(fib(int(sys.argv[1])))
    """


def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


NESTED = """
    def square(x):
        return x * x

    def fib(n):
        if n < 2:
            return n
        a = futures.submit(fib, n - 1)
        b = futures.submit(fib, n - 2)
        return a.result() + b.result()

    def sum_of_squares(k):
        return sum(futures.map(square, range(k)))

    def via_wait(k):
        fs = [futures.submit(square, i) for i in range(k)]
        done, not_done = futures.wait(fs, timeout=60)
        return [len(done), len(not_done), sum(f.result() for f in done)]

    def via_as_completed(k):
        fs = [futures.submit(square, i) for i in range(k)]
        return sorted(f.result() for f in futures.as_completed(fs, timeout=60))

    def sleeper(delay):
        time.sleep(delay)
        return os.getpid()

    def parent(delay):
        children = [futures.submit(sleeper, delay) for _ in range(2)]
        return [c.result() for c in children]

    if __name__ == "__main__":
        out = {}
        out["fib"] = futures.submit(fib, int(sys.argv[1])).result(timeout=60)
        out["map_in_map"] = list(futures.map(sum_of_squares, range(8)))
        out["wait_in_task"] = futures.submit(via_wait, 10).result(timeout=60)
        out["as_completed_in_task"] = futures.submit(via_as_completed, 6).result(timeout=60)
        # Two 1 s children of a task on a 2-worker run: the parent's worker
        # runs one of them while it waits, so both run side by side.
        warm_up(2)
        begin = time.monotonic()
        pids = futures.submit(parent, 1.0).result(timeout=60)
        out["children"] = [len(set(pids)), round(time.monotonic() - begin, 2)]
        print(json.dumps(out))
    """


def test_nested_submit_map_wait_as_completed(tmp_path):
    proc = run_scoop(tmp_path, NESTED, "13", prelude=True)
    assert proc.returncode == 0, explain(proc)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["fib"] == fib(13)
    assert out["map_in_map"] == [sum(i * i for i in range(k)) for k in range(8)]
    assert out["wait_in_task"] == [10, 0, sum(i * i for i in range(10))]
    assert out["as_completed_in_task"] == [i * i for i in range(6)]
    distinct_workers, took = out["children"]
    assert distinct_workers == 2
    assert took < 1.8, f"the children of a waiting task ran one after the other ({took} s)"


def test_nested_futures_on_a_single_worker(tmp_path):
    proc = run_scoop(tmp_path, FIB, "10", n=1, timeout=60)
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout == f"{fib(10)}\n"


@pytest.mark.slow
def test_recursive_fib_20_on_two_workers(tmp_path):
    """The issue's own example: about 22,000 nested tasks."""
    proc = run_scoop(tmp_path, FIB, "20", n=2, timeout=100)
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout == f"{fib(20)}\n"
