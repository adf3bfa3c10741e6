"""Prefetch, through a real broker: short tasks still give every result
once, in order; tasks held behind a long one move on; outcomes, tasks given
back and tasks sent straight to the origin, as the broker handles their
messages. Which worker gets which task (the dispatch rules) is tested in
process, over plain data, in test_dispatch.py."""

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import zmq

from scoop_rt import __version__, protocol, transport
from scoop_rt.bootstrap import ClientBoot
from scoop_rt.config import Config
from scoop_rt.protocol import Flags, Msg, Status

from support import explain, real_broker, role_of, run_scoop


def test_prefetch_keeps_results_whole(tmp_path):
    script = tmp_path / "short.py"
    script.write_text(textwrap.dedent("""\
        import json
        from scoop_rt import futures

        def short(x):
            return x * 3

        if __name__ == "__main__":
            fs = [futures.submit(short, i) for i in range(2000)]
            print(json.dumps([f.result(timeout=60) for f in fs]
                             + list(futures.map(short, range(5000)))))
        """))
    proc = subprocess.run([sys.executable, "-m", "scoop_rt", "-n", "2", str(script)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SCOOP_RT_PREFETCH": "1"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [i * 3 for i in range(2000)] + [i * 3 for i in range(5000)]


ASKING_AHEAD = """
    def nap(seconds):
        time.sleep(seconds)
        return seconds

    def ask_ahead():
        \"\"\"Short chunks, enough of them to outweigh warm_up's 50 ms tasks
        in each worker's running average: both workers ask for tasks ahead.\"\"\"
        warm_up(2)
        for _ in range(10):
            list(futures.map(abs, range(4000)))
    """

BEHIND_A_LONG_TASK = ASKING_AHEAD + """
    if __name__ == "__main__":
        ask_ahead()
        long = futures.submit(nap, 4)
        time.sleep(1)  # it runs, and has run long
        short = list(futures.map(nap, [0.05] * 4, chunksize=1))
        print(json.dumps({"short": short, "long_done": long.done()}))
        long.result(timeout=30)
    """


def test_no_chunk_goes_ahead_behind_a_long_task(tmp_path):
    """A worker whose task has run long withdraws the prefetch it asked for
    while its tasks were short: a map that comes meanwhile runs on the other
    worker, instead of leaving a chunk to wait behind the long task."""
    proc = run_scoop(tmp_path, BEHIND_A_LONG_TASK, prelude=True)
    assert proc.returncode == 0, explain(proc)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"short": [0.05] * 4, "long_done": False}


HELD_BEHIND_A_LONG_TASK = ASKING_AHEAD + """
    if __name__ == "__main__":
        ask_ahead()
        # Eight chunks are a deep queue: each worker gets four at once, and
        # one of them gets the long one first.
        print(json.dumps(list(futures.map_as_completed(
            nap, [3] + [0.05] * 7, chunksize=1))))
    """


def test_tasks_held_behind_a_long_task_go_to_a_free_worker(tmp_path):
    """A worker whose running task has run long gives back the tasks it
    holds but has not started: the other worker runs them, and every short
    task is done before the long one. Kept, three would wait the long
    task's 3 s."""
    proc = run_scoop(tmp_path, HELD_BEHIND_A_LONG_TASK, prelude=True)
    assert proc.returncode == 0, explain(proc)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [0.05] * 7 + [3]


def _welcomed(ctx, endpoint, keys, identity, role):
    """A DEALER of a fake client that said HELLO and got its WELCOME."""
    sock = transport.connect_dealer(ctx, endpoint, transport.client_keys(keys), identity)
    sock.send_multipart(protocol.encode(
        Msg.HELLO, role, identity.decode(), "here", os.getpid(), __version__,
        "%d.%d" % sys.version_info[:2]))
    assert sock.poll(10_000), f"no WELCOME for {role}"
    assert protocol.decode(sock.recv_multipart()).type == Msg.WELCOME
    return sock


def _tasks(sock, settle=0.3, kind=Msg.TASK):
    """Every task (or outcome, with ``kind`` RESULT) that reaches ``sock``
    until none has come for ``settle`` s, as one list per message."""
    batches = []
    while sock.poll(int(settle * 1000)):
        msg = protocol.decode(sock.recv_multipart())
        if msg.type == kind:
            batches.append(protocol.split_batch(msg))
    return batches


@contextlib.contextmanager
def _workers_and_origin(credit, workers=1):
    """A real broker, and fake clients: ``workers`` workers that each asked
    for ``credit`` tasks ahead (their last tasks were short), and an origin."""
    ctx = zmq.Context()
    socks = []
    try:
        with real_broker(size=workers) as (endpoint, keys):
            for i in range(workers):
                socks.append(_welcomed(ctx, endpoint, keys, b"w%d" % i, "worker"))
                socks[-1].send_multipart(protocol.encode(Msg.CREDIT, credit))
            origin = _welcomed(ctx, endpoint, keys, b"origin", "origin")
            socks.append(origin)
            time.sleep(0.2)  # the credits are in before any task
            yield socks[:workers], origin, (endpoint, keys)
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()


def _submit(origin, count, flags):
    origin.send_multipart(protocol.encode_batch(
        Msg.SUBMIT, [(tid, int(flags), [b"call"]) for tid in range(count)]))


def _finish(worker, batch):
    """The worker sends the outcome of the first task of ``batch``."""
    btid = batch[0][0]
    worker.send_multipart(protocol.encode_batch(
        Msg.RESULT, [(btid, int(Status.OK), [b"done"])]))
    return batch[1:]


def test_outcomes_that_arrive_together_leave_together():
    """Outcomes read by the broker in one go reach their submitter in few
    messages (every message costs each process on its way a wake-up), 64
    outcomes at most in one, as a client's batches."""
    count = 65  # all the tasks a worker may hold: one and MAX_PREFETCH ahead
    with _workers_and_origin(credit=64) as ([worker], origin, _):
        _submit(origin, count, Flags.CHUNK)
        batch = [entry for got in _tasks(worker) for entry in got]
        assert len(batch) == count
        broker, = [p for p in psutil.Process().children() if role_of(p) == "broker"]
        broker.suspend()  # the outcomes wait in its socket
        try:
            for btid, _, _ in batch:
                worker.send_multipart(protocol.encode_batch(
                    Msg.RESULT, [(btid, int(Status.OK), [b"done"])]))
            time.sleep(0.3)
        finally:
            broker.resume()
        outcomes = _tasks(origin, kind=Msg.RESULT)
        assert [tid for got in outcomes for tid, _, _ in got] == list(range(count))
        assert max(len(got) for got in outcomes) <= 64
        assert len(outcomes) < count // 4, [len(got) for got in outcomes]


def _task_at(workers):
    """(index, TASK) of the one worker in ``workers`` (index: socket) that
    is handed a task within a few seconds."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for i, sock in workers.items():
            if sock.poll(50):
                msg = protocol.decode(sock.recv_multipart())
                if msg.type == Msg.TASK:
                    assert not any(other.poll(300) for other in workers.values()), \
                        "the task went to two workers"
                    return i, msg
    raise AssertionError("no worker got the task")


def test_a_direct_task_is_the_brokers_until_the_origin_has_its_outcome():
    """A map chunk whose outcome goes straight to the origin (DIRECT) names
    the origin's tid in its TASK. Its worker says it sent the outcome
    (DELIVERED), but until the origin says it has it (RECEIVED), the broker
    keeps the task: its worker lost, it runs again elsewhere, since the
    outcome may have died with it, still queued. Once told, the broker
    forgets it: the next worker lost has nothing of it to re-run, and the
    origin hears nothing more of it."""
    with _workers_and_origin(credit=0, workers=3) as (socks, origin, (endpoint, keys)):
        workers = dict(enumerate(socks))
        ctx = zmq.Context()
        watcher = _welcomed(ctx, endpoint, keys, b"watch", "watcher")
        try:
            def deliver_and_lose(i, task):
                (btid, _, _), = protocol.split_batch(task)
                workers[i].send_multipart(protocol.encode_batch(
                    Msg.RESULT, [(btid, int(Status.DELIVERED), [])]))
                time.sleep(0.3)
                watcher.send_multipart(protocol.encode(Msg.GONE, "w%d" % i, "killed by the test"))
                workers.pop(i).close(linger=0)

            _submit(origin, 1, Flags.CHUNK | Flags.DIRECT)  # the origin's tid 0
            first, task = _task_at(workers)
            assert task.fields.reply_to == [0]
            assert [flags for _, flags, _ in protocol.split_batch(task)] == [
                int(Flags.CHUNK | Flags.DIRECT)]
            deliver_and_lose(first, task)
            second, task = _task_at(workers)  # run again elsewhere
            assert task.fields.reply_to == [0]
            origin.send_multipart(protocol.encode(Msg.RECEIVED, [0]))
            time.sleep(0.3)
            deliver_and_lose(second, task)
            last, = workers.values()
            assert not _tasks(last), "a task the origin had was run again"
            assert not _tasks(origin, kind=Msg.RESULT)
        finally:
            watcher.close(linger=0)
            ctx.term()


@contextlib.contextmanager
def _origin_client(endpoint, keys, size):
    """A real origin's client in this process, as the runtime of its futures
    API; a run that ends under it is recorded instead of ending pytest."""
    from scoop_rt import origin, runtime

    client = origin.make_client(ClientBoot(
        config=Config(), endpoint=endpoint, keys=transport.client_keys(keys),
        name="origin", size=size, local=True))
    client.ended = None

    def ended(reason):
        client.ended = reason

    client.leave = client.on_run_over = ended
    before = runtime.current
    try:
        client.start()
        runtime.current = client
        yield client
    finally:
        runtime.current = before
        client.close()


def test_a_worker_gives_back_what_it_has_not_started():
    """Tasks a worker returns (its running task has run long) go back to
    the front of the queue, to a worker with room for them."""
    with _workers_and_origin(credit=8, workers=2) as ([slow, other], origin, _):
        _submit(origin, 8, Flags.CHUNK)
        [held], [others] = _tasks(slow), _tasks(other)
        assert len(held) == len(others) == 4
        slow.send_multipart(protocol.encode(Msg.CREDIT, 0))
        returned = [btid for btid, _, _ in held[1:]]
        slow.send_multipart(protocol.encode(Msg.RETURN, returned))
        for btid, _, _ in others:  # the other worker makes room
            other.send_multipart(protocol.encode_batch(
                Msg.RESULT, [(btid, int(Status.OK), [b"done"])]))
        again = []
        while batches := _tasks(other):  # one ahead of the one it runs: a short queue
            for btid, _, _ in (entry for batch in batches for entry in batch):
                again.append(btid)
                other.send_multipart(protocol.encode_batch(
                    Msg.RESULT, [(btid, int(Status.OK), [b"done"])]))
        assert again == returned
        assert not _tasks(slow)


def test_a_returned_task_whose_submitter_is_gone_frees_its_slot():
    """A task given back after the broker dropped it (its submitter, a
    worker, died) is gone for good, and no longer takes a slot of the worker
    that gave it back: that worker gets the next task."""
    ctx = zmq.Context()
    try:
        with _workers_and_origin(credit=8, workers=2) as ([worker, submitter], origin,
                                                          (endpoint, keys)):
            submitter.send_multipart(protocol.encode(Msg.CREDIT, 0))
            time.sleep(0.2)
            submitter.send_multipart(protocol.encode_batch(
                Msg.SUBMIT, [(tid, int(Flags.CHUNK), [b"call"]) for tid in range(4)]))
            [held] = _tasks(worker)
            assert len(held) == 2  # a short queue: one and one ahead
            watcher = _welcomed(ctx, endpoint, keys, b"watcher", "watcher")
            try:
                watcher.send_multipart(protocol.encode(Msg.GONE, "w1", "killed"))
                time.sleep(0.3)  # the broker dropped the submitter's tasks
                worker.send_multipart(protocol.encode(Msg.CREDIT, 0))
                worker.send_multipart(protocol.encode(Msg.RETURN, [held[1][0]]))
                _finish(worker, held)
                _submit(origin, 1, Flags.NONE)
                assert [len(batch) for batch in _tasks(worker)] == [1]
            finally:
                watcher.close(linger=0)
    finally:
        ctx.term()


def test_a_maps_chunks_leave_the_origin_together(monkeypatch):
    """A real origin's map of eight chunks reaches the broker as one
    message, so two workers each get their four at once; a first chunk sent
    alone would leave the broker a short queue to hand out one by one."""
    from scoop_rt import futures, tuning

    # Chunks that took long to pickle would leave early; on a loaded machine
    # even these might, and this test is about cheap ones.
    monkeypatch.setattr(tuning, "PICKLING_WAIT", 10.0)
    with _workers_and_origin(credit=8, workers=2) as (workers, _, (endpoint, keys)):
        with _origin_client(endpoint, keys, size=2):
            futures.map(abs, range(8000))  # work starts at the call
            got = [[len(batch) for batch in _tasks(worker)] for worker in workers]
        assert got == [[4], [4]]


def test_each_chunk_outcome_leaves_the_worker_at_once():
    """A real worker given a batch of calls and a map's chunks gathers the
    calls' outcomes (fewer messages) but sends each chunk's values as soon
    as it has them: the origin takes a map's values in order, and can start
    on the first."""
    from scoop_rt import serialization

    keys = transport.make_keys()
    ctx = zmq.Context()
    listener = transport.bind_router(ctx, "127.0.0.1", keys)
    boot = ClientBoot(config=Config(), endpoint=listener.endpoint, size=1, name="w0",
                      keys=transport.client_keys(keys))
    worker = subprocess.Popen([sys.executable, "-m", "scoop_rt.worker"],
                              stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
    worker.stdin.write(boot.to_json().encode())
    worker.stdin.close()  # the worker reads its boot to the end
    sock = listener.sock
    try:
        # Its heartbeats come on a socket of their own, so the first may
        # arrive before its HELLO.
        msg_type = Msg.PING
        while msg_type == Msg.PING:
            assert sock.poll(30_000), "the worker never said HELLO"
            identity, *frames = sock.recv_multipart()
            msg_type = protocol.decode(frames).type
        assert msg_type == Msg.HELLO
        sock.send_multipart([identity, *protocol.encode(Msg.WELCOME, 1)])
        calls = list(range(8))
        chunks = list(range(100, 108))
        call = serialization.dump_call(abs, (-1,), {})
        # Chunks of a fraction of a millisecond each: less than a worker
        # waits to gather outcomes that are not a map's.
        chunk = serialization.dump_chunk(time.sleep, [0.0002])
        sock.send_multipart([identity, *protocol.encode_batch(
            Msg.TASK, [(btid, 0, call) for btid in calls]
            + [(btid, int(Flags.CHUNK), chunk) for btid in chunks],
            [-1] * (len(calls) + len(chunks)))])
        sent = {btid: (0, call) for btid in calls}
        sent.update({btid: (int(Flags.CHUNK), chunk) for btid in chunks})
        messages = []
        deadline = time.monotonic() + 30
        while sum(map(len, messages)) < 16 and time.monotonic() < deadline:
            if sock.poll(1000):
                _, *frames = sock.recv_multipart()
                msg = protocol.decode(frames)
                if msg.type == Msg.RESULT:
                    messages.append([btid for btid, _, _ in protocol.split_batch(msg)])
                elif msg.type == Msg.RETURN:  # a task ran past 10 ms: hand them back
                    sock.send_multipart([identity, *protocol.encode_batch(
                        Msg.TASK, [(btid, *sent[btid]) for btid in msg.fields.tids],
                        [-1] * len(msg.fields.tids))])
        assert sorted(sum(messages, [])) == calls + chunks, messages
        assert all(len(set(got) & set(chunks)) == 1 for got in messages if set(got) & set(chunks)), messages
        assert max(len(set(got) & set(calls)) for got in messages) > 1, messages
    finally:
        worker.kill()
        worker.wait(timeout=30)
        listener.close(0)
        ctx.term()


@pytest.mark.parametrize("wait, sizes", [(10.0, [8]), (0.0, [1] * 8)])
def test_chunks_slow_to_pickle_leave_as_they_are_pickled(monkeypatch, wait, sizes):
    """A map's chunks leave together, unless pickling them takes longer
    than PICKLING_WAIT (large arrays): then each leaves as soon as it is
    pickled, so workers start on it while the rest are still pickled. The
    origin's SUBMITs are counted as they go; all chunks reach the workers."""
    from scoop_rt import futures, tuning

    monkeypatch.setattr(tuning, "PICKLING_WAIT", wait)
    sent = []
    real_send = transport.send_message

    def send(sock, frames):
        msg = protocol.decode(frames)
        if msg.type == Msg.SUBMIT:
            sent.append(len(protocol.split_batch(msg)))
        real_send(sock, frames)

    monkeypatch.setattr(transport, "send_message", send)
    with _workers_and_origin(credit=8, workers=2) as (workers, _, (endpoint, keys)):
        with _origin_client(endpoint, keys, size=2):
            futures.map(abs, range(8000))  # work starts at the call
            got = [len(batch) for worker in workers for batch in _tasks(worker)]
        assert sent == sizes
        assert 0 < sum(got) <= 8
