"""What tasks print on workers reaches the launcher's stdout in whole lines;
the runtime's own messages and what tasks write on stderr go to stderr."""

import re

import pytest

from support import explain, run_scoop

WIDTH = 2000
TAGS = "abcdef"
LINES_PER_TASK = 300


def body(tag, i):
    return (f"{tag}{i}." * WIDTH)[:WIDTH]


PRINTERS = f"""
    import sys, threading, time
    from scoop_rt import futures

    WIDTH = {WIDTH}

    def body(tag, i):
        return (f"{{tag}}{{i}}." * WIDTH)[:WIDTH]

    def shout(tag, count):
        sys.stderr.write(f"stderr of task {{tag}}\\n")
        for i in range(count):
            text = f"<{{tag}}:{{i}}:{{body(tag, i)}}>"
            if i % 3 == 0:
                print(text)
            else:
                # In pieces, some sent on their own, then the newline.
                for k in range(0, len(text), 250):
                    sys.stdout.write(text[k:k + 250])
                    if i % 3 == 1:
                        sys.stdout.flush()
                sys.stdout.write("\\n")
        return count

    def origin_prints(stop):
        i = 0
        while not stop.is_set():
            print(f"<origin:{{i}}:{{body('origin', i)}}>", flush=True)
            i += 1
            time.sleep(0)

    if __name__ == "__main__":
        stop = threading.Event()
        talker = threading.Thread(target=origin_prints, args=(stop,))
        if sys.argv[1] == "with-origin":
            talker.start()
        tags = list({TAGS!r})
        results = list(futures.map(shout, tags, [{LINES_PER_TASK}] * len(tags)))
        stop.set()
        if talker.is_alive():
            talker.join()
        # The origin's own threads printing at once may tear each other's lines,
        # as in any Python program: only the talker prints while tasks do.
        print("results", results, flush=True)
        print("DONE")
    """

LINE = re.compile(r"<(\w+):(\d+):([^<>]*)>")


def check_lines(stdout):
    lines = stdout.split("\n")
    assert lines[-1] == "", "stdout does not end with a newline"
    seen = set()
    torn = []
    for line in lines[:-1]:
        if line == "DONE" or line.startswith("results "):
            continue
        m = LINE.fullmatch(line)
        if not m or m.group(3) != body(m.group(1), int(m.group(2))):
            torn.append(line[:120] + ("..." if len(line) > 120 else ""))
            continue
        if m.group(1) != "origin":
            assert (m.group(1), m.group(2)) not in seen, f"line printed twice: {line[:40]}"
            seen.add((m.group(1), m.group(2)))
    assert not torn, f"{len(torn)} torn line(s), e.g.:\n" + "\n".join(torn[:5])
    assert seen == {(t, str(i)) for t in TAGS for i in range(LINES_PER_TASK)}, \
        f"{len(TAGS) * LINES_PER_TASK - len(seen)} task line(s) missing"
    assert f"results {[LINES_PER_TASK] * len(TAGS)}" in lines
    assert lines[-2] == "DONE"


# Many images set PYTHONUNBUFFERED: then every print() is several writes.
BUFFERING = pytest.mark.parametrize("env", [{}, {"PYTHONUNBUFFERED": "1"}],
                                    ids=["buffered", "unbuffered"])


@BUFFERING
def test_task_output_comes_in_whole_lines(tmp_path, env):
    proc = run_scoop(tmp_path, PRINTERS, "workers-only", n=3, env=env)
    assert proc.returncode == 0, explain(proc)
    check_lines(proc.stdout)
    for tag in TAGS:
        assert f"stderr of task {tag}\n" in proc.stderr
    assert "stderr of task" not in proc.stdout
    assert "<" not in proc.stderr, "task stdout reached stderr"


@BUFFERING
def test_task_lines_stay_whole_while_the_origin_prints(tmp_path, env):
    proc = run_scoop(tmp_path, PRINTERS, "with-origin", n=3, env=env)
    assert proc.returncode == 0, explain(proc)
    check_lines(proc.stdout)
    assert "<origin:0:" in proc.stdout
