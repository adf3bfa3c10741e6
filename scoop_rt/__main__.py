"""``python -m scoop_rt``: the launcher."""

import os
import sys

from .launcher.cli import main

code = main()
# The run has ended and every process of it is gone (``Run.stop``): leave
# without Python's teardown of the modules, which took as long as the rest of
# the run's end. Output written so far is flushed first.
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except (OSError, ValueError):
        pass
os._exit(code)
