"""A long map, watching the memory of the origin and the broker.

    python -m scoop_rt -n 2 bench/workloads/memory_map.py [tasks]

Samples the resident memory (RSS) of this process (the origin) and of the
run's broker every 100,000 results, and prints them as one JSON line. The
input is a generator, so nothing but the map's bounded window is held.
"""

import json
import os
import sys

import psutil

from scoop_rt import futures


def noop(x):
    return x


def broker_process():
    launcher = psutil.Process(os.getppid())
    for child in launcher.children():
        # Forked from the launcher, the broker has its role in its name.
        if "scoop_rt.broker" in f"{child.name()} {' '.join(child.cmdline())}":
            return child
    raise SystemExit("memory_map: no broker found beside this origin")


if __name__ == "__main__":
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    me, broker = psutil.Process(), broker_process()
    samples = []
    for i, value in enumerate(futures.map(noop, (x for x in range(total))), 1):
        if i % 100_000 == 0 or i == total:
            samples.append({"tasks": i, "origin_mb": me.memory_info().rss / 2**20,
                            "broker_mb": broker.memory_info().rss / 2**20})
    first = next((s for s in samples if s["tasks"] >= 100_000), samples[0])
    last = samples[-1]
    print(json.dumps({"samples": samples,
                      "origin_growth_mb": last["origin_mb"] - first["origin_mb"],
                      "broker_growth_mb": last["broker_mb"] - first["broker_mb"]}))
