"""``python -m scoop_rt``: the launcher."""

import sys

from .launcher import prestart

prestart.start(sys.argv[1:])  # before any other import: see its docstring

from .exits import exit_now  # noqa: E402
from .launcher.cli import main  # noqa: E402

# The run has ended and every process of it is gone (``Run.stop``): leave
# without Python's teardown of the modules, which took as long as the rest of
# the run's end.
exit_now(main())
