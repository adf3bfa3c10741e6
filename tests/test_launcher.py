"""The launcher: ``python -m scoop_rt [-n N] [-v|-q] script.py [args...]``."""

import json
import os
import signal
import subprocess
import sys
from collections import Counter

import psutil

import scoop_rt

from support import explain, run_argv, run_scoop, scoop_argv, scoop_env, write_script


def test_script_arguments_and_exit_code(tmp_path):
    proc = run_scoop(tmp_path, """
        import json, sys
        from scoop_rt import futures

        def argv_here():
            return sys.argv[1:]

        if __name__ == "__main__":
            print(json.dumps({"origin": sys.argv[1:],
                              "worker": futures.submit(argv_here).result()}))
            sys.exit(3)
        """, "plain", "with space", "-n", "5", "-v", "--help", "--")
    assert proc.returncode == 3, explain(proc)
    expected = ["plain", "with space", "-n", "5", "-v", "--help", "--"]
    assert json.loads(proc.stdout) == {"origin": expected, "worker": expected}


def test_exit_code_survives_an_ignored_sigchld(tmp_path):
    """A launcher started with SIGCHLD ignored (as some daemons start their
    children) still reports the script's exit code: ignored, the signal
    would make the kernel reap the script's process unasked."""
    script = write_script(tmp_path, "import sys\nsys.exit(3)\n")
    proc = subprocess.run(
        scoop_argv(script), cwd=tmp_path, env=scoop_env(), capture_output=True,
        text=True, timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN))
    assert proc.returncode == 3, explain(proc)


def test_script_that_ends_normally_exits_0(tmp_path):
    proc = run_scoop(tmp_path, """
        from scoop_rt import futures
        if __name__ == "__main__":
            print(sum(futures.map(abs, [-1, -2, 3])))
        """)
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout == "6\n"


def test_uncaught_exception_prints_traceback_and_exits_1(tmp_path):
    proc = run_scoop(tmp_path, """
        from scoop_rt import futures

        def fail_here():
            raise LookupError("script-failure-marker")

        if __name__ == "__main__":
            print("before", futures.submit(abs, -4).result(), flush=True)
            fail_here()
            print("never printed")
        """)
    assert proc.returncode == 1, explain(proc)
    assert proc.stdout == "before 4\n"
    err = proc.stderr
    assert "Traceback (most recent call last)" in err, err
    assert "LookupError: script-failure-marker" in err
    assert 'raise LookupError("script-failure-marker")' in err
    assert "script.py" in err and "in fail_here" in err
    # The traceback is the script's: it starts in it, not in the runtime.
    first_frame = err.split("Traceback (most recent call last):\n", 1)[1]
    assert "script.py" in first_frame.splitlines()[0], err


def test_help_lists_every_option(tmp_path):
    proc = run_argv([sys.executable, "-m", "scoop_rt", "--help"], tmp_path, 30)
    assert proc.returncode == 0, explain(proc)
    for option in ("-n", "--workers", "-v", "--verbose", "-q", "--quiet",
                   "--version", "--help"):
        assert f"{option} " in proc.stdout or f"{option}," in proc.stdout, \
            f"{option} missing from --help:\n{proc.stdout}"
    assert "script" in proc.stdout
    version = run_argv([sys.executable, "-m", "scoop_rt", "--version"], tmp_path, 30)
    assert version.returncode == 0
    assert scoop_rt.__version__ in version.stdout + version.stderr


WORKER_PIDS = """
    if __name__ == "__main__":
        print(json.dumps({"size": scoop_rt.SIZE,
                          "workers": sorted(warm_up(scoop_rt.SIZE)),
                          "origin": os.getpid()}))
    """


def test_default_worker_count_is_the_cores(tmp_path):
    proc = run_scoop(tmp_path, WORKER_PIDS, n=None, prelude=True)
    assert proc.returncode == 0, explain(proc)
    report = json.loads(proc.stdout)
    cores = len(os.sched_getaffinity(0))
    assert report["size"] == cores
    assert len(report["workers"]) == cores
    assert report["origin"] not in report["workers"]


PROCESS_FACTS = """
    import random

    def facts(delay):
        time.sleep(delay)
        links = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # the listing's own descriptor
                continue
        with open("/proc/self/comm") as f:
            name = f.read().strip()
        with open("/proc/self/cmdline", "rb") as f:
            cmdline = f.read().decode().replace("\\0", " ")
        return dict(pid=os.getpid(), links=links, role=os.environ.get("SCOOP_RT_ROLE"),
                    draw=random.random(), name=name, cmdline=cmdline,
                    own_session=os.getsid(0) == os.getpid())

    if __name__ == "__main__":
        warm_up(2)
        print(json.dumps(list(futures.map(facts, [0.05] * 8))))
"""


def _kinds(links: list) -> Counter:
    """What a process holds open, by kind: pipe, socket, anon_inode:[eventfd]..."""
    return Counter(link.split(":[")[0] if ":[" in link else link for link in links)


def test_forked_workers_hold_what_started_ones_hold(tmp_path):
    """A forked worker holds nothing of the launcher's: the same descriptors,
    kind for kind, as a worker started as a new interpreter, and pipes of its
    own. Like a started one it runs in a session of its own, knows its role
    and draws random numbers of its own; it is named after its role."""
    facts = {}
    for fork in ("1", "0"):
        proc = run_scoop(tmp_path, PROCESS_FACTS, prelude=True,
                         env={"SCOOP_RT_FORK": fork})
        assert proc.returncode == 0, explain(proc)
        facts[fork] = [f for f in json.loads(proc.stdout) if f["role"] == "worker"]
    started = {f["pid"]: f for f in facts["0"]}
    forked = {f["pid"]: f for f in facts["1"]}
    assert len(started) == len(forked) == 2, facts
    expected = _kinds(next(iter(started.values()))["links"])
    assert expected["pipe"] == 3  # stdin, stdout and stderr
    for f in [*started.values(), *forked.values()]:
        assert _kinds(f["links"]) == expected, f
        assert f["own_session"], f
    first, second = forked.values()
    assert not {l for l in first["links"] if l.startswith("pipe:")} & set(second["links"])
    draws = [f["draw"] for f in facts["1"]]
    assert len(set(draws)) == len(draws)  # no two workers share a random state
    assert all(f["name"] == "scoop_rt.worker" for f in forked.values())
    assert all("-m scoop_rt.worker" in f["cmdline"] for f in started.values())


def test_local_run_uses_no_network(live_scoop, tmp_path):
    """A run on this machine alone neither listens on nor connects to any
    network address: the broker's socket is a Unix socket in a folder only
    this user can enter, removed when the run ends."""
    go = tmp_path / "go"
    run = live_scoop(f"""
        if __name__ == "__main__":
            workers = warm_up(3)
            print("READY " + json.dumps({{"workers": sorted(workers),
                                          "origin": os.getpid(),
                                          "broker": scoop_rt.BROKER.endpoint}}),
                  flush=True)
            end = time.monotonic() + 30
            while not os.path.exists({str(go)!r}) and time.monotonic() < end:
                time.sleep(0.05)
        """, launcher_args=("--workers", "3"), n=None)
    _, line = run.expect("READY ")
    report = json.loads(line.split(" ", 1)[1])
    tree = run.tree()
    pids = {p.pid for p in tree}
    # The broker, 3 workers and the origin are local processes of the run.
    assert set(report["workers"]) <= pids and report["origin"] in pids
    assert len(report["workers"]) == 3
    assert report["broker"].startswith("ipc://"), report["broker"]
    folder = os.path.dirname(report["broker"][len("ipc://"):])
    folder_stat = os.stat(folder)
    listening, remote = [], []
    for p in tree:
        try:
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                listening.append((p.pid, c.laddr))
            elif c.raddr:
                remote.append((p.pid, c.raddr))
    go.write_text("")
    code = run.finish()
    assert not listening and not remote, (listening, remote)
    assert folder_stat.st_uid == os.getuid()
    assert folder_stat.st_mode & 0o777 == 0o700, oct(folder_stat.st_mode)
    assert not os.path.exists(folder), "the run's socket folder was left behind"
    assert code == 0, run.describe()


def test_runtime_logs_only_on_stderr(tmp_path):
    source = """
        import sys
        import scoop_rt
        from scoop_rt import futures

        def task(x):
            print(f"task line {x}")
            scoop_rt.logger.warning("logged by task %d", x)
            return x

        if __name__ == "__main__":
            print(list(futures.map(task, range(4))))
            scoop_rt.logger.warning("logged by origin")
            print("last line")
        """
    expected = [f"task line {x}" for x in range(4)] + ["[0, 1, 2, 3]", "last line"]
    verbose = run_scoop(tmp_path, source, launcher_args=("-vv",))
    assert verbose.returncode == 0, explain(verbose)
    assert sorted(verbose.stdout.splitlines()) == sorted(expected), explain(verbose)
    for x in range(4):
        assert f"logged by task {x}" in verbose.stderr
    assert "logged by origin" in verbose.stderr
    # -vv shows the runtime's own doings, more than the script's own lines.
    own = [line for line in verbose.stderr.splitlines() if "logged by" not in line]
    assert own, "-vv logged nothing of the runtime's own"

    quiet = run_scoop(tmp_path, source, launcher_args=("-q",))
    assert quiet.returncode == 0, explain(quiet)
    assert sorted(quiet.stdout.splitlines()) == sorted(expected)
    # -q: errors only, and a clean run has none.
    assert quiet.stderr == "", quiet.stderr



HOST_NAMES = """
import json
from scoop_rt import futures


def where(x):
    import scoop_rt
    return scoop_rt.SIZE


if __name__ == "__main__":
    print(json.dumps(sorted(set(futures.map(where, range(8))))))
"""


def test_scoops_host_option_is_hosts(tmp_path):
    """SCOOP spells it ``--host``: the same option as ``--hosts``, in both of
    its forms, and not an ambiguous abbreviation of --hosts/--hostfile."""
    script = write_script(tmp_path, HOST_NAMES, "script.py", False)
    for hosts in (["--host", "localhost", "localhost", "localhost", "--"],
                  ["--host", "localhost,localhost,localhost"]):
        argv = [sys.executable, "-m", "scoop_rt", *hosts, str(script)]
        proc = run_argv(argv, tmp_path, 60)
        assert proc.returncode == 0, explain(proc)
        assert json.loads(proc.stdout) == [3], explain(proc)
