"""The bench's own virtual environment, for peers that must not share the project's.

SCOOP 0.7.2, loky, mpi4py, dask.distributed and Ray are what this project is measured
against, but they have no place in the environment scoop_rt is developed in, so they
live in bench/.venv. The venv is made on first use with the Python that runs the
harness and reused afterwards; BASE (numpy, for the array workload) goes in first,
and if it cannot, the peers still run and that workload says numpy is missing.
Each peer then asks for its own pinned packages, so that one that cannot be
installed leaves the others usable; what is already there at the pinned version is
not handed to pip again (a no-op pip costs a second or two per peer).

Every step is timed: SETUPS holds, per step, how long it took, whether pip ran and
its error, so that the results can say what installing each peer cost.
"""

import functools
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

VENV_DIR = Path(__file__).resolve().parent / ".venv"
PIP_TIMEOUT_S = 900

#: What every peer in the venv gets, before its own packages.
BASE = ("numpy==2.4.6",)

#: step -> {"seconds", "pip_ran", "error", "shared"}, in the order they ran. The
#: steps are "venv", " ".join(BASE) (both shared by every peer in the venv) and
#: " ".join(requirements) of each ensure() call.
SETUPS: Dict[str, Dict[str, object]] = {}

_CHECK = """\
import importlib.metadata as m, sys
for spec in sys.argv[1:]:
    name, _, version = spec.partition("==")
    try:
        if m.version(name.split("[")[0]) != version:
            sys.exit(1)
    except m.PackageNotFoundError:
        sys.exit(1)
"""


def python() -> Path:
    """The venv's interpreter."""
    return VENV_DIR / "bin" / "python"


@functools.lru_cache(maxsize=None)
def ensure(*requirements: str) -> Path:
    """Create the venv if needed, install `requirements` (name==version) into it,
    return its python.

    Raises RuntimeError with pip's or venv's own message when that fails.
    """
    _base()
    _step(" ".join(requirements), requirements)
    return python()


@functools.lru_cache(maxsize=None)
def _base() -> None:
    """The venv itself, then BASE in it; a failure of BASE is recorded, not raised."""
    if not python().exists():
        _step("venv", (), create=True)
    try:
        _step(" ".join(BASE), BASE, shared=True)
    except RuntimeError:
        pass   # recorded in SETUPS; the array workload reports numpy missing


def _step(key, requirements, create=False, shared=False) -> None:
    """Create the venv or pip-install `requirements`; time it into SETUPS[key]."""
    start = time.perf_counter()
    pip_ran, error = False, None
    try:
        if create:
            _run([sys.executable, "-m", "venv", str(VENV_DIR)],
                 f"could not create the bench venv in {VENV_DIR}")
        elif requirements and not _satisfied(requirements):
            pip_ran = True
            _run([str(python()), "-m", "pip", "install", "--quiet",
                  "--disable-pip-version-check", *requirements],
                 f"pip install {' '.join(requirements)} into {VENV_DIR} failed")
    except RuntimeError as failure:
        error = str(failure)
        raise
    finally:
        SETUPS[key] = {"seconds": time.perf_counter() - start, "pip_ran": pip_ran,
                       "error": error, "shared": shared or create}


def _satisfied(requirements) -> bool:
    """Whether every name==version is installed in the venv at that version."""
    pinned = [spec for spec in requirements if "==" in spec]
    if len(pinned) != len(requirements):
        return False
    try:
        done = subprocess.run([str(python()), "-c", _CHECK, *pinned],
                              capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _run(argv: List[str], what: str) -> None:
    """Run a set-up command; on failure raise with its output's last lines."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True,
                              timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what}: no answer after {PIP_TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).splitlines()
        # pip's warnings (about its configuration, say) can bury the one error.
        lines = [line for line in lines if not line.startswith("WARNING:")] or lines
        errors = [line for line in lines if line.startswith("ERROR:")]
        headline = (errors or lines or ["(no output)"])[-1]
        tail = "\n".join(lines[-10:])
        raise RuntimeError(f"{what}: {headline}\n{tail}")
