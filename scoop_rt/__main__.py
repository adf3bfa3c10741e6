"""``python -m scoop_rt``: the launcher."""

import sys

from .launcher.cli import main

sys.exit(main())
