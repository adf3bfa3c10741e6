"""Large buffers through /dev/shm on a run confined to one machine.

In-process tests of the files themselves (made in a temporary folder that
stands for /dev/shm), then real runs: arrays both ways, shared constants, a
task retried after its worker was killed, files left after a run, and a run
over SSH, which must keep using frames.
"""

import errno
import glob
import json
import os
import pickle
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from support import explain, run_python, run_scoop
from scoop_rt import serialization, shm
from scoop_rt.launcher.run import Run, RunSpec

np = pytest.importorskip("numpy")

MIB = 1024 * 1024


@pytest.fixture
def sharing(tmp_path, monkeypatch):
    """Sharing on, with ``tmp_path`` as /dev/shm; the token."""
    monkeypatch.setattr(shm, "DIRECTORY", str(tmp_path))
    token = shm.new_token()
    shm.setup(token)
    yield token
    shm.setup(None)


def files(folder, token):
    return sorted(glob.glob(os.path.join(str(folder), f"{shm.PREFIX}{token}-*")))


# -- the files, in one process ------------------------------------------------------


def test_large_buffer_travels_as_a_reference_to_a_private_file(sharing, tmp_path):
    array = np.arange(MIB // 8 * 2, dtype=np.float64)
    frames = serialization.dumps(array)
    assert len(frames) == 2 and len(frames[1]) < shm.REFERENCE_MAX
    [path] = files(tmp_path, sharing)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.stat(path).st_size == array.nbytes

    got = serialization.loads(frames)
    assert np.array_equal(got, array) and got.flags.writeable
    got[:10] = -1  # copy on write: the file and the sender's array keep theirs
    assert array[0] == 0 and np.array_equal(serialization.loads(frames), array)

    serialization.release(frames)
    assert files(tmp_path, sharing) == []
    assert got[10] == 10  # still mapped after the file is gone
    with pytest.raises(pickle.UnpicklingError, match="shared memory"):
        serialization.loads(frames)


def test_a_buffer_sent_on_unchanged_is_linked_and_a_changed_one_copied(sharing, tmp_path):
    array = np.arange(MIB // 8 * 2, dtype=np.float64)
    frames = serialization.dumps(array)
    got = serialization.loads(frames)
    again = serialization.dumps(got)  # unchanged: the same file, a new name
    assert os.stat(files(tmp_path, sharing)[0]).st_nlink == 2
    got[-1] = -1  # one page copied on write: its contents must travel
    changed = serialization.dumps(got)
    assert len(files(tmp_path, sharing)) == 3
    serialization.release(frames)
    assert np.array_equal(serialization.loads(again), array)
    assert serialization.loads(changed)[-1] == -1
    assert np.array_equal(serialization.loads(changed)[:-1], array[:-1])
    serialization.release(again)
    serialization.release(changed)
    assert files(tmp_path, sharing) == []


def test_small_buffers_and_runs_without_sharing_use_frames(sharing, tmp_path):
    small = np.ones(MIB // 8 // 2)  # 512 KiB: out of band, but under 1 MiB
    frames = serialization.dumps(small)
    assert len(frames) == 2 and frames[1].raw().nbytes == small.nbytes
    shm.setup(None)
    frames = serialization.dumps(np.ones(MIB))
    assert frames[1].raw().nbytes == 8 * MIB
    assert np.array_equal(serialization.loads(frames), np.ones(MIB))
    assert os.listdir(tmp_path) == []


def test_missing_or_full_dev_shm_falls_back_to_frames(sharing, tmp_path, monkeypatch):
    array = np.ones(MIB)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    frames = serialization.dumps(array)
    assert frames[1].raw().nbytes == array.nbytes  # a frame, and no file left
    assert files(tmp_path, sharing) == []
    assert shm.enabled()  # full now, maybe not later
    monkeypatch.undo()

    monkeypatch.setattr(shm, "DIRECTORY", str(tmp_path / "missing"))
    frames = serialization.dumps(array)
    assert frames[1].raw().nbytes == array.nbytes
    assert not shm.enabled()  # no /dev/shm: not tried again
    assert np.array_equal(serialization.loads(frames), array)


def test_files_that_are_not_the_run_s_own_are_refused(sharing, tmp_path):
    frames = serialization.dumps(np.ones(MIB))
    [path] = files(tmp_path, sharing)
    os.chmod(path, 0o644)  # readable by others: not written by a run
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        serialization.loads(frames)
    os.chmod(path, 0o600)
    other = shm.MAGIC + frames[1][len(shm.MAGIC):len(shm.MAGIC) + 8] + \
        f"{shm.PREFIX}{shm.new_token()}-00".encode()
    with pytest.raises(pickle.UnpicklingError, match="not a shared buffer of this run"):
        serialization.loads([frames[0], other])
    shm.release(frames)


def test_a_task_s_files_go_when_its_future_settles(sharing, tmp_path):
    from concurrent.futures import Future
    frames = serialization.dump_call(sum, (np.ones(MIB),), {})
    future = serialization.claim_task_files(Future())
    assert len(files(tmp_path, sharing)) == 1
    assert np.array_equal(serialization.loads(frames)[2][0], np.ones(MIB))
    assert len(files(tmp_path, sharing)) == 1  # reading leaves it: retries
    future.set_result(None)
    assert files(tmp_path, sharing) == []


def test_remove_run_removes_that_run_s_files_only(sharing, tmp_path):
    serialization.dumps(np.ones(MIB))
    serialization.dumps(np.ones(MIB))
    other = tmp_path / f"{shm.PREFIX}{shm.new_token()}-00"
    other.write_bytes(b"x")
    assert shm.remove_run(sharing) == 2
    assert files(tmp_path, sharing) == [] and other.exists()
    assert shm.remove_run(None) == 0


def test_only_a_run_confined_to_this_machine_shares(tmp_path):
    spec = RunSpec(script="s.py", argv=[], placement=[("localhost", 2)])
    local = Run(spec)._client_boot("tcp://127.0.0.1:1", "w0")
    assert len(local.shm) == 32
    remote = Run(spec, remote={"node1": object()})._client_boot("tcp://h:1", "w0")
    assert remote.shm is None


# -- real runs ----------------------------------------------------------------------

HELPERS = textwrap.dedent("""
    import glob, json, os, time
    import numpy as np
    from scoop_rt import futures, shm, shared

    MIB = 1024 * 1024

    def backing(a):
        # What holds an array's memory: 'mmap' (shared memory) or 'bytearray'
        # (a frame that came over the socket).
        while isinstance(a, np.ndarray) and a.base is not None:
            a = a.base
        return type(a.obj if isinstance(a, memoryview) else a).__name__

    def run_files():
        token = shm.token()
        return glob.glob(f"/dev/shm/{shm.PREFIX}{token}-*") if token else []

    def arrays(n, mib=2):
        return [np.arange(mib * MIB // 8, dtype=np.float64) * (i + 1) for i in range(n)]

    def total(a):
        return float(a.sum()), backing(a), bool(a.flags.writeable)

    def scribble(a):
        a[:] = -1  # the sender's copy and the file must not change
        return float(a.sum())

    def identity(a):
        return a

    def change_last(a):
        a[-1] = -1  # one page differs from the file it came in
        return a
""")


def run_json(tmp_path, source, **kwargs):
    proc = run_scoop(tmp_path, HELPERS + textwrap.dedent(source), **kwargs)
    assert proc.returncode == 0, explain(proc)
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc


def left_on_dev_shm(token):
    return glob.glob(f"/dev/shm/{shm.PREFIX}{token}-*")


def test_arrays_go_and_come_back_through_shared_memory(tmp_path):
    out, _ = run_json(tmp_path, """
        if __name__ == "__main__":
            xs = arrays(6)
            out = {"token": shm.token()}
            out["sums"] = [list(r) for r in futures.map(total, xs)]
            out["expected"] = [float(a.sum()) for a in xs]
            out["scribbled"] = list(futures.map(scribble, xs))
            out["kept"] = all(np.array_equal(a, b) for a, b in zip(xs, arrays(6)))
            back = list(futures.map(identity, xs))
            out["equal"] = all(np.array_equal(a, b) for a, b in zip(xs, back))
            out["back"] = sorted({backing(b) for b in back})
            out["writable"] = all(b.flags.writeable for b in back)
            changed = list(futures.map(change_last, xs))
            out["change_last"] = all(
                c[-1] == -1 and np.array_equal(c[:-1], a[:-1]) and a[-1] != -1
                for a, c in zip(xs, changed))
            back[0][:] = 7  # a received array can be changed in place
            out["changed"] = bool((back[0] == 7).all() and xs[0][1] == 1.0)
            # Arguments go when their futures settle, results once read.
            out["left_in_run"] = run_files()
            print(json.dumps(out))
        """, prelude=True)
    assert out["token"]
    assert [s for s, _, _ in out["sums"]] == out["expected"]
    assert {b for _, b, _ in out["sums"]} == {"mmap"}
    assert all(w for _, _, w in out["sums"])
    assert out["scribbled"] == [-(2 * MIB // 8)] * 6 and out["kept"]
    assert out["equal"] and out["back"] == ["mmap"] and out["writable"]
    assert out["changed"] and out["change_last"]
    assert out["left_in_run"] == []
    assert left_on_dev_shm(out["token"]) == []


def test_shared_constant_with_a_big_array(tmp_path):
    out, _ = run_json(tmp_path, """
        def spoil():
            shared.getConst("big")[:] = -1
            return os.getpid()

        def look(delay):
            time.sleep(delay)
            big = shared.getConst("big", timeout=10)
            return os.getpid(), float(big[:1000].sum()), backing(big)

        if __name__ == "__main__":
            big = arrays(1, mib=4)[0]
            shared.setConst(big=big)
            warm_up(2)
            spoiler = futures.submit(spoil).result(timeout=30)
            seen = {}
            for _ in range(20):
                for pid, head, where in futures.map(look, [0.05] * 8):
                    if pid != spoiler:
                        seen[pid] = [head, where]
                if seen:
                    break
            print(json.dumps({"token": shm.token(), "seen": list(seen.values()),
                              "in_run": len(run_files()),
                              "expected": float(big[:1000].sum())}))
        """, prelude=True)
    # Another worker reads the constant as it was set, not as spoiled.
    assert out["seen"] and all(v == [out["expected"], "mmap"] for v in out["seen"])
    assert out["in_run"] == 1  # kept for workers that may still ask
    assert left_on_dev_shm(out["token"]) == []


def test_retried_task_still_gets_its_big_argument(tmp_path):
    marker = tmp_path / "killed"
    out, proc = run_json(tmp_path, f"""
        import signal

        def task(i, a):
            if i == 5 and not os.path.exists({str(marker)!r}):
                open({str(marker)!r}, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.01)
            return float(a.sum()), backing(a)

        if __name__ == "__main__":
            xs = arrays(10)
            fs = [futures.submit(task, i, a) for i, a in enumerate(xs)]
            got = [f.result(timeout=60) for f in fs]
            print(json.dumps({{"token": shm.token(), "got": got,
                               "expected": [float(a.sum()) for a in xs],
                               "in_run": run_files()}}))
        """, n=3)
    assert marker.exists()
    assert [s for s, _ in out["got"]] == out["expected"]
    assert {b for _, b in out["got"]} == {"mmap"}
    lost = [line for line in proc.stderr.splitlines() if "lost" in line]
    assert len(lost) == 1, proc.stderr
    assert out["in_run"] == []
    assert left_on_dev_shm(out["token"]) == []


@pytest.mark.parametrize("victim", ["origin", "launcher"])
def test_files_of_a_killed_run_are_removed(tmp_path, victim):
    # A part of the run dies outright with arguments in flight. The origin:
    # the launcher cleans up at the run's end. The launcher: the broker,
    # which notices and ends the run, removes them.
    out_file = tmp_path / "token"
    pid = "os.getpid()" if victim == "origin" else "os.getppid()"
    proc = run_scoop(tmp_path, HELPERS + textwrap.dedent(f"""
        def slow(a):
            time.sleep(30)

        if __name__ == "__main__":
            fs = [futures.submit(slow, a) for a in arrays(4)]
            time.sleep(0.5)
            open({str(out_file)!r}, "w").write(f"{{shm.token()}} {{len(run_files())}}")
            os.kill({pid}, 9)
            time.sleep(30)
        """), prelude=True, timeout=60)
    assert proc.returncode != 0, explain(proc)
    if victim == "launcher":
        assert proc.returncode == -9, explain(proc)
    token, in_flight = out_file.read_text().split()
    assert int(in_flight) == 4
    # The launcher removes them before it exits; the broker, soon after.
    end = time.monotonic() + (15 if victim == "launcher" else 0)
    while left_on_dev_shm(token) and time.monotonic() < end:
        time.sleep(0.1)
    assert left_on_dev_shm(token) == []


def test_nested_tasks_and_the_sequential_runtime_pass_big_arrays(tmp_path):
    source = HELPERS + textwrap.dedent("""
        def child(a):
            return float(a.sum())

        def parent(mib):
            # The child runs here (work-first) or elsewhere: either way it
            # gets the array.
            a = np.ones(int(mib * MIB) // 8)
            return futures.submit(child, a).result(timeout=30)

        if __name__ == "__main__":
            sizes = [0.1, 2, 0.1, 2]
            print(json.dumps({"got": list(futures.map(parent, sizes)),
                              "identity": float(futures.submit(identity, np.ones(MIB)).result().sum()),
                              "left": run_files()}))
        """)
    expected = [0.1 * MIB / 8, 2 * MIB / 8, 0.1 * MIB / 8, 2 * MIB / 8]
    for proc in (run_scoop(tmp_path, source, prelude=True),
                 run_python(tmp_path, source, prelude=True)):
        assert proc.returncode == 0, explain(proc)
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["got"] == [int(x) for x in expected] and out["left"] == []
        assert out["identity"] == MIB


def test_a_run_over_ssh_keeps_sending_frames(ssh_hosts, tmp_path):
    h1 = ssh_hosts.hosts[0]
    path = tmp_path / "arrays.py"
    path.write_text(HELPERS + textwrap.dedent("""
        def where(a):
            return float(a.sum()), backing(a), shm.enabled()

        if __name__ == "__main__":
            xs = arrays(3)
            got = list(futures.map(where, xs))
            back = list(futures.map(identity, xs))
            print(json.dumps({"got": got, "origin": shm.enabled(),
                              "expected": [float(a.sum()) for a in xs],
                              "back": sorted({backing(b) for b in back}),
                              "equal": all(np.array_equal(a, b)
                                           for a, b in zip(xs, back))}))
        """))
    proc = subprocess.run([sys.executable, "-m", "scoop_rt", "--hosts", h1.alias,
                           "--", str(path)], env=ssh_hosts.env(), capture_output=True,
                          text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [s for s, _, _ in out["got"]] == out["expected"]
    assert {(b, on) for _, b, on in out["got"]} == {("bytearray", False)}
    assert out["origin"] is False and out["back"] == ["bytearray"] and out["equal"]
