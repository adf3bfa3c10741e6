"""Estimate pi by throwing darts at a square, the darts thrown by the workers.

    python -m scoop_rt -n 4 examples/pi.py [darts per task] [tasks]
"""

import random
import sys

from scoop_rt import futures


def hits(darts: int) -> int:
    """How many of ``darts`` random points fall inside the unit circle."""
    rng = random.Random()
    return sum(rng.random() ** 2 + rng.random() ** 2 <= 1.0 for _ in range(darts))


if __name__ == "__main__":
    darts = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    inside = sum(futures.map(hits, [darts] * tasks))
    print(f"pi is about {4.0 * inside / (darts * tasks):.5f} "
          f"({darts * tasks:,} darts over {tasks} tasks)")
