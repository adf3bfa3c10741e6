"""Without the launcher (``python script.py``) the futures API runs in-process,
sequentially, with one warning on stderr; results, ordering and error types
are those of a launched run. Each test runs the same script both ways."""

import json

from support import explain, run_python, run_scoop

SAME_SCRIPT = """
    import json
    import operator
    from scoop_rt import futures, shared

    class AppError(Exception):
        pass

    def square(x):
        return x * x

    def fail_at_four(x):
        if x == 4:
            raise AppError(f"item {x}")
        return x

    def divide(x):
        return 10 / x

    def fib(n):
        if n < 2:
            return n
        a, b = futures.submit(fib, n - 1), futures.submit(fib, n - 2)
        return a.result() + b.result()

    def read_const(name):
        return shared.getConst(name, timeout=5)

    def outcome(fn, *args):
        try:
            return ["value", fn(*args)]
        except Exception as exc:
            return ["error", type(exc).__name__]

    def error_of(fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            return [type(exc).__name__, str(exc)]
        return None

    if __name__ == "__main__":
        out = {}
        out["map"] = list(futures.map(square, range(30)))
        out["map_lambda"] = list(futures.map(lambda x: -x, range(5)))
        out["map_two"] = list(futures.map(operator.add, range(5), range(10, 20)))
        got = []
        try:
            for value in futures.map(fail_at_four, range(10)):
                got.append(value)
        except AppError as exc:
            out["map_error"] = [got, type(exc).__name__, str(exc)]
        out["map_builtin_error"] = error_of(list, futures.map(divide, [5, 0, 2]))
        out["map_as_completed"] = sorted(futures.map_as_completed(square, range(10)))

        f = futures.submit(square, 9)
        out["submit"] = [f.result(timeout=30), f.done(), f.cancelled(),
                         f.running(), repr(f.exception())]
        g = futures.submit(fail_at_four, 4)
        out["submit_error"] = [type(g.exception(timeout=30)).__name__,
                               error_of(g.result)]
        calls = []
        f.add_done_callback(lambda fut: calls.append(fut.result()))
        out["callback_after_done"] = calls
        out["cancel_done"] = f.cancel()

        fs = [futures.submit(square, i) for i in range(5)]
        out["as_completed"] = sorted(x.result() for x in futures.as_completed(fs))
        done, not_done = futures.wait(fs)
        out["wait"] = [len(done), len(not_done)]
        done, not_done = futures.wait(fs + [g], return_when=futures.FIRST_EXCEPTION)
        out["wait_first_exception"] = g in done

        for name, items in {"empty": [], "one": [3], "many": list(range(1, 12))}.items():
            out["reduce_" + name] = outcome(futures.mapReduce, square, operator.sub, items)
            out["scan_" + name] = outcome(futures.mapScan, square, operator.sub, items)
        out["aliases"] = [futures.map_reduce(square, operator.add, range(4)),
                          futures.map_scan(square, operator.add, range(4))]
        out["nested"] = futures.submit(fib, 10).result()

        shared.setConst(answer=42, fn=lambda x: 2 * x)
        out["const"] = [futures.submit(read_const, "answer").result(),
                        futures.submit(read_const, "fn").result()(21)]
        out["const_twice"] = error_of(shared.setConst, answer=1)[0]
        futures.shutdown(wait=True)
        out["after_shutdown"] = error_of(futures.submit, square, 1)[0]
        print(json.dumps(out))
    """


def test_sequential_run_matches_launched_run(tmp_path):
    launched = run_scoop(tmp_path, SAME_SCRIPT)
    assert launched.returncode == 0, explain(launched)
    plain = run_python(tmp_path, SAME_SCRIPT)
    assert plain.returncode == 0, explain(plain)
    expected = json.loads(launched.stdout)
    got = json.loads(plain.stdout)
    assert got == expected
    assert plain.stdout == launched.stdout
    # Sanity: the shared report holds what the API promises.
    assert expected["map"] == [x * x for x in range(30)]
    assert expected["map_error"] == [[0, 1, 2, 3], "AppError", "item 4"]
    assert expected["map_builtin_error"][0] == "ZeroDivisionError"
    assert expected["reduce_empty"] == ["error", "TypeError"]
    assert expected["const_twice"] == "TypeError"
    # One warning, on stderr.
    warning = [line for line in plain.stderr.splitlines() if line.strip()]
    assert len(warning) == 1, plain.stderr
    assert "scoop_rt" in warning[0]
    assert warning[0] not in launched.stderr


def test_uncaught_error_is_the_same(tmp_path):
    source = """
        from scoop_rt import futures

        class AppError(Exception):
            pass

        def compute(x):
            raise AppError(f"failed on {x}")

        if __name__ == "__main__":
            print(list(futures.map(abs, [-1, 2])), flush=True)
            futures.submit(compute, 7).result()
        """
    launched = run_scoop(tmp_path, source)
    plain = run_python(tmp_path, source)
    assert launched.returncode == plain.returncode == 1, explain(launched) + explain(plain)
    assert launched.stdout == plain.stdout == "[1, 2]\n"
    # (Python 3.9 and 3.10 print the class of an uncaught exception with its
    # module, __main__ included, where the traceback module and 3.11 do not.)
    last = [p.stderr.strip().splitlines()[-1].replace("__main__.", "")
            for p in (launched, plain)]
    assert last[0] == last[1] == "AppError: failed on 7", last


def test_unpicklable_argument_fails_as_in_a_launched_run(tmp_path):
    source = """
        import threading
        from scoop_rt import futures

        def count(*args):
            return len(args)

        if __name__ == "__main__":
            for call in (lambda: futures.submit(count, threading.Lock()).result(),
                         lambda: list(futures.map(count, [threading.Lock()]))):
                try:
                    call()
                    print("no error")
                except Exception as exc:
                    print(type(exc).__name__)
        """
    launched = run_scoop(tmp_path, source)
    plain = run_python(tmp_path, source)
    assert launched.returncode == plain.returncode == 0, explain(launched) + explain(plain)
    assert "no error" not in launched.stdout, explain(launched)
    assert plain.stdout == launched.stdout, (
        f"launched run: {launched.stdout!r}; sequential run: {plain.stdout!r}")
