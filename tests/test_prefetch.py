"""Prefetch, when asked for: short tasks still give every result once, in order."""

import json
import os
import subprocess
import sys
import textwrap


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
