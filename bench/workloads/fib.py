"""Nested futures: recursive fib(n) where every call is a future that waits on two more.

fib(18) makes 8,361 futures (the root included), most of them blocked on their
children, so a runtime that parks a waiting task on its worker would deadlock.
Only runtimes with SCOOP's nested futures can run it; the others report n/a.
"""

import time

import benchkit

futures = benchkit.futures_api()


def fib(n):
    """Fibonacci by recursive submit, as in SCOOP's examples."""
    if n < 2:
        return n
    return futures.submit(fib, n - 1).result() + futures.submit(fib, n - 2).result()


def futures_made(n):
    """How many futures fib(n) submits, the root included: 2 * F(n + 1) - 1."""
    a, b = 0, 1
    for _ in range(n + 1):
        a, b = b, a + b
    return 2 * a - 1


if __name__ == "__main__":
    n = benchkit.size(18)
    if futures is None:
        benchkit.unsupported("no nested futures")
    with benchkit.executor() as pool:
        benchkit.warm_up(pool, fib)
        start = time.perf_counter()
        value = pool.submit(fib, n).result()
        seconds = time.perf_counter() - start
    count = futures_made(n)
    benchkit.report(n=n, value=value, futures=count, seconds=seconds,
                    futures_per_s=count / seconds)
