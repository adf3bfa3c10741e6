"""The launcher: command line, where the processes go, and how they start."""
