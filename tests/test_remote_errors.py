"""Errors raised on workers, and calls or results that cannot be pickled."""

import json
import os
import re
import socket

from support import explain, run_scoop

REMOTE_ERROR = """
    import traceback

    class PlanError(Exception):
        pass

    def compute(x):
        if x == 3:
            raise PlanError(f"bad input {x}")  # FAILING-LINE
        return x

    def divide(x):
        return 1 / x

    if __name__ == "__main__":
        workers = warm_up(2)
        out = {"workers": {str(pid): name for pid, name in workers.items()}}
        try:
            # With a timeout the wait never runs the task in the origin.
            futures.submit(compute, 3).result(timeout=60)
        except PlanError as exc:
            out["submit"] = {"type": type(exc).__name__,
                             "same_class": type(exc) is PlanError,
                             "args": list(exc.args),
                             "cause": "".join(traceback.format_exception(
                                 type(exc.__cause__), exc.__cause__,
                                 exc.__cause__.__traceback__))
                                      if exc.__cause__ is not None else None}
        try:
            list(futures.map(divide, [1, 2, 0, 4]))
        except ZeroDivisionError as exc:
            out["map"] = {"type": type(exc).__name__,
                          "cause": str(exc.__cause__) if exc.__cause__ else None}
        out["after"] = futures.submit(compute, 4).result(timeout=60)
        print(json.dumps(out))
    """


def _names_a_worker(text, workers):
    """Whether ``text`` names one of the run's workers, by name or pid."""
    for pid, name in workers.items():
        short = name.split("@")[0]
        if re.search(rf"\b{re.escape(pid)}\b", text) or re.search(
                rf"(?<![\w]){re.escape(short)}(?![\w])", text):
            return True
    return False


def test_remote_exception_keeps_type_and_remote_traceback(tmp_path):
    proc = run_scoop(tmp_path, REMOTE_ERROR, prelude=True)
    assert proc.returncode == 0, explain(proc)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    script = (tmp_path / "script.py").read_text().splitlines()
    line = next(i for i, text in enumerate(script, 1) if "FAILING-LINE" in text)

    sub = out["submit"]
    assert sub["type"] == "PlanError" and sub["same_class"] is True
    assert sub["args"] == ["bad input 3"]
    cause = sub["cause"]
    assert cause, "the remote error has no __cause__"
    assert 'raise PlanError(f"bad input {x}")  # FAILING-LINE' in cause
    assert f"line {line}" in cause and "script.py" in cause and "in compute" in cause
    assert socket.gethostname() in cause, cause
    assert _names_a_worker(cause, out["workers"]), cause

    assert out["map"]["type"] == "ZeroDivisionError"
    assert out["map"]["cause"] and "return 1 / x" in out["map"]["cause"]
    assert out["after"] == 4


def test_uncaught_remote_exception_shows_the_remote_line(tmp_path):
    proc = run_scoop(tmp_path, """
        from scoop_rt import futures

        def compute(x):
            return {"a": 1}[x]  # REMOTE-LINE

        if __name__ == "__main__":
            futures.submit(compute, "missing-key").result()
        """)
    assert proc.returncode == 1, explain(proc)
    assert "KeyError: 'missing-key'" in proc.stderr
    assert 'return {"a": 1}[x]  # REMOTE-LINE' in proc.stderr, proc.stderr
    assert socket.gethostname() in proc.stderr
    assert proc.stdout == ""


UNPICKLABLE = """
    import pickle
    import threading

    def takes_anything(*args, **kwargs):
        return len(args) + len(kwargs)

    def returns_lock(x):
        return threading.Lock()

    def returns_generator(x):
        return (i for i in range(x))

    class NeedsTwo(Exception):
        def __init__(self, first, second):
            super().__init__(first)
            self.second = second

    def raises_needs_two(x):
        raise NeedsTwo("first-arg", x)

    def raises_with_lock(x):
        raise ValueError("carries a lock", threading.Lock())

    def exits(code):
        sys.exit(code)

    def error_report(future):
        exc = future.exception(timeout=30)
        return None if exc is None else [type(exc).__name__, str(exc)]

    if __name__ == "__main__":
        out = {}
        before = sorted(warm_up(2))
        out["before"] = before

        # Unpicklable arguments fail at submit()/map(), in the origin.
        try:
            futures.submit(takes_anything, 1, threading.Lock())
        except Exception as exc:
            out["submit_arg"] = [type(exc).__name__, str(exc)]
        try:
            futures.submit(takes_anything, resource=threading.Lock())
        except Exception as exc:
            out["submit_kwarg"] = [type(exc).__name__, str(exc)]
        try:
            futures.map(takes_anything, [1, threading.Lock(), 3])
            out["map_arg"] = "raised only later"
        except Exception as exc:
            out["map_arg"] = [type(exc).__name__, str(exc)]

        # Unpicklable results and exceptions arrive as errors on their futures.
        out["result_lock"] = error_report(futures.submit(returns_lock, 1))
        out["result_generator"] = error_report(futures.submit(returns_generator, 3))
        out["exception_needs_two"] = error_report(futures.submit(raises_needs_two, 1))
        out["exception_with_lock"] = error_report(futures.submit(raises_with_lock, 1))
        out["sys_exit"] = error_report(futures.submit(exits, 5))
        try:
            list(futures.map(returns_lock, range(3)))
            out["map_result"] = "no error"
        except Exception as exc:
            out["map_result"] = [type(exc).__name__, str(exc)]

        # None of these killed a worker or stopped the run.
        out["after"] = sorted(warm_up(2))
        out["still_works"] = list(futures.map(takes_anything, [1, 2], [3, 4]))
        print(json.dumps(out))
    """


def test_unpicklable_arguments_results_and_exceptions(tmp_path):
    proc = run_scoop(tmp_path, UNPICKLABLE, prelude=True)
    assert proc.returncode == 0, explain(proc)
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    for key, names in [("submit_arg", ["lock"]), ("submit_kwarg", ["resource"]),
                       ("map_arg", ["lock"])]:
        assert isinstance(out.get(key), list), f"{key}: no error at the call: {out.get(key)}"
        message = out[key][1]
        assert "takes_anything" in message, (key, message)
        for name in names:
            assert name in message.lower(), (key, message)

    for key in ("result_lock", "result_generator", "exception_needs_two",
                "exception_with_lock", "sys_exit", "map_result"):
        assert isinstance(out.get(key), list), f"{key}: no error reached the origin"
    assert "NeedsTwo" in " ".join(out["exception_needs_two"])
    assert "ValueError" in " ".join(out["exception_with_lock"])
    assert "SystemExit" in " ".join(out["sys_exit"])

    assert out["after"] == out["before"], "a worker was replaced or lost"
    assert out["still_works"] == [2, 2]


IN_ORIGIN = """
    def where(x):
        if x < 0:
            raise ValueError("negative")  # FAILING-LINE
        return os.getpid(), scoop_rt.IS_ORIGIN

    if __name__ == "__main__":
        warm_up(2)
        out = {"origin": os.getpid()}
        out["direct"] = futures.submit(where, 1).result()
        out["timed"] = futures.submit(where, 1).result(timeout=60)
        try:
            futures.submit(where, -1).result()
        except ValueError as exc:
            out["error"] = str(exc.__cause__)
        print(json.dumps(out))
    """


def test_a_task_waited_on_at_once_runs_in_the_origin(tmp_path):
    proc = run_scoop(tmp_path, IN_ORIGIN, prelude=True)
    assert proc.returncode == 0, explain(proc)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["direct"] == [out["origin"], True]     # ran here, as a call would
    assert out["timed"][0] != out["origin"] and out["timed"][1] is False
    assert "Traceback on the origin" in out["error"] and "FAILING-LINE" in out["error"]


def test_run_in_origin_can_be_switched_off(tmp_path):
    env = {**os.environ, "SCOOP_RT_RUN_IN_ORIGIN": "0"}
    proc = run_scoop(tmp_path, IN_ORIGIN, prelude=True, env=env)
    assert proc.returncode == 0, explain(proc)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["direct"][0] != out["origin"] and out["direct"][1] is False
    assert "Traceback on worker" in out["error"]


TOP_LEVEL_MAP = """
    import json, os
    from scoop_rt import futures

    def where(x):
        return os.getpid()

    # No main guard: a worker that imports the script stops here, since
    # futures are refused while it imports, and keeps what came before.
    pids = set(futures.map(where, range(64)))
    print(json.dumps({"origin": os.getpid(), "pids": sorted(pids)}))
    """


def test_a_map_at_the_top_level_of_the_script_still_runs(tmp_path):
    proc = run_scoop(tmp_path, TOP_LEVEL_MAP)
    assert proc.returncode == 0, explain(proc)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pids"] and out["origin"] not in out["pids"]


def test_an_uncaught_error_from_a_bad_call_ends_at_the_scripts_line(tmp_path):
    """A call the runtime refuses (here map() over a number) fails the script
    as a builtin's would: the traceback ends at the script's own line, with
    none of scoop_rt's frames."""
    proc = run_scoop(tmp_path, """
        from scoop_rt import futures

        if __name__ == "__main__":
            list(futures.map(abs, 42))  # BAD-CALL
        """)
    assert proc.returncode == 1, explain(proc)
    assert "BAD-CALL" in proc.stderr and "int 42 is not iterable" in proc.stderr
    assert "scoop_rt" + os.sep not in proc.stderr, proc.stderr
