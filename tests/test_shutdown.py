"""Shutdown: once the script ends, every process of the run is gone within
2 s; an uncaught exception in the script ends the run within 5 s. Times are
measured from a marker line the script prints at its very end."""

import json
import time

import psutil
import pytest

from support import explain, is_alive, run_scoop

SCRIPT = """
    def hold(how):
        if how == "sleeping":
            time.sleep(60)
        elif how == "holding-gil":
            sum(range(10 ** 12))  # one C call: the GIL stays held throughout

    if __name__ == "__main__":
        how, ending, go = sys.argv[1:4]
        workers = warm_up(2)
        print("READY " + json.dumps(sorted(workers)), flush=True)
        # The test takes its census of the run's processes, then says go.
        end = time.monotonic() + 30
        while not os.path.exists(go) and time.monotonic() < end:
            time.sleep(0.02)
        if how != "idle":
            fs = [futures.submit(hold, how) for _ in range(2)]
            end = time.monotonic() + 10
            while not all(f.running() for f in fs) and time.monotonic() < end:
                time.sleep(0.05)
            time.sleep(0.3)
        print(f"END {os.getpid()}", flush=True)
        if ending == "raise":
            raise RuntimeError("the script gives up")
    """


def gone_after(processes, limit):
    """Seconds until every one of ``processes`` is gone (at most ``limit`` + a
    little); the ones still alive then."""
    begin = time.monotonic()
    while True:
        alive = [p for p in processes if is_alive(p)]
        if not alive or time.monotonic() - begin > limit + 3:
            return time.monotonic(), alive
        time.sleep(0.02)


def describe(processes):
    out = []
    for p in processes:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline())}")
        except psutil.Error:
            out.append(str(p.pid))
    return out


@pytest.mark.parametrize("how", ["idle", "sleeping", "holding-gil"])
def test_every_process_is_gone_2s_after_the_script_ends(live_scoop, tmp_path, how):
    go = tmp_path / "go"
    run = live_scoop(SCRIPT, how, "return", go)
    _, ready = run.expect("READY ")
    tree = run.tree()
    go.write_text("")
    workers = json.loads(ready.split(" ", 1)[1])
    assert set(workers) <= {p.pid for p in tree}, (workers, describe(tree))
    assert len(tree) >= 5, describe(tree)  # launcher, broker, origin, 2 workers
    ended, _ = run.expect("END ", timeout=30)
    gone, alive = gone_after(tree, 2.0)
    took = gone - ended
    left = describe(alive)
    code = run.finish()
    assert not left and took <= 2.0, (
        f"{took:.2f} s after the script ended, still running: {left}\n{run.describe()}")
    assert code == 0, run.describe()


@pytest.mark.parametrize("how", ["idle", "sleeping"])
def test_uncaught_exception_ends_the_run_within_5s(live_scoop, tmp_path, how):
    go = tmp_path / "go"
    run = live_scoop(SCRIPT, how, "raise", go)
    run.expect("READY ")
    tree = run.tree()
    assert len(tree) >= 5, describe(tree)
    go.write_text("")
    ended, _ = run.expect("END ", timeout=30)
    gone, alive = gone_after(tree, 5.0)
    took = gone - ended
    left = describe(alive)
    code = run.finish()
    assert not left and took <= 5.0, (
        f"{took:.2f} s after the exception, still running: {left}\n{run.describe()}")
    assert code == 1, run.describe()
    assert "RuntimeError: the script gives up" in "".join(run.stderr_lines)


SPAWNS = """
    import subprocess

    def start_child(marker):
        # A process of the task's own that outlives the task.
        subprocess.Popen([sys.executable, "-c",
                          "import time; time.sleep(60)", marker])
        return os.getpid()

    if __name__ == "__main__":
        marker = sys.argv[1]
        print(json.dumps(list(futures.map(start_child, [marker] * 4))))
    """


def test_processes_that_tasks_start_are_gone_after_the_run(tmp_path):
    marker = f"scoop-rt-child-{time.monotonic_ns()}"
    proc = run_scoop(tmp_path, SPAWNS, marker, prelude=True)
    assert proc.returncode == 0, explain(proc)
    assert json.loads(proc.stdout)  # the tasks ran
    end = time.monotonic() + 3
    while True:
        left = [p for p in psutil.process_iter(["cmdline"])
                if marker in (p.info["cmdline"] or [])]
        if not left or time.monotonic() > end:
            break
        time.sleep(0.05)
    for p in left:
        p.kill()
    assert not left, "processes started by tasks outlived the run"
