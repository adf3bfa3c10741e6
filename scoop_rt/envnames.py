"""The names of the environment variables the runtime reads and sets.

Here rather than in ``config`` because the launcher needs them before it
imports anything (see ``launcher.prestart``): this module imports nothing.
"""

PREFIX = "SCOOP_RT_"
# Set by the launcher for the processes it starts. They name things, never
# secrets: keys travel over a pipe (see launcher.spawn).
ROLE = PREFIX + "ROLE"
BOOT_FD = PREFIX + "BOOT_FD"
