"""Helpers for the tests: ``from support import run_scoop, explain``.

``support.runs`` runs scoop_rt as a user does and finds what a run left
behind; ``support.sshhosts`` makes real SSH hosts (network namespaces, each
with its own sshd) for the SSH launcher's tests. The fixtures built on them
are in ``tests/conftest.py``.
"""

from .runs import (
    PRELUDE,
    LiveRun,
    explain,
    is_alive,
    real_broker,
    role_of,
    run_argv,
    run_python,
    run_scoop,
    scoop_argv,
    scoop_env,
    write_script,
)

__all__ = [
    "PRELUDE", "LiveRun", "explain", "is_alive", "real_broker", "role_of", "run_argv",
    "run_python", "run_scoop", "scoop_argv", "scoop_env", "write_script",
]
