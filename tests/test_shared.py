"""Shared constants and the public module attributes of a run."""

import json

from support import explain, run_scoop

CONSTANTS = """
    from scoop_rt import shared

    def triple(x):
        return 3 * x

    def read_now(name):
        return shared.getConst(name, timeout=0)

    def read(name):
        return shared.getConst(name, timeout=10)

    def call_const(name, x):
        return shared.getConst(name, timeout=10)(x)

    def redefine(name):
        shared.setConst(**{name: "changed by a task"})

    if __name__ == "__main__":
        out = {}
        warm_up(2)
        shared.setConst(answer=42, table={"a": [1, 2]}, fn=triple,
                        anonymous=lambda x: x + 1000)
        # Every task submitted after setConst sees the constants at once, on
        # every worker.
        out["now"] = list(futures.map(read_now, ["answer"] * 20))
        out["table"] = futures.submit(read, "table").result()
        out["functions"] = [futures.submit(call_const, "fn", 5).result(),
                            futures.submit(call_const, "anonymous", 5).result()]
        out["in_origin"] = [shared.getConst("answer"), shared.getConst("fn")(2)]
        # One after the other: each task sees the constant set just before it.
        out["sequence"] = []
        for i in range(10):
            shared.setConst(**{f"step{i}": i})
            out["sequence"].append(futures.submit(read_now, f"step{i}").result())
        # Defining a name twice is a TypeError, in the origin and in a task;
        # the first value stays.
        try:
            shared.setConst(answer=43)
        except TypeError:
            out["twice"] = "TypeError"
        error = futures.submit(redefine, "answer").exception(timeout=30)
        out["twice_in_task"] = type(error).__name__
        out["kept"] = [shared.getConst("answer")] + list(
            futures.map(read_now, ["answer"] * 6))
        print(json.dumps(out))
    """


def test_shared_constants(tmp_path):
    proc = run_scoop(tmp_path, CONSTANTS, prelude=True)
    assert proc.returncode == 0, explain(proc)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["now"] == [42] * 20
    assert out["table"] == {"a": [1, 2]}
    assert out["functions"] == [15, 1005]
    assert out["in_origin"] == [42, 6]
    assert out["sequence"] == list(range(10))
    assert out["twice"] == "TypeError"
    assert out["twice_in_task"] == "TypeError"
    assert out["kept"] == [42] * 7


ATTRIBUTES = """
    import logging

    def attributes():
        return {"IS_ORIGIN": scoop_rt.IS_ORIGIN, "IS_RUNNING": scoop_rt.IS_RUNNING,
                "BROKER": repr(scoop_rt.BROKER), "DEBUG": scoop_rt.DEBUG,
                "SIZE": scoop_rt.SIZE, "worker": scoop_rt.worker,
                "logger": isinstance(scoop_rt.logger, logging.Logger),
                "pid": os.getpid()}

    def attributes_later(delay):
        time.sleep(delay)
        return attributes()

    if __name__ == "__main__":
        warm_up(3)
        seen = {}
        end = time.monotonic() + 30
        while len(seen) < 3 and time.monotonic() < end:
            for a in futures.map(attributes_later, [0.1] * 6):
                seen[a["pid"]] = a
        print(json.dumps({"origin": attributes(), "workers": list(seen.values())}))
    """


def test_module_attributes(tmp_path):
    proc = run_scoop(tmp_path, ATTRIBUTES, n=3, prelude=True)
    assert proc.returncode == 0, explain(proc)
    out = json.loads(proc.stdout)
    origin, workers = out["origin"], out["workers"]
    assert len(workers) == 3
    assert origin["IS_ORIGIN"] is True
    assert origin["IS_RUNNING"] is True
    assert origin["DEBUG"] is False
    assert origin["SIZE"] == 3
    assert origin["logger"] is True
    assert origin["BROKER"] not in ("None", "")
    for w in workers:
        assert w["IS_ORIGIN"] is False
        assert w["IS_RUNNING"] is True
        assert w["DEBUG"] is False
        assert w["SIZE"] == 3
        assert w["logger"] is True
        assert w["BROKER"] == origin["BROKER"]
    names = [origin["worker"]] + [w["worker"] for w in workers]
    assert all(isinstance(name, str) and name for name in names)
    assert len(set(names)) == 4, f"worker names are not unique per process: {names}"
