"""Hello world: start the runtime, map one trivial task, print its result, exit.

The harness times the whole command from outside, so this measures what a user
waits for between pressing Enter and seeing the first result (and the exit).
"""

import benchkit


def hello(x):
    """The trivial task."""
    return x + 1


if __name__ == "__main__":
    with benchkit.executor() as pool:
        first = pool.map(hello, [41])[0]
    benchkit.report(first_result=first)
