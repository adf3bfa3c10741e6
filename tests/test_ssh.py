"""Runs over SSH against real hosts: network namespaces with their own sshd,
made by the ``ssh_hosts`` fixture (tests/support/sshhosts.py) and torn down after."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter

import psutil
import pytest

from support import role_of


RUN_TIMEOUT = 90

# Each task reports where it ran; tasks sleep so that every worker takes one
# (the broker gives a task to the worker with the most free slots).
WHERE = textwrap.dedent("""\
    import json, os, socket, sys, time
    import scoop_rt
    from scoop_rt import futures

    def where(delay):
        time.sleep(delay)
        return [socket.gethostname(), scoop_rt.worker,
                os.environ.get("SRT_PROLOG", ""), os.getcwd()]

    if __name__ == "__main__":
        seen = [f.result() for f in [futures.submit(where, 1.0)
                                     for _ in range(scoop_rt.SIZE)]]
        seen += list(futures.map(where, [0.0] * 50))
        print(json.dumps({"size": scoop_rt.SIZE, "seen": seen}))
    """)


def write_script(tmp_path, source=WHERE):
    path = tmp_path / "where.py"
    path.write_text(source)
    return str(path)


def launch(hs, *args, env=None, timeout=RUN_TIMEOUT, home=None):
    return subprocess.run([sys.executable, "-m", "scoop_rt", *map(str, args)],
                          env=env or hs.env(home), capture_output=True, text=True,
                          timeout=timeout)


def report(proc):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def workers_per_host(result):
    """{host: number of distinct workers that ran a task there}."""
    return Counter(host for host, _ in {(h, w) for h, w, *_ in result["seen"]})


def cmdlines(hs, host):
    """The names and command lines of what runs on ``host``, sshd included."""
    lines = []
    for pid in hs.pids(host):
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                lines.append(f"{proc.name()}: {' '.join(proc.cmdline())}")
        except psutil.Error:
            pass
    return lines


def nothing_left(hs, timeout=10.0):
    """No process but sshd on any host; returns what is left after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = {}
        for host in hs.hosts:
            extra = [line for line in cmdlines(hs, host) if "sshd" not in line]
            if extra:
                left[host.alias] = extra
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def hostfile(tmp_path, lines):
    path = tmp_path / "hosts"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_hostfile_run_uses_every_host(ssh_hosts, tmp_path):
    h1, h2 = ssh_hosts.hosts[:2]
    hosts = hostfile(tmp_path, ["# two hosts", f"{h1.alias} 2", f"{h2.alias} slots=1"])
    result = report(launch(ssh_hosts, "--hostfile", hosts, write_script(tmp_path)))
    assert result["size"] == 3
    assert workers_per_host(result) == {h1.alias: 2, h2.alias: 1}
    assert not nothing_left(ssh_hosts)


def test_hosts_option_and_n_distribution(ssh_hosts, tmp_path):
    h1, h2 = ssh_hosts.hosts[:2]
    script = write_script(tmp_path)
    result = report(launch(ssh_hosts, "--hosts", h1.alias, h1.alias, h2.alias, "--", script))
    assert workers_per_host(result) == {h1.alias: 2, h2.alias: 1}
    # -n above the slots: the extra go round-robin over the hosts.
    result = report(launch(ssh_hosts, "-n", 5, "--hosts", f"{h1.alias},{h2.alias}", script))
    assert workers_per_host(result) == {h1.alias: 3, h2.alias: 2}
    # -n below the slots: hosts are filled in order.
    hosts = hostfile(tmp_path, [f"{h1.alias} 2", f"{h2.alias} 2"])
    result = report(launch(ssh_hosts, "-n", 2, "--hostfile", hosts, script))
    assert workers_per_host(result) == {h1.alias: 2}
    assert not nothing_left(ssh_hosts)


def test_host_without_count_gets_its_cores(ssh_hosts, tmp_path):
    h1 = ssh_hosts.hosts[0]
    hosts = hostfile(tmp_path, [h1.alias])
    result = report(launch(ssh_hosts, "--hostfile", hosts, write_script(tmp_path)))
    cores = len(os.sched_getaffinity(0))  # the hosts share this machine's cores
    assert result["size"] == cores
    assert workers_per_host(result) == {h1.alias: cores}


@pytest.mark.parametrize("scheduler", ["SLURM", "PBS", "SGE", "LSF"])
def test_scheduler_allocation_needs_no_hostfile(ssh_hosts, tmp_path, scheduler):
    h1, h2 = ssh_hosts.hosts[:2]
    alias_prefix = h1.alias[:-1]  # "srt-h"
    files = {"PBS": f"{h1.alias}\n{h1.alias}\n{h2.alias}\n",
             "SGE": f"{h1.alias} 2 all.q UNDEFINED\n{h2.alias} 1 all.q UNDEFINED\n"}
    env = {"SLURM": {"SLURM_JOB_NODELIST": f"{alias_prefix}[1-2]",
                     "SLURM_TASKS_PER_NODE": "2,1", "SLURM_NTASKS": "3"},
           "LSF": {"LSB_MCPU_HOSTS": f"{h1.alias} 2 {h2.alias} 1"}}.get(scheduler, {})
    if scheduler in files:
        path = tmp_path / "allocation"
        path.write_text(files[scheduler])
        env = {{"PBS": "PBS_NODEFILE", "SGE": "PE_HOSTFILE"}[scheduler]: str(path)}
    result = report(launch(ssh_hosts, write_script(tmp_path), env=ssh_hosts.env(**env)))
    assert workers_per_host(result) == {h1.alias: 2, h2.alias: 1}


def test_prolog_path_and_pythonpath(ssh_hosts, tmp_path):
    h1 = ssh_hosts.hosts[0]
    prolog = tmp_path / "prolog.sh"
    prolog.write_text("export SRT_PROLOG=sourced\n")
    folder = tmp_path / "work"
    folder.mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "helper_mod.py").write_text("VALUE = 'from pythonpath'\n")
    script = write_script(tmp_path, WHERE.replace(
        "os.getcwd()]", "os.getcwd(), __import__('helper_mod').VALUE]"))
    proc = launch(ssh_hosts, "--hosts", h1.alias, "--prolog", prolog, "--path", folder,
                  "--pythonpath", tmp_path / "lib", "--", script)
    seen = report(proc)["seen"]
    assert {tuple(s[2:]) for s in seen} == {("sourced", str(folder), "from pythonpath")}


def test_tunnel_carries_connections_over_ssh(ssh_hosts, tmp_path):
    h1, h2 = ssh_hosts.hosts[:2]
    result = report(launch(ssh_hosts, "--tunnel", "--hosts", h1.alias, h2.alias, "--",
                           write_script(tmp_path)))
    assert workers_per_host(result) == {h1.alias: 1, h2.alias: 1}
    assert not nothing_left(ssh_hosts)


def test_unreachable_host_is_named_within_the_timeout(ssh_hosts, tmp_path):
    h1 = ssh_hosts.hosts[0]
    bad = ssh_hosts.unreachable.alias
    start = time.monotonic()
    proc = launch(ssh_hosts, "--ssh-timeout", 2, "--hosts", h1.alias, bad, "--",
                  write_script(tmp_path))
    assert time.monotonic() - start < 10
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if bad in line]
    assert len(errors) == 1 and "no answer" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    # ... or the run goes on without it, when asked.
    proc = launch(ssh_hosts, "--ssh-timeout", 2, "--ignore-failed-hosts", "--hosts",
                  h1.alias, bad, "--", write_script(tmp_path))
    assert workers_per_host(report(proc)) == {h1.alias: 1}
    assert "warning" in proc.stderr and bad in proc.stderr


def test_unknown_host_key_is_refused_unless_trusted(ssh_hosts, tmp_path):
    h1, h2 = ssh_hosts.hosts[:2]
    home = ssh_hosts.make_home(tmp_path / "home", exclude=[h2])
    script = write_script(tmp_path)
    proc = launch(ssh_hosts, "--hosts", h1.alias, h2.alias, "--", script, home=home)
    assert proc.returncode == 1
    assert f"host {h2.alias}: its host key is unknown" in proc.stderr
    assert h1.alias not in proc.stderr
    proc = launch(ssh_hosts, "--accept-unknown-hosts", "--hosts", h1.alias, h2.alias,
                  "--", script, home=home)
    assert workers_per_host(report(proc)) == {h1.alias: 1, h2.alias: 1}


def test_changed_host_key_is_named(ssh_hosts, tmp_path):
    h1 = ssh_hosts.hosts[0]
    home = ssh_hosts.make_home(tmp_path / "home", wrong_key=[h1])
    proc = launch(ssh_hosts, "--hosts", h1.alias, "--", write_script(tmp_path), home=home)
    assert proc.returncode == 1
    assert f"host {h1.alias}: its host key has changed" in proc.stderr


def test_missing_interpreter_and_folder_are_named(ssh_hosts, tmp_path):
    h1 = ssh_hosts.hosts[0]
    script = write_script(tmp_path)
    proc = launch(ssh_hosts, "--python-interpreter", "/no/such/python", "--hosts",
                  h1.alias, "--", script)
    assert proc.returncode == 1
    assert f"host {h1.alias}: no Python interpreter at /no/such/python" in proc.stderr
    proc = launch(ssh_hosts, "--path", "/no/such/folder", "--hosts", h1.alias, "--", script)
    assert proc.returncode == 1
    assert f"host {h1.alias}: the folder /no/such/folder does not exist" in proc.stderr


def test_check_prints_a_table_and_fails_on_a_bad_host(ssh_hosts, tmp_path):
    h1, h2 = ssh_hosts.hosts[:2]
    script = write_script(tmp_path)
    proc = launch(ssh_hosts, "--check", "--hosts", h1.alias, h2.alias, "--", script)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()}
    python = "%d.%d.%d" % sys.version_info[:3]
    for host in (h1, h2):
        assert rows[host.alias][:2] == ["ok", python]
        assert rows[host.alias][3] == "found"
    bad = ssh_hosts.unreachable.alias
    proc = launch(ssh_hosts, "--check", "--ssh-timeout", 2, "--hosts", h1.alias, bad,
                  "--", script)
    assert proc.returncode == 1
    assert f"{bad}  FAILED" in proc.stdout.replace("   ", "  ")


@pytest.mark.parametrize("victim", ["launcher", "broker", "origin"])
def test_killing_any_part_leaves_nothing_on_any_host(ssh_hosts, tmp_path, victim):
    h1, h2 = ssh_hosts.hosts[:2]
    script = tmp_path / "long.py"
    script.write_text(textwrap.dedent("""\
        import time
        from scoop_rt import futures
        if __name__ == "__main__":
            list(futures.map(time.sleep, [60] * 4))
        """))
    env = ssh_hosts.env(SCOOP_RT_HEARTBEAT_INTERVAL="0.5", SCOOP_RT_HEARTBEAT_MISSES="4")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "scoop_rt", "--hosts", h1.alias, h1.alias, h2.alias,
         h2.alias, "--", str(script)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                any("scoop_rt.worker" in line for line in cmdlines(ssh_hosts, h))
                for h in (h1, h2)):
            time.sleep(0.1)
        local = psutil.Process(launcher.pid).children(recursive=True)
        if victim == "launcher":
            target = psutil.Process(launcher.pid)
        else:
            target = next(p for p in local if role_of(p) == victim)
        target.kill()
        assert not nothing_left(ssh_hosts, timeout=30)
        gone, alive = psutil.wait_procs([psutil.Process(launcher.pid), *local], timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait(timeout=10)


def test_refused_key_is_named(ssh_hosts, tmp_path):
    h1 = ssh_hosts.hosts[0]
    home = ssh_hosts.make_home(tmp_path / "home")
    key = home / ".ssh" / "id_ed25519"
    key.unlink()
    (home / ".ssh" / "id_ed25519.pub").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True, timeout=30)  # a key the hosts do not know
    proc = launch(ssh_hosts, "--hosts", h1.alias, "--", write_script(tmp_path), home=home)
    assert proc.returncode == 1
    assert f"host {h1.alias}: ssh refused the key for root" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_broker_listens_on_the_chosen_interface_only(ssh_hosts, tmp_path):
    h1 = ssh_hosts.hosts[0]
    script = write_script(tmp_path, WHERE.replace(
        'print(json.dumps({"size"', 'print(json.dumps({"endpoint": scoop_rt.BROKER.endpoint, "size"'))
    proc = launch(ssh_hosts, "--broker-hostname", ssh_hosts.bridge_ip, "--hosts", h1.alias,
                  "--", script)
    result = report(proc)
    assert workers_per_host(result) == {h1.alias: 1}
    assert result["endpoint"].startswith(f"tcp://{ssh_hosts.bridge_ip}:")


def test_mismatched_scoop_rt_on_a_host_is_refused_naming_both(ssh_hosts, tmp_path):
    import scoop_rt
    h1 = ssh_hosts.hosts[0]
    # Another environment whose scoop_rt says it is 0.0.1.
    other = tmp_path / "other-venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv",
                    "--without-pip", str(other)], check=True, timeout=60)
    site = next(other.glob("lib/python*/site-packages"))
    shutil.copytree(os.path.dirname(scoop_rt.__file__), site / "scoop_rt")
    init = site / "scoop_rt" / "__init__.py"
    init.write_text(init.read_text().replace(
        f'__version__ = "{scoop_rt.__version__}"', '__version__ = "0.0.1"'))
    # (From a folder without a scoop_rt of its own, as users run.)
    proc = launch(ssh_hosts, "--python-interpreter", other / "bin" / "python",
                  "--path", tmp_path, "--hosts", h1.alias, "--", write_script(tmp_path))
    assert proc.returncode == 1
    assert f"host {h1.alias}: it runs scoop_rt 0.0.1" in proc.stderr
    assert f"this run uses scoop_rt {scoop_rt.__version__}" in proc.stderr


def test_a_host_without_dependencies_is_named(ssh_hosts, tmp_path):
    import scoop_rt
    h1 = ssh_hosts.hosts[0]
    other = tmp_path / "bare-venv"  # scoop_rt, but not pyzmq and the rest
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv",
                    "--without-pip", str(other)], check=True, timeout=60)
    site = next(other.glob("lib/python*/site-packages"))
    shutil.copytree(os.path.dirname(scoop_rt.__file__), site / "scoop_rt")
    proc = launch(ssh_hosts, "--python-interpreter", other / "bin" / "python",
                  "--path", tmp_path, "--hosts", h1.alias, "--", write_script(tmp_path))
    assert proc.returncode == 1
    assert f"host {h1.alias}: scoop_rt's dependencies are missing" in proc.stderr
    assert "No module named" in proc.stderr


def test_workers_that_die_at_start_end_the_run(ssh_hosts, tmp_path):
    """Workers that die before joining are named, and the script's futures
    fail instead of waiting forever."""
    h1, h2 = ssh_hosts.hosts[:2]
    script = tmp_path / "s.py"
    script.write_text(textwrap.dedent("""\
        import os
        import scoop_rt
        from scoop_rt import futures
        if not scoop_rt.IS_ORIGIN:
            os._exit(3)  # every worker dies while importing the script
        if __name__ == "__main__":
            try:
                futures.submit(abs, -1).result(timeout=60)
            except futures.NoWorkersError as exc:
                print("failed:", exc)
        """))
    proc = launch(ssh_hosts, "--hosts", h1.alias, h2.alias, "--", script)
    assert proc.returncode == 0, proc.stderr
    assert "failed: no workers are left" in proc.stdout
    assert proc.stderr.count("ended before it joined the run: exited with code 3") == 2


def test_a_lost_host_s_tasks_finish_elsewhere(ssh_hosts, tmp_path):
    h1, h2 = ssh_hosts.hosts[:2]
    script = tmp_path / "lost.py"
    script.write_text(textwrap.dedent("""\
        import socket, time
        from scoop_rt import futures
        def task(i):
            time.sleep(0.05)
            return i, socket.gethostname()
        if __name__ == "__main__":
            while len({h for _, h in futures.map(task, range(4), chunksize=1)}) < 2:
                pass  # until both hosts take work
            print("started", flush=True)
            out = list(futures.map(task, range(100), chunksize=1))
            print(sorted(i for i, _ in out) == list(range(100)), flush=True)
        """))
    env = ssh_hosts.env(SCOOP_RT_HEARTBEAT_INTERVAL="0.3", SCOOP_RT_HEARTBEAT_MISSES="3")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "scoop_rt", "--hosts", h1.alias, h2.alias, "--", str(script)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout.readline().strip() == "started"
        time.sleep(0.5)
        ssh_hosts.set_link(h2, up=False)  # h2 vanishes from the network
        out, err = launcher.communicate(timeout=RUN_TIMEOUT)
    finally:
        ssh_hosts.set_link(h2, up=True)
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert launcher.returncode == 0, err
    assert out.strip() == "True"
    assert "w1 (host srt-h2" in err and "lost: silent" in err
    ssh_hosts.kill_processes(h2)  # what the cut left there cannot hear the end
