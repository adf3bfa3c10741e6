"""The futures API on a launched run: SCOOP's names, PEP 3148 semantics.

Each script checks a group of behaviours and prints one JSON report, which
the test compares with what the API promises.
"""

import functools
import itertools
import json
import operator

import pytest

from support import explain, run_python, run_scoop


def report_of(proc):
    assert proc.returncode == 0, explain(proc)
    return json.loads(proc.stdout.strip().splitlines()[-1])


MAP_CALLABLES = """
    import functools

    def square(x):
        return x * x

    def add(a, b):
        return a + b

    def scaled(x, factor=1, offset=0):
        return x * factor + offset

    def fail_at_five(x):
        if x == 5:
            raise ValueError(f"item {x} is bad")
        return x * 10

    class Point:
        def __init__(self, x):
            self.x = x

    class Multiplier:
        def __init__(self, k):
            self.k = k

        def __call__(self, x):
            return self.k * x

        def apply(self, x):
            return self.k + x

    def make_closure(k):
        def inner(x):
            return x - k
        return inner

    def started_at(x):
        time.sleep(0.2)
        return time.time()

    def delayed(x, delay):
        time.sleep(delay)
        return x

    if __name__ == "__main__":
        out = {}
        xs = list(range(12))
        out["top_level"] = list(futures.map(square, xs))
        out["two_iterables"] = list(futures.map(add, xs, range(100, 105)))
        out["lambda"] = list(futures.map(lambda x: x + 0.5, xs))
        out["closure"] = list(futures.map(make_closure(3), xs))
        out["partial"] = list(futures.map(functools.partial(scaled, factor=3, offset=1), xs))
        out["class"] = [p.x for p in futures.map(Point, xs)]
        out["instance"] = list(futures.map(Multiplier(7), xs))
        out["method"] = list(futures.map(Multiplier(7).apply, xs))
        out["builtin"] = list(futures.map(abs, [-1, -2, 3]))
        out["empty"] = list(futures.map(square, []))
        try:
            futures.map(square, range(3), 42)
        except TypeError as exc:
            out["not_iterable"] = str(exc)
        out["many"] = list(futures.map(square, range(1000)))
        # A range travels as ranges, one per chunk: any step, any size.
        out["ranges"] = [list(futures.map(square, r)) for r in (
            range(5, 1000, 7), range(1000, 0, -3), range(3, 3))]
        out["range_chunks"] = list(futures.map(square, range(100), chunksize=7))

        # Slow first items: results still come back in input order.
        out["ordered"] = list(futures.map(delayed, range(6),
                                          [0.4, 0.3, 0.0, 0.0, 0.2, 0.0]))

        # An exception comes at its own item, after the items before it.
        got = []
        try:
            for value in futures.map(fail_at_five, range(10)):
                got.append(value)
        except ValueError as exc:
            out["error"] = [got, type(exc).__name__, str(exc)]

        # The work starts when map is called, not when it is iterated.
        warm_up(2)
        called = time.time()
        results = futures.map(started_at, range(4))
        time.sleep(1.5)
        iterated = time.time()
        starts = list(results)
        out["started_before_iteration"] = max(starts) < iterated
        out["started_after_call"] = min(starts) >= called

        # A timeout counts from the call; it raises TimeoutError when reached.
        begin = time.monotonic()
        try:
            list(futures.map(time.sleep, [1.5], timeout=0.5))
        except futures.TimeoutError as exc:
            out["timeout"] = [type(exc).__name__, round(time.monotonic() - begin, 1)]
        print(json.dumps(out))
    """


def test_map(tmp_path):
    out = report_of(run_scoop(tmp_path, MAP_CALLABLES, prelude=True))
    xs = list(range(12))
    assert out["top_level"] == [x * x for x in xs]
    assert out["two_iterables"] == [a + b for a, b in zip(xs, range(100, 105))]
    assert out["lambda"] == [x + 0.5 for x in xs]
    assert out["closure"] == [x - 3 for x in xs]
    assert out["partial"] == [3 * x + 1 for x in xs]
    assert out["class"] == xs
    assert out["instance"] == [7 * x for x in xs]
    assert out["method"] == [7 + x for x in xs]
    assert out["builtin"] == [1, 2, 3]
    assert out["empty"] == []
    assert out["not_iterable"] == ("map() spreads iterables over the workers; "
                                   "int 42 is not iterable")
    assert out["many"] == [x * x for x in range(1000)]
    assert out["ranges"] == [[x * x for x in r] for r in (
        range(5, 1000, 7), range(1000, 0, -3), range(3, 3))]
    assert out["range_chunks"] == [x * x for x in range(100)]
    assert out["ordered"] == list(range(6))
    assert out["error"] == [[0, 10, 20, 30, 40], "ValueError", "item 5 is bad"]
    assert out["started_before_iteration"] is True
    assert out["started_after_call"] is True
    assert out["timeout"][0] == "TimeoutError"
    assert out["timeout"][1] < 2.0, "map's timeout fired late"


NUMPY_MAP = """
    import numpy as np

    def double(x):
        return float(x) * 2

    def total(row):
        return float(row.sum())

    if __name__ == "__main__":
        out = {}
        out["items"] = list(futures.map(double, np.arange(1000.0)))
        out["rows"] = list(futures.map(total, np.arange(3000.0).reshape(300, 10)))
        out["chunks"] = list(futures.map(double, np.arange(50), chunksize=7))
        out["empty"] = list(futures.map(double, np.arange(0)))
        print(json.dumps(out))
    """


def test_map_over_numpy_arrays(tmp_path):
    """An array is cut into arrays, one per chunk: the same items, in order."""
    np = pytest.importorskip("numpy")
    out = report_of(run_scoop(tmp_path, NUMPY_MAP, prelude=True))
    assert out["items"] == [x * 2 for x in range(1000)]
    assert out["rows"] == [float(row.sum()) for row in np.arange(3000.0).reshape(300, 10)]
    assert out["chunks"] == [x * 2 for x in range(50)]
    assert out["empty"] == []


FUTURE_METHODS = """
    def slow(x, delay):
        time.sleep(delay)
        return x

    def add(a, b=0, *, c=0):
        return a + b + c

    def fails():
        raise KeyError("missing-key")

    def wait_for(path, value):
        end = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < end:
            time.sleep(0.02)
        return value

    def touch(path):
        open(path, "w").close()
        return "ran"

    if __name__ == "__main__":
        out = {}
        workdir = sys.argv[1]
        warm_up(2)
        out["submit"] = futures.submit(add, 1, 2, c=4).result()
        out["submit_kwargs"] = futures.submit(add, a=5, b=6).result()

        f = futures.submit(slow, "late", 1.5)
        begin = time.monotonic()
        try:
            f.result(timeout=0.2)
        except futures.TimeoutError:
            out["result_timeout"] = round(time.monotonic() - begin, 1)
        try:
            f.exception(timeout=0.1)
        except futures.TimeoutError:
            out["exception_timeout"] = True
        out["done_while_running"] = f.done()
        end = time.monotonic() + 5
        while not f.running() and time.monotonic() < end:
            time.sleep(0.05)
        out["running_while_running"] = f.running()
        out["cancel_while_running"] = f.cancel()
        out["late"] = f.result(timeout=30)
        out["done_after"] = f.done()
        out["running_after"] = f.running()
        out["exception_of_success"] = repr(f.exception())

        bad = futures.submit(fails)
        exc = bad.exception(timeout=30)
        out["exception"] = [type(exc).__name__, exc.args[0]]
        try:
            bad.result()
        except KeyError as err:
            out["result_raises"] = err.args[0]
        out["failed_is_done"] = [bad.done(), bad.running(), bad.cancelled()]

        # Both workers busy: a third task waits in the queue and can be cancelled.
        release = os.path.join(workdir, "release")
        marker = os.path.join(workdir, "cancelled-task-ran")
        blockers = [futures.submit(wait_for, release, i) for i in range(2)]
        queued = futures.submit(touch, marker)
        out["cancel_queued"] = queued.cancel()
        out["cancelled"] = queued.cancelled()
        out["cancelled_done"] = queued.done()
        try:
            queued.result(timeout=1)
        except futures.CancelledError:
            out["cancelled_result"] = "CancelledError"
        open(release, "w").close()
        out["blockers"] = [b.result(timeout=30) for b in blockers]
        out["cancel_finished"] = blockers[0].cancel()
        time.sleep(0.5)
        out["cancelled_task_ran"] = os.path.exists(marker)

        # Callbacks: one added before completion runs when it completes;
        # one added after completion runs at once.
        calls = []
        g = futures.submit(slow, "cb", 0.3)
        g.add_done_callback(lambda fut: calls.append(("before", fut.result())))
        futures.wait([g], timeout=30)
        out["callback_before"] = list(calls)
        g.add_done_callback(lambda fut: calls.append(("after", fut is g)))
        out["callback_after"] = list(calls)
        print(json.dumps(out))
    """


def test_future_methods(tmp_path):
    out = report_of(run_scoop(tmp_path, FUTURE_METHODS, str(tmp_path), prelude=True))
    assert out["submit"] == 7
    assert out["submit_kwargs"] == 11
    assert "result_timeout" in out, "result(timeout=0.2) on a 1.5 s task did not time out"
    assert out["result_timeout"] < 1.0
    assert out["exception_timeout"] is True
    assert out["done_while_running"] is False
    assert out["running_while_running"] is True
    assert out["cancel_while_running"] is False
    assert out["late"] == "late"
    assert out["done_after"] is True
    assert out["running_after"] is False
    assert out["exception_of_success"] == "None"
    assert out["exception"] == ["KeyError", "missing-key"]
    assert out["result_raises"] == "missing-key"
    assert out["failed_is_done"] == [True, False, False]
    assert out["cancel_queued"] is True
    assert out["cancelled"] is True
    assert out["cancelled_done"] is True
    assert out["cancelled_result"] == "CancelledError"
    assert out["blockers"] == [0, 1]
    assert out["cancel_finished"] is False
    assert out["cancelled_task_ran"] is False
    assert out["callback_before"] == [["before", "cb"]]
    assert out["callback_after"] == [["before", "cb"], ["after", True]]


WAITING = """
    def slow(x, delay):
        time.sleep(delay)
        return x

    def fail_after(delay):
        time.sleep(delay)
        raise ZeroDivisionError("planned")

    def maybe_fail(x):
        if x == 3:
            raise OSError("item three")
        return x

    if __name__ == "__main__":
        out = {}
        warm_up(2)

        # map_as_completed: every result, the quick ones first.
        got = list(futures.map_as_completed(slow, ["slow", "quick"], [1.0, 0.0]))
        out["map_as_completed"] = got
        out["map_as_completed_many"] = sorted(
            futures.map_as_completed(slow, range(50), [0.0] * 50))
        try:
            list(futures.map_as_completed(maybe_fail, range(6)))
        except OSError as exc:
            out["map_as_completed_error"] = str(exc)

        # as_completed: completion order; finished futures come first.
        done_first = futures.submit(slow, "done", 0.0)
        done_first.result()
        fs = [futures.submit(slow, "slow", 1.0), futures.submit(slow, "quick", 0.1),
              done_first]
        out["as_completed"] = [f.result() for f in futures.as_completed(fs, timeout=30)]

        # wait: ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, timeout.
        fs = [futures.submit(slow, i, 0.1 * i) for i in range(4)]
        done, not_done = futures.wait(fs)
        out["all_completed"] = [sorted(f.result() for f in done), len(not_done)]

        slow_one = futures.submit(slow, "slow", 2.0)
        quick_one = futures.submit(slow, "quick", 0.1)
        begin = time.monotonic()
        done, not_done = futures.wait([slow_one, quick_one],
                                      return_when=futures.FIRST_COMPLETED)
        out["first_completed"] = [[f.result() for f in done], len(not_done),
                                  slow_one in not_done,
                                  round(time.monotonic() - begin, 1)]
        slow_one.result()

        slow_one = futures.submit(slow, "slow", 2.0)
        failing = futures.submit(fail_after, 0.2)
        begin = time.monotonic()
        done, not_done = futures.wait([slow_one, failing],
                                      return_when=futures.FIRST_EXCEPTION)
        out["first_exception"] = [failing in done, slow_one in not_done,
                                  type(failing.exception()).__name__,
                                  round(time.monotonic() - begin, 1)]
        slow_one.result()

        # Timeouts: each raises (or returns) when reached, with the task unfinished.
        begin = time.monotonic()
        try:
            list(futures.map_as_completed(slow, [1], [1.2], timeout=0.3))
        except futures.TimeoutError:
            out["map_as_completed_timeout"] = round(time.monotonic() - begin, 1)
        begin = time.monotonic()
        try:
            for f in futures.as_completed([futures.submit(slow, 1, 1.2)], timeout=0.3):
                pass
        except futures.TimeoutError:
            out["as_completed_timeout"] = round(time.monotonic() - begin, 1)
        begin = time.monotonic()
        pending = futures.submit(slow, "pending", 1.2)
        done, not_done = futures.wait([pending], timeout=0.3)
        out["wait_timeout"] = [len(done), pending in not_done,
                               round(time.monotonic() - begin, 1)]

        # shutdown(wait=True) returns once everything submitted is done.
        last = [futures.submit(slow, i, 0.3) for i in range(4)]
        futures.shutdown(wait=True)
        out["shutdown_all_done"] = all(f.done() for f in last)
        out["shutdown_results"] = [f.result() for f in last]
        try:
            futures.submit(slow, 0, 0)
        except RuntimeError:
            out["submit_after_shutdown"] = "RuntimeError"
        print(json.dumps(out))
    """


def test_as_completed_wait_and_shutdown(tmp_path):
    out = report_of(run_scoop(tmp_path, WAITING, prelude=True))
    assert out["map_as_completed"] == ["quick", "slow"]
    assert out["map_as_completed_many"] == list(range(50))
    assert out["map_as_completed_error"] == "item three"
    assert out["map_as_completed_timeout"] < 1.0
    assert out["as_completed"] == ["done", "quick", "slow"]
    assert out["as_completed_timeout"] < 1.0
    assert out["all_completed"] == [[0, 1, 2, 3], 0]
    quick, not_done, slow_pending, took = out["first_completed"]
    assert (quick, not_done, slow_pending) == (["quick"], 1, True)
    assert took < 1.5
    failed_done, slow_pending, kind, took = out["first_exception"]
    assert (failed_done, slow_pending, kind) == (True, True, "ZeroDivisionError")
    assert took < 1.5
    assert out["wait_timeout"][:2] == [0, True]
    assert out["wait_timeout"][2] < 1.0
    assert out["shutdown_all_done"] is True
    assert out["shutdown_results"] == [0, 1, 2, 3]
    assert out["submit_after_shutdown"] == "RuntimeError"


REDUCE = """
    import operator
    from scoop_rt import futures

    def double(x):
        return 2 * x

    def word(i):
        return "abcdefghij"[i % 10]

    CASES = {"empty": [], "one": [7], "many": list(range(1, 9)),
             "chunks": list(range(1, 301))}

    def outcome(fn, *args):
        try:
            return ["value", fn(*args)]
        except Exception as exc:
            return ["error", type(exc).__name__]

    if __name__ == "__main__":
        out = {}
        for name, items in CASES.items():
            out[name] = {
                "reduce_sub": outcome(futures.mapReduce, double, operator.sub, items),
                "reduce_concat": outcome(futures.map_reduce, word, operator.add, items),
                "scan_sub": outcome(futures.mapScan, double, operator.sub, items),
                "scan_concat": outcome(futures.map_scan, word, operator.add, items),
                "reduce_lambda": outcome(futures.mapReduce, lambda x: x % 7,
                                         lambda a, b: a * 3 + b, items),
            }
        out["two_iterables"] = [
            futures.mapReduce(pow, operator.add, [2, 3, 4], [3, 2, 1]),
            futures.mapScan(pow, operator.add, [2, 3, 4], [3, 2, 1])]
        print(json.dumps(out))
    """


def serial(fn, *args):
    try:
        return ["value", fn(*args)]
    except Exception as exc:
        return ["error", type(exc).__name__]


def test_map_reduce_and_map_scan_equal_serial(tmp_path):
    out = report_of(run_scoop(tmp_path, REDUCE, prelude=True))
    cases = {"empty": [], "one": [7], "many": list(range(1, 9)),
             "chunks": list(range(1, 301))}

    def reduce_of(f, op, items):
        return functools.reduce(op, map(f, items))

    def scan_of(f, op, items):
        return list(itertools.accumulate(map(f, items), op))

    def word(i):
        return "abcdefghij"[i % 10]

    for name, items in cases.items():
        expected = {
            "reduce_sub": serial(reduce_of, lambda x: 2 * x, operator.sub, items),
            "reduce_concat": serial(reduce_of, word, operator.add, items),
            "scan_sub": serial(scan_of, lambda x: 2 * x, operator.sub, items),
            "scan_concat": serial(scan_of, word, operator.add, items),
            "reduce_lambda": serial(reduce_of, lambda x: x % 7,
                                    lambda a, b: a * 3 + b, items),
        }
        assert out[name] == expected, name
    assert out["two_iterables"] == [8 + 9 + 4, [8, 17, 21]]


SCOOP_CALLS = """
import json, time
from scoop_rt import futures


def slow_square(x):
    time.sleep(0.05 * x)
    return x * x


if __name__ == "__main__":
    out = {}
    # SCOOP's examples pass keyword arguments that its maps ignored.
    out["map"] = list(futures.map(abs, [-1, -2, -3], parallelLevel=2))
    out["map_again"] = list(futures.map(abs, [-4], parallelLevel=3))
    out["unordered"] = sorted(futures.map_as_completed(abs, [-5, -6], parallelLevel=2))
    out["reduce"] = futures.mapReduce(abs, max, [-7, 8], parallelLevel=2)
    # SCOOP documents a timeout of -1 as no limit: these tasks take 0.1 to 0.2 s.
    fs = [futures.submit(slow_square, x) for x in (2, 3, 4)]
    done, not_done = futures.wait(fs, timeout=-1)
    out["wait"] = [len(done), len(not_done)]
    fs = [futures.submit(slow_square, x) for x in (2, 3, 4)]
    out["as_completed"] = sorted(f.result() for f in futures.as_completed(fs, timeout=-1))
    out["map_timeout"] = list(futures.map(slow_square, [2, 3], timeout=-1))
    print(json.dumps(out))
"""


@pytest.mark.parametrize("runner", ["launched", "sequential"])
def test_scoop_calls_run_unchanged(tmp_path, runner):
    """Keyword arguments SCOOP's maps ignored are ignored here too, with one
    warning per name; a negative timeout is no limit, as SCOOP documents."""
    if runner == "launched":
        proc = run_scoop(tmp_path, SCOOP_CALLS)
    else:
        proc = run_python(tmp_path, SCOOP_CALLS)
    assert proc.returncode == 0, explain(proc)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"map": [1, 2, 3], "map_again": [4], "unordered": [5, 6],
                   "reduce": 8, "wait": [3, 0], "as_completed": [4, 9, 16],
                   "map_timeout": [4, 9]}, explain(proc)
    warned = [line for line in proc.stderr.splitlines() if "ignores the keyword" in line]
    assert len(warned) == 1 and "'parallelLevel'" in warned[0], explain(proc)
    assert "futures.map()" in warned[0] and "script.py" in proc.stderr, explain(proc)
