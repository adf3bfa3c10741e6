"""``python -m scoop_rt``: the launcher."""

from .exits import exit_now
from .launcher.cli import main

# The run has ended and every process of it is gone (``Run.stop``): leave
# without Python's teardown of the modules, which took as long as the rest of
# the run's end.
exit_now(main())
