"""Faults, through real processes killed for real: dead workers, no workers,
killed launcher, broker or origin, signals, version mismatch, bad input."""

import json
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import zmq

from scoop_rt import __version__, protocol, transport
from scoop_rt.config import Config
from scoop_rt.protocol import Msg
from support import real_broker, role_of

TIMEOUT = 120


def script(tmp_path, source, name="script.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def run(*args, timeout=TIMEOUT, env=None):
    return subprocess.run([sys.executable, "-m", "scoop_rt", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def start(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "scoop_rt", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def role_processes(launcher_pid):
    """{role: [psutil.Process]} for the run under ``launcher_pid``."""
    roles = {}
    for child in psutil.Process(launcher_pid).children(recursive=True):
        role = role_of(child)
        if role:
            roles.setdefault(role, []).append(child)
    return roles


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def alive(procs):
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_killed_worker_tasks_run_elsewhere_once(tmp_path):
    marker = tmp_path / "killed"
    path = script(tmp_path, f"""
        import os, signal, time
        from scoop_rt import futures

        def task(i):
            if i == 5 and not os.path.exists({str(marker)!r}):
                open({str(marker)!r}, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.01)
            return i * 10

        if __name__ == "__main__":
            fs = [futures.submit(task, i) for i in range(20)]
            print([f.result(timeout=60) for f in fs])
        """)
    proc = run("-n", 3, path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [i * 10 for i in range(20)]
    lost = [line for line in proc.stderr.splitlines() if "lost" in line]
    assert len(lost) == 1, proc.stderr
    assert "killed by SIGKILL" in lost[0] and "host" in lost[0]


def test_task_that_kills_every_worker_fails_alone(tmp_path):
    path = script(tmp_path, """
        import os, signal
        from scoop_rt import futures

        def deadly(x):
            os.kill(os.getpid(), signal.SIGKILL)

        def fine(x):
            return x + 1

        if __name__ == "__main__":
            bad = futures.submit(deadly, 0)
            good = list(futures.map(fine, range(100)))
            try:
                bad.result(timeout=60)
            except futures.WorkerLostError as exc:
                print("lost:", exc)
            print(good == list(range(1, 101)))
        """)
    proc = run("-n", 4, path)
    assert proc.returncode == 0, proc.stderr
    lost, ok = proc.stdout.splitlines()
    assert ok == "True"
    assert "tried 3 times" in lost and "killed by SIGKILL" in lost and "host" in lost


def test_a_local_maps_values_do_not_wait_for_the_broker(tmp_path):
    """On a run local to one machine, workers send a map's values straight to
    the origin: a map whose chunks have reached their workers completes while
    the broker is stopped (SIGSTOP), and the run ends as usual once it goes
    on."""
    go = tmp_path / "go"
    path = script(tmp_path, f"""
        import os, time
        import psutil
        from scoop_rt import futures

        def after_go(go, x):
            open(f"{{go}}.{{x}}", "w").close()  # started
            deadline = time.monotonic() + 60
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.01)
            return 10 * x

        def is_broker(p):
            return "scoop_rt.broker" in p.name() + " ".join(p.cmdline())

        if __name__ == "__main__":
            go = {str(go)!r}
            list(futures.map(abs, range(8)))  # the workers are up
            broker = next(filter(is_broker, psutil.Process().parent().children()))
            values = futures.map(after_go, [go, go], [1, 2], timeout=30)
            deadline = time.monotonic() + 30
            while not all(os.path.exists(f"{{go}}.{{x}}") for x in (1, 2)):
                assert time.monotonic() < deadline, "the chunks never started"
                time.sleep(0.01)
            broker.suspend()
            try:
                open(go, "w").close()
                print(list(values), broker.status(), flush=True)
            finally:
                broker.resume()
    """)
    proc = run("-n", 2, path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[10, 20] stopped"], proc.stdout + proc.stderr


def test_a_local_maps_values_too_large_for_the_origins_socket_take_the_broker(tmp_path):
    """A chunk's values over the origin's socket's largest record come
    through the broker instead, whole and in order, next to chunks that
    went straight."""
    path = script(tmp_path, """
        from scoop_rt import futures

        def value(x):
            return str(x % 10) * (1_100_000 if x % 4 == 0 else 10)

        if __name__ == "__main__":
            got = list(futures.map(value, range(16), chunksize=2))
            print(got == [value(x) for x in range(16)])
    """)
    proc = run("-vv", "-n", 2, path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True"], proc.stdout + proc.stderr
    # Chunks of two: those starting at a multiple of 4 hold over 1 MiB.
    assert proc.stderr.count("bytes is over") == 4, proc.stderr


def test_no_retry_option_fails_instead_of_running_twice(tmp_path):
    counter = tmp_path / "runs"
    path = script(tmp_path, f"""
        import os, signal
        from scoop_rt import futures

        def once(x, retry=None):       # its own keyword 'retry' stays its own
            with open({str(counter)!r}, "a") as f:
                f.write("run\\n")
            os.kill(os.getpid(), signal.SIGKILL)

        if __name__ == "__main__":
            f = futures.options(retry=False).submit(once, 1, retry="mine")
            try:
                f.result(timeout=60)
            except futures.WorkerLostError as exc:
                print("lost:", exc)
        """)
    proc = run("-n", 3, path)
    assert proc.returncode == 0, proc.stderr
    assert "not to run twice" in proc.stdout
    assert counter.read_text().count("run") == 1


def test_tasks_not_to_run_twice_are_never_held_ahead(tmp_path):
    # Many short tasks make workers take tasks ahead; one kills its worker.
    # Only that one may fail: a task submitted not to run twice must not
    # wait in a worker's batch, where it would die unrun with the worker.
    path = script(tmp_path, """
        import os, time
        from scoop_rt import futures

        def short(i):
            end = time.perf_counter() + 0.0002
            while time.perf_counter() < end:
                pass
            return i

        def killer():
            time.sleep(0.05)
            os._exit(3)

        if __name__ == "__main__":
            [f.result(timeout=60) for f in [futures.submit(short, i) for i in range(400)]]
            once = futures.options(retry=False)
            fs = [once.submit(short, i) for i in range(200)]
            fs.append(once.submit(killer))
            fs += [once.submit(short, i) for i in range(200, 600)]
            failed = [i for i, f in enumerate(fs) if f.exception(timeout=60) is not None]
            print(failed)
        """)
    proc = run("-n", 2, path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[200]"], proc.stdout


def test_pending_futures_fail_when_no_worker_is_left(tmp_path):
    path = script(tmp_path, """
        import os, signal, time
        from scoop_rt import futures

        def suicide(x):
            os.kill(os.getpid(), signal.SIGKILL)

        if __name__ == "__main__":
            first = [futures.submit(suicide, i) for i in range(2)]
            futures.wait(first, timeout=30)
            start = time.monotonic()
            late = futures.submit(abs, -1)
            try:
                late.result(timeout=30)
            except futures.NoWorkersError as exc:
                print("failed after %.1f s: %s" % (time.monotonic() - start, exc))
        """)
    proc = run("-n", 2, "--", path, env={**os.environ, "SCOOP_RT_MAX_ATTEMPTS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "no workers are left" in proc.stdout
    assert float(proc.stdout.split()[2]) < 5


def test_chaos_map_survives_random_worker_kills(tmp_path):
    path = script(tmp_path, """
        import json, time
        from scoop_rt import futures

        def task(i):
            time.sleep(0.002)
            return 2 * i + 1

        if __name__ == "__main__":
            print("started", flush=True)
            print(json.dumps(list(futures.map(task, range(10000)))))
        """)
    # Six kills could hit the same chunk three times, the default limit of
    # attempts (a test of its own): allow more than there are kills.
    launcher = start("-n", 8, path, env={**os.environ, "SCOOP_RT_MAX_ATTEMPTS": "7"})
    try:
        assert launcher.stdout.readline().strip() == "started"
        rng = random.Random(1234)
        killed = 0
        deadline = time.monotonic() + 60
        while killed < 6 and time.monotonic() < deadline:
            workers = alive(role_processes(launcher.pid).get("worker", []))
            if len(workers) <= 2:
                break
            time.sleep(rng.uniform(0.1, 0.3))
            victim = rng.choice(workers)
            try:
                victim.kill()
                killed += 1
            except psutil.Error:
                pass
        out, err = launcher.communicate(timeout=TIMEOUT)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert killed >= 5
    assert launcher.returncode == 0, err
    assert json.loads(out) == [2 * i + 1 for i in range(10000)]
    assert err.count("lost: killed by SIGKILL") == killed


LONG_RUN = """
    import time
    from scoop_rt import futures
    if __name__ == "__main__":
        print("started", flush=True)
        list(futures.map(time.sleep, [120] * 2))
    """


def socket_folders(broker):
    """The folders of the broker's Unix sockets (its listening one, and the
    connections it accepted there)."""
    return {os.path.dirname(c.laddr) for c in broker.net_connections(kind="unix")
            if c.laddr}


@pytest.mark.parametrize("victim", ["launcher", "broker", "origin"])
def test_killing_any_part_leaves_no_orphan(tmp_path, victim):
    launcher = start("-n", 2, script(tmp_path, LONG_RUN))
    try:
        assert launcher.stdout.readline().strip() == "started"
        roles = role_processes(launcher.pid)
        everyone = [psutil.Process(launcher.pid)] + [p for ps in roles.values() for p in ps]
        folders = socket_folders(roles["broker"][0])
        assert folders, "a local run's broker listens on a Unix socket"
        target = psutil.Process(launcher.pid) if victim == "launcher" else roles[victim][0]
        target.kill()
        gone, still = psutil.wait_procs(everyone, timeout=30)
        assert not alive(still), [p.cmdline() for p in alive(still)]
        # Whoever is left removes the socket's folder (the broker, when the
        # launcher was killed).
        assert not [f for f in folders if os.path.exists(f)], folders
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.communicate(timeout=30)


@pytest.mark.parametrize("signum, code, words", [
    (signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_stop_signals(tmp_path, signum, code, words):
    launcher = start("-n", 2, script(tmp_path, LONG_RUN))
    try:
        assert launcher.stdout.readline().strip() == "started"
        everyone = [p for ps in role_processes(launcher.pid).values() for p in ps]
        sent = time.monotonic()
        launcher.send_signal(signum)
        launcher.wait(timeout=30)
        took = time.monotonic() - sent
        gone, still = psutil.wait_procs(everyone, timeout=5)
        err = launcher.stderr.read()
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.communicate(timeout=30)
    assert launcher.returncode == code
    assert took < 5
    assert not alive(still)
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert "Traceback" not in err


def test_ctrl_c_before_the_run_starts(tmp_path):
    """The script's process starts before the launcher has read its hosts;
    a Ctrl-C from the terminal (to the whole process group) meanwhile stops
    the command with one line, and leaves no process behind."""
    hosts = tmp_path / "hosts"
    os.mkfifo(hosts)  # reading it blocks the launcher until someone writes
    terminal, tty = os.openpty()  # the script's process writes there itself
    try:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "scoop_rt", "--hostfile", str(hosts),
             str(script(tmp_path, LONG_RUN))],
            stdout=tty, stderr=tty, start_new_session=True)
        os.close(tty)
        try:
            wait_for(lambda: "origin" in role_processes(launcher.pid), 30,
                     "the script's process to start")
            origin = role_processes(launcher.pid)["origin"]
            time.sleep(0.5)  # past its imports, waiting for its bootstrap
            os.killpg(launcher.pid, signal.SIGINT)
            launcher.wait(timeout=30)
            gone, still = psutil.wait_procs(origin, timeout=5)
        finally:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait(timeout=30)
        printed = b""
        while select.select([terminal], [], [], 0.5)[0]:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            printed += chunk
    finally:
        os.close(terminal)
    assert launcher.returncode == 130
    assert printed.decode().strip() == "scoop_rt: interrupted (Ctrl-C)", printed
    assert not alive(still)


def test_mismatched_version_is_refused_naming_both(tmp_path):
    """A client claiming another version is refused by a real broker."""
    ctx = zmq.Context()
    try:
        with real_broker(Config(heartbeat_interval=0.5)) as (endpoint, keys):
            sock = transport.connect_dealer(ctx, endpoint, transport.client_keys(keys),
                                            b"w9")
            sock.send_multipart(protocol.encode(Msg.HELLO, "worker", "w9", "elsewhere",
                                                1, "0.0.1", "2.7"))
            assert sock.poll(10_000), "no answer to HELLO"
            msg = protocol.decode(sock.recv_multipart())
            sock.close()
    finally:
        ctx.term()
    assert msg.type == Msg.REFUSED
    assert "0.0.1" in msg.fields.reason and "2.7" in msg.fields.reason
    assert __version__ in msg.fields.reason


@pytest.mark.parametrize("args, words", [
    (["-n", "0"], "0 workers"),
    (["-n", "-3"], "-3 workers"),
    (["-n", "two"], "'two' is not a whole number"),
    (["--hostfile", "/no/such/hosts"], "hostfile '/no/such/hosts' not found"),
])
def test_bad_input_is_one_line(tmp_path, args, words):
    path = script(tmp_path, "print('never')\n")
    proc = run(*args, path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr


@pytest.mark.parametrize("name, value, words", [
    ("SCOOP_RT_RUN_IN_ORIGIN", "maybe", "not a valid switch"),
    ("SCOOP_RT_PREFETCH", "abc", "not a valid whole number"),
    ("SCOOP_RT_HEARTBEAT_INTERVAL", "soon", "not a valid number"),
])
def test_bad_environment_setting_is_one_line(tmp_path, name, value, words):
    path = script(tmp_path, "print('never')\n")
    proc = run("-n", 2, path, env={**os.environ, name: value})
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and name in proc.stderr, proc.stderr
    assert words in proc.stderr, proc.stderr


def test_missing_script_and_unreadable_hostfile(tmp_path):
    proc = run("-n", 2, tmp_path / "nope.py")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "nope.py" in proc.stderr and "not found" in proc.stderr
    hosts = tmp_path / "hosts"
    hosts.write_bytes(b"\xff\xfe\x00bad")
    proc = run("--hostfile", hosts, script(tmp_path, "print(1)\n"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "cannot be read" in proc.stderr


def test_syntax_error_shows_the_scripts_own_error(tmp_path):
    proc = run("-n", 2, script(tmp_path, "def broken(:\n    pass\n"))
    assert proc.returncode == 1
    assert "SyntaxError" in proc.stderr and "script.py" in proc.stderr
    assert "scoop_rt/" not in proc.stderr  # no frame of ours


def test_workers_that_die_at_start_fail_the_futures(tmp_path):
    path = script(tmp_path, """
        import os
        import scoop_rt
        from scoop_rt import futures
        if not scoop_rt.IS_ORIGIN:
            os._exit(3)
        if __name__ == "__main__":
            try:
                futures.submit(abs, -1).result(timeout=60)
            except futures.NoWorkersError as exc:
                print("failed:", exc)
        """)
    proc = run("-n", 2, path)
    assert proc.returncode == 0, proc.stderr
    assert "failed: no workers are left" in proc.stdout
    assert proc.stderr.count("ended before it joined the run: exited with code 3") == 2


def test_silent_worker_is_declared_lost_by_heartbeats(tmp_path):
    """A frozen worker (SIGSTOP: alive, but silent) loses its tasks to others
    once it has missed its heartbeats."""
    path = script(tmp_path, """
        import os, time
        from scoop_rt import futures

        def task(i):
            time.sleep(0.2)
            return os.getpid()

        if __name__ == "__main__":
            print(os.getpid(), flush=True)
            pids = list(futures.map(task, range(16), chunksize=1))
            print(len(pids))
        """)
    env = {**os.environ, "SCOOP_RT_HEARTBEAT_INTERVAL": "0.2",
           "SCOOP_RT_HEARTBEAT_MISSES": "3"}
    launcher = subprocess.Popen([sys.executable, "-m", "scoop_rt", "-n", "2", path],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
    frozen = None
    try:
        launcher.stdout.readline()
        time.sleep(0.5)
        frozen = role_processes(launcher.pid)["worker"][0]
        frozen.suspend()
        out, err = launcher.communicate(timeout=TIMEOUT)
    finally:
        if frozen is not None:
            try:
                frozen.resume()
            except psutil.Error:
                pass
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert launcher.returncode == 0, err
    assert out.strip() == "16"
    assert "lost: silent for" in err


@pytest.mark.parametrize("name, words", [
    ("0.0.0.0", "not an address the hosts can connect to"),
    ("no-such-host.invalid", "does not resolve"),
])
def test_bad_broker_hostname_is_one_line(tmp_path, name, words):
    proc = run("--broker-hostname", name, script(tmp_path, "print('never')\n"))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
