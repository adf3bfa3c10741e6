"""The bench's own virtual environment, for peers that must not share the project's.

SCOOP 0.7.2 is the reference this project is measured against, but it has no place
in the environment scoop_rt is developed in, so it lives in bench/.venv. The venv is
made on first use with the Python that runs the harness and reused afterwards; pip
is asked each time to make sure the pinned packages are there (a no-op when they are).
"""

import functools
import subprocess
import sys
from pathlib import Path

VENV_DIR = Path(__file__).resolve().parent / ".venv"


def python() -> Path:
    """The venv's interpreter."""
    return VENV_DIR / "bin" / "python"


@functools.lru_cache(maxsize=None)
def ensure(*requirements: str) -> Path:
    """Create the venv if needed, install `requirements` into it, return its python.

    Raises RuntimeError with pip's or venv's own message when that fails.
    """
    if not python().exists():
        _run([sys.executable, "-m", "venv", str(VENV_DIR)],
             f"could not create the bench venv in {VENV_DIR}")
    if requirements:
        _run([str(python()), "-m", "pip", "install", "--quiet",
              "--disable-pip-version-check", *requirements],
             f"could not install {' '.join(requirements)} into {VENV_DIR}; "
             f"delete that folder to start it afresh")
    return python()


def _run(argv, what):
    """Run a set-up command; on failure raise with its output's last lines."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-10:])
        raise RuntimeError(f"{what}:\n{tail}")
